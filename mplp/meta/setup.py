"""Build the runtime objects of an experiment: the compiled program and the task family."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mplp import builders, learners
from mplp.graphcore import Fields, Learner, Program, State
from mplp.meta.config import ExperimentConfig, LearnerConfig, NetworkConfig
from mplp.tasks import mnist, sinusoid

Array = jax.Array


class Episode(NamedTuple):
    """One inner training run's data.

    Shapes: ``train_x (T, B, *in)``, ``train_y (T, B, *target)``, ``validation_x (V, *in)``,
    ``validation_y (V, *target)``.
    """

    train_x: Array
    train_y: Array
    validation_x: Array
    validation_y: Array


class TaskFamily(NamedTuple):
    """A distribution over tasks.

    ``data`` is a pytree of arrays that `sample_episode` reads (the MNIST training set; empty
    for sinusoids). It is passed to jitted functions as an argument rather than captured, so
    large data sets are not embedded in compiled programs.
    """

    data: Any
    sample_episode: Callable[[Array, Any], Episode]


def build_learner(config: LearnerConfig) -> Learner:
    """Build the learner that ``config`` describes."""
    if config.kind == "gradient":
        return learners.gradient(config.learning_rate)
    if config.kind == "stateless":
        return learners.stateless(
            config.message_size,
            sharing=config.sharing,
            output_scale=config.output_scale,
            pass_gradient=config.pass_gradient,
        )
    return learners.stateful(
        config.message_size,
        config.hidden_size,
        sharing=config.sharing,
        output_scale=config.output_scale,
        pass_gradient=config.pass_gradient,
    )


def build_program(network: NetworkConfig, learner: Learner) -> Program:
    """Compile the MLP of ``network`` with ``learner``."""
    return builders.mlp(
        network.sizes,
        learner=learner,
        activation=network.activation,
        loss=network.loss,
        init_std=network.init_std,
    )


def build_task_family(config: ExperimentConfig, data_dir: str | Path | None = None) -> TaskFamily:
    """Build the task family of ``config``: sinusoids, or MNIST minibatches from the training
    set (read from ``data_dir``, ``MPLP_DATA_DIR`` or the download cache)."""
    steps, batch, validation = config.inner_steps, config.inner_batch, config.validation_size

    if config.task.name == "sinusoid":

        def sample_sinusoid(key: Array, data: Any) -> Episode:
            del data
            episode = sinusoid.sample_episode(key, steps, batch, validation)
            return Episode(
                episode.train_x, episode.train_y, episode.validation_x, episode.validation_y
            )

        return TaskFamily(data={}, sample_episode=sample_sinusoid)

    dataset = mnist.load_dataset(data_dir, size=config.task.image_size)
    num_classes = config.network.sizes[-1]

    def sample_mnist(key: Array, data: Any) -> Episode:
        train_key, validation_key = jax.random.split(key)
        images, labels = data["images"], data["labels"]
        train_x, train_labels = mnist.sample_batches(train_key, images, labels, steps, batch)
        validation_x, validation_labels = mnist.sample_batches(
            validation_key, images, labels, 1, validation
        )
        return Episode(
            train_x,
            mnist.one_hot(train_labels, num_classes),
            validation_x[0],
            mnist.one_hot(validation_labels[0], num_classes),
        )

    data = {"images": dataset.train_images, "labels": dataset.train_labels}
    return TaskFamily(data=data, sample_episode=sample_mnist)


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """The compiled pieces of an experiment.

    Attributes:
        config: The configuration.
        program: The network compiled with the experiment's learner.
        family: The task family.
        template: A fresh network state for minibatches of ``config.inner_batch``; its
            parameters are replaced by a pool entry or the learned prior in each task.
        maml_program: The same network with the gradient learner at the MAML step size, when
            ``config.maml_baseline`` is set.
    """

    config: ExperimentConfig
    program: Program
    family: TaskFamily
    template: State
    maml_program: Program | None

    def initial_pool(self, key: Array) -> dict[str, Fields]:
        """Sample ``pool_size`` initial parameter sets, stacked along a leading axis."""
        keys = jax.random.split(key, self.config.pool_size)
        states = jax.vmap(lambda k: self.program.init(k, self.config.inner_batch))(keys)
        return self.program.parameters(states)

    def initial_prior(self, key: Array) -> dict[str, Fields]:
        """One random initial parameter set, the starting point of a learned prior."""
        return self.program.parameters(self.program.init(key, self.config.inner_batch))


def build_experiment(config: ExperimentConfig, data_dir: str | Path | None = None) -> Experiment:
    """Compile the program and build the task family of ``config``.

    Experiments are cached by configuration and data folder, so that training, resuming and
    evaluating in one process reuse the compiled functions attached to them.
    """
    folder = str(data_dir) if data_dir is not None else os.environ.get(mnist.DATA_DIR_ENV)
    return _build_experiment_cached(config, folder)


@functools.lru_cache(maxsize=8)
def _build_experiment_cached(config: ExperimentConfig, data_dir: str | None) -> Experiment:
    program = build_program(config.network, build_learner(config.learner))
    maml_program = None
    if config.maml_baseline:
        maml_program = build_program(config.network, learners.gradient(config.maml_learning_rate))
    template = program.init(jax.random.key(0), config.inner_batch)
    return Experiment(
        config=config,
        program=program,
        family=build_task_family(config, data_dir),
        template=template,
        maml_program=maml_program,
    )


def select(pool: Any, index: Array) -> Any:
    """Take entry ``index`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: jnp.take(leaf, index, axis=0), pool)
