"""Learning rules for the backward pass: the exact gradient and learned MPLP rules."""

from mplp.learners.gradient import gradient as gradient
