"""The meta-objective: an inner training run, its hint losses and the cross-validation loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mplp.graphcore import LearnerParams, Program, State
from mplp.meta.setup import Episode

Array = jax.Array


def inner_loop(
    program: Program,
    learner_params: LearnerParams,
    state: State,
    episode: Episode,
    remat: bool = False,
) -> tuple[State, dict[str, Array]]:
    """Train a network for T steps as one `jax.lax.scan` and record per-step losses.

    With ``remat`` each step is wrapped in `jax.checkpoint`: the backward pass of a
    meta-gradient recomputes a step's intermediates instead of storing them for all T steps,
    so memory grows with the carried state only, at the price of one more forward pass.

    Returns:
        The final state and ``{"train_loss": (T,), "hint_loss": (T,)}``: the minibatch loss
        before each update (MPLP eq. 9) and after it (the hint loss, eq. 12).
    """

    def body(carried: State, batch: tuple[Array, Array]) -> tuple[State, dict[str, Array]]:
        x, y = batch
        updated, metrics = program.step(learner_params, carried, x, y)
        hint = program.loss(updated, x, y)
        return updated, {"train_loss": metrics["loss"], "hint_loss": hint}

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, state, (episode.train_x, episode.train_y))


def task_loss(
    program: Program,
    learner_params: LearnerParams,
    state: State,
    episode: Episode,
    hint_ratio: float,
    remat: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Meta-loss of one task: ``h * mean_t(hint_t) + (1 - h) * cv`` with ``h = hint_ratio``.

    ``cv`` is the loss on the episode's held-out data after the last step (MPLP eq. 11).
    """
    final_state, losses = inner_loop(program, learner_params, state, episode, remat)
    cv_loss = program.loss(final_state, episode.validation_x, episode.validation_y)
    hint_loss = losses["hint_loss"].mean()
    total = hint_ratio * hint_loss + (1.0 - hint_ratio) * cv_loss
    metrics = {
        "meta_loss": total,
        "cv_loss": cv_loss,
        "hint_loss": hint_loss,
        "final_train_loss": losses["train_loss"][-1],
    }
    return total, metrics


def mean_metrics(metrics: dict[str, Any]) -> dict[str, Array]:
    """Average per-task metrics over the outer batch axis."""
    return {name: jnp.mean(value) for name, value in metrics.items()}
