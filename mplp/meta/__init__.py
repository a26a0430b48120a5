"""Meta-training: configurations, the inner loop and meta-objective, the trainer, checkpoints."""

from mplp.meta.checkpoint import CheckpointError as CheckpointError
from mplp.meta.checkpoint import load_checkpoint as load_checkpoint
from mplp.meta.checkpoint import save_checkpoint as save_checkpoint
from mplp.meta.config import EXPERIMENTS as EXPERIMENTS
from mplp.meta.config import BaselineConfig as BaselineConfig
from mplp.meta.config import ConfigError as ConfigError
from mplp.meta.config import ExperimentConfig as ExperimentConfig
from mplp.meta.config import LearnerConfig as LearnerConfig
from mplp.meta.config import NetworkConfig as NetworkConfig
from mplp.meta.config import TaskConfig as TaskConfig
from mplp.meta.config import get_experiment as get_experiment
from mplp.meta.objective import inner_loop as inner_loop
from mplp.meta.objective import task_loss as task_loss
from mplp.meta.optim import NonFiniteUpdateError as NonFiniteUpdateError
from mplp.meta.optim import meta_optimizer as meta_optimizer
from mplp.meta.optim import normalize_per_tensor as normalize_per_tensor
from mplp.meta.setup import Episode as Episode
from mplp.meta.setup import Experiment as Experiment
from mplp.meta.setup import build_experiment as build_experiment
from mplp.meta.trainer import MetaState as MetaState
from mplp.meta.trainer import load_run as load_run
from mplp.meta.trainer import make_meta_step as make_meta_step
from mplp.meta.trainer import train as train
