"""Learning rules for the backward pass: the exact gradient and learned MPLP rules."""

from mplp.learners.calibration import calibrate as calibrate
from mplp.learners.calibration import measure_statistics as measure_statistics
from mplp.learners.counting import count_parameters as count_parameters
from mplp.learners.gradient import gradient as gradient
from mplp.learners.learned import DEFAULT_OUTPUT_SCALE as DEFAULT_OUTPUT_SCALE
from mplp.learners.learned import SHARING_MODES as SHARING_MODES
from mplp.learners.learned import feature_sizes as feature_sizes
from mplp.learners.learned import rule_slot as rule_slot
from mplp.learners.learned import standardiser_slot as standardiser_slot
from mplp.learners.learned import stateful as stateful
from mplp.learners.learned import stateless as stateless
