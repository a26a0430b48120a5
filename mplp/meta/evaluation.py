"""Evaluation of a meta-trained learner against hand-designed optimizers and MAML.

Every evaluation run draws a fresh random network and a fresh task episode, and trains that
network for ``config.inner_steps`` steps with each method on the same minibatches. The learned
rule starts from the learned prior instead when the experiment learns one, and MAML always starts
from its own prior. After every step, and once before the first, each run records two numbers:

* the evaluation metric. For sinusoids it is the L2 loss (`Program.loss`, the mean over points
  of the per-example loss) on 100 evenly spaced inputs on [-5, 5] against the true function.
  For MNIST it is the accuracy in percent on the first ``config.task.test_images`` test images.
* the training loss. For sinusoids it is the loss of the current network on every training
  point seen so far (the first t minibatches after t steps). For MNIST it is the loss on the
  latest minibatch after the update on it. At step 0 both use the first minibatch, which no
  method has seen yet.

Runs are vectorised with `jax.vmap` in chunks. Each run's randomness comes from the seed and the
run's index alone, so the same seed gives the same runs for any chunk size (the statistics may
differ in the last float32 digits when the chunk size changes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp.graphcore import Program, State
from mplp.meta.config import (
    BaselineConfig,
    ConfigError,
    ExperimentConfig,
    NetworkConfig,
    TaskConfig,
)
from mplp.meta.setup import Episode, Experiment, build_experiment
from mplp.meta.trainer import MetaState
from mplp.tasks import mnist, sinusoid

Array = jax.Array
logger = logging.getLogger(__name__)

MPLP_LABEL = "MPLP"
GRADIENT_LEARNER_LABEL = "Gradient learner"
MAML_LABEL = "MAML"
L2_METRIC = "l2_loss"
ACCURACY_METRIC = "accuracy"
GRID_POINTS = 100
TRANSFERS = ("step", "784")

# Random streams of evaluation and of the learning-rate sweep, folded into the seed's key so
# that neither repeats the keys the trainer splits from the same seed.
_EVALUATION_STREAM = 1
_SWEEP_STREAM = 2

# NOTE: the per-run memory is an estimate: a learned rule evaluates a small MLP of up to about
# 128 units for every parameter and example of the minibatch, in float32.
_CHUNK_BUDGET_BYTES = 2 * 1024**3
_LEARNER_WIDTH_ESTIMATE = 128

Measure = Callable[[Program, State, Array, Episode, Array, Array], dict[str, Array]]
Method = Callable[[State, Episode, Array, Array, dict[str, Any], Measure], dict[str, Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class MethodResult:
    """Per-step statistics over runs of one training method.

    Attributes:
        label: Display name, e.g. ``MPLP`` or ``Adam lr 0.01``.
        metric_mean: Mean evaluation metric per step, shape ``(T + 1,)`` (step 0 first).
        metric_std: Its standard deviation over runs (population, so 0 for one run).
        train_loss_mean: Mean training loss per step, shape ``(T + 1,)``.
        train_loss_std: Its standard deviation over runs.
        example_predictions: Sinusoids only: run 0's predictions on the evaluation grid after
            each step, shape ``(T + 1, 100)``; None for MNIST.
    """

    label: str
    metric_mean: np.ndarray
    metric_std: np.ndarray
    train_loss_mean: np.ndarray
    train_loss_std: np.ndarray
    example_predictions: np.ndarray | None = None

    def final(self) -> dict[str, float]:
        """Return the statistics at the last step."""
        return {
            "metric_mean": float(self.metric_mean[-1]),
            "metric_std": float(self.metric_std[-1]),
            "train_loss_mean": float(self.train_loss_mean[-1]),
            "train_loss_std": float(self.train_loss_std[-1]),
        }

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-compatible types."""
        document: dict[str, Any] = {
            "label": self.label,
            "metric_mean": self.metric_mean.tolist(),
            "metric_std": self.metric_std.tolist(),
            "train_loss_mean": self.train_loss_mean.tolist(),
            "train_loss_std": self.train_loss_std.tolist(),
            "final": self.final(),
        }
        if self.example_predictions is not None:
            document["example_predictions"] = self.example_predictions.tolist()
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> MethodResult:
        """Rebuild a result written by `to_dict`."""
        predictions = document.get("example_predictions")
        return cls(
            label=document["label"],
            metric_mean=np.asarray(document["metric_mean"], np.float64),
            metric_std=np.asarray(document["metric_std"], np.float64),
            train_loss_mean=np.asarray(document["train_loss_mean"], np.float64),
            train_loss_std=np.asarray(document["train_loss_std"], np.float64),
            example_predictions=None if predictions is None else np.asarray(predictions),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class ExampleRun:
    """The data of one sinusoid run, for plotting the fits.

    Attributes:
        grid_x: Evaluation inputs, shape ``(100,)``.
        grid_y: The true function on them, shape ``(100,)``.
        train_x: Training inputs, one row per step, shape ``(T, B)``.
        train_y: Training targets, shape ``(T, B)``.
    """

    grid_x: np.ndarray
    grid_y: np.ndarray
    train_x: np.ndarray
    train_y: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-compatible types."""
        return {name: getattr(self, name).tolist() for name in _EXAMPLE_FIELDS}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ExampleRun:
        """Rebuild an example written by `to_dict`."""
        return cls(**{name: np.asarray(document[name], np.float64) for name in _EXAMPLE_FIELDS})


_EXAMPLE_FIELDS = ("grid_x", "grid_y", "train_x", "train_y")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Settings of an evaluation.

    Attributes:
        experiment: The experiment's name.
        task: ``sinusoid`` or ``mnist``.
        network_sizes: Layer widths of the evaluated network, input first.
        activation: Its hidden activation.
        runs: Number of runs.
        seed: The seed that all runs derive from.
        steps: Inner training steps per run (the statistics have ``steps + 1`` entries).
        metric: ``l2_loss`` or ``accuracy`` (in percent).
        test_images: MNIST test images scored per step; None for sinusoids.
        image_size: MNIST image side in pixels; None for sinusoids.
        transfer: The transfer that changed the network (``step`` or ``784``), or None.
    """

    experiment: str
    task: str
    network_sizes: tuple[int, ...]
    activation: str
    runs: int
    seed: int
    steps: int
    metric: str
    test_images: int | None = None
    image_size: int | None = None
    transfer: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Per-step statistics of every method, the settings and, for sinusoids, an example run."""

    settings: EvaluationSettings
    methods: tuple[MethodResult, ...]
    example: ExampleRun | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The method labels, in evaluation order."""
        return tuple(method.label for method in self.methods)

    def method(self, label: str) -> MethodResult:
        """Return the result of the method called ``label``.

        Raises:
            KeyError: when no method has that label.
        """
        for method in self.methods:
            if method.label == label:
                return method
        raise KeyError(f"no method '{label}' in this result; methods: {', '.join(self.labels)}")

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-compatible types."""
        settings = dataclasses.asdict(self.settings)
        settings["network_sizes"] = list(self.settings.network_sizes)
        return {
            "settings": settings,
            "methods": [method.to_dict() for method in self.methods],
            "example": None if self.example is None else self.example.to_dict(),
        }

    def to_json(self) -> str:
        """Serialise to a JSON document (non-finite numbers are written as NaN or Infinity)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> EvaluationResult:
        """Rebuild a result written by `to_dict`."""
        settings = dict(document["settings"])
        settings["network_sizes"] = tuple(settings["network_sizes"])
        example = document.get("example")
        return cls(
            settings=EvaluationSettings(**settings),
            methods=tuple(MethodResult.from_dict(method) for method in document["methods"]),
            example=None if example is None else ExampleRun.from_dict(example),
        )

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        """Parse a document written by `to_json`."""
        return cls.from_dict(json.loads(text))


# Configuration changes for the transfer experiments.


def transfer_overrides(config: ExperimentConfig, name: str) -> tuple[NetworkConfig, TaskConfig]:
    """Return the network and task of a transfer experiment on an MNIST configuration.

    ``step`` replaces the hidden activation with a step function, whose gradient is zero.
    ``784`` widens the network to 784-100-C on 28x28 images, C being the class count.

    Raises:
        ConfigError: for an unknown transfer, a task other than MNIST, or a network that is
            not one hidden layer deep (for ``784``).
    """
    if name not in TRANSFERS:
        raise ConfigError(f"unknown transfer '{name}'; choose one of: {', '.join(TRANSFERS)}")
    if config.task.name != "mnist":
        raise ConfigError(
            f"the {name} transfer needs an MNIST experiment, but '{config.name}' runs "
            f"{config.task.name}"
        )
    if name == "step":
        return config.network.model_copy(update={"activation": "step"}), config.task

    if len(config.network.sizes) != 3:
        raise ConfigError(
            f"the 784 transfer needs a network with one hidden layer, got sizes "
            f"{list(config.network.sizes)}"
        )
    network = config.network.model_copy(update={"sizes": (784, 100, config.network.sizes[-1])})
    return network, config.task.model_copy(update={"image_size": 28})


# Evaluation.


def evaluate(
    experiment: Experiment,
    meta_state: MetaState,
    *,
    runs: int,
    seed: int = 0,
    network: NetworkConfig | None = None,
    task: TaskConfig | None = None,
    data_dir: str | Path | None = None,
    transfer: str | None = None,
    chunk_runs: int | None = None,
) -> EvaluationResult:
    """Train fresh networks with the learned rule, each baseline and MAML, and score each step.

    Args:
        experiment: The experiment the learner was meta-trained in.
        meta_state: Its meta-trained state (`load_run`).
        runs: Number of independent runs, each with a new network and a new task episode.
        seed: Seed of all runs. The same seed gives the same result.
        network: Evaluate on this network instead of the experiment's (a transfer). The
            learner's parameters fit any network whose groups have the same names.
        task: Replace the task settings too, e.g. the MNIST image size for a wider input.
        data_dir: Folder with the MNIST files (MNIST only; see `mnist.load_dataset`).
        transfer: Name of the transfer, recorded in the settings.
        chunk_runs: Runs vectorised together; None picks a size from a memory estimate.

    Returns:
        Per-step mean and standard deviation over runs for every method.

    Raises:
        ConfigError: for ``runs < 1``, more test images than the test set has, or a learned
            prior whose shapes do not fit the evaluated network.
    """
    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    experiment = _override(experiment, network, task, data_dir)
    config = experiment.config
    params = _method_params(experiment, meta_state)
    run_chunk = _compiled_run_chunk(experiment, "prior" in params, "maml_prior" in params)
    labels = tuple(_methods(experiment, "prior" in params, "maml_prior" in params))
    arguments = (experiment.family.data, _evaluation_data(config, data_dir), params)

    chunk = chunk_runs or _default_chunk_runs(experiment.program, config, runs)
    base_key = jax.random.fold_in(jax.random.key(seed), _EVALUATION_STREAM)
    outputs, example = _run_in_chunks(run_chunk, base_key, runs, chunk, arguments)

    results = tuple(_method_statistics(label, outputs[label]) for label in labels)
    is_mnist = config.task.name == "mnist"
    settings = EvaluationSettings(
        experiment=config.name,
        task=config.task.name,
        network_sizes=tuple(config.network.sizes),
        activation=config.network.activation,
        runs=runs,
        seed=seed,
        steps=config.inner_steps,
        metric=ACCURACY_METRIC if is_mnist else L2_METRIC,
        test_images=config.task.test_images if is_mnist else None,
        image_size=config.task.image_size if is_mnist else None,
        transfer=transfer,
    )
    return EvaluationResult(settings, results, _example_run(example))


def sweep_learning_rates(
    experiment: Experiment,
    optimizer: Literal["sgd", "adam"],
    rates: Sequence[float],
    runs: int,
    seed: int = 0,
) -> dict[float, float]:
    """Measure the final training loss of a hand-designed optimizer at several learning rates.

    The sweep uses training data only: each run trains a fresh network on a fresh episode of the
    task family (MNIST training images) for ``config.inner_steps`` steps. Its score is the loss
    of the final network on all ``T * B`` inner training examples, averaged over runs. Choose
    the rate with the lowest score; a diverging rate scores NaN or infinity.

    Args:
        experiment: The experiment whose network, task family and inner loop are used.
        optimizer: ``sgd`` or ``adam``.
        rates: Learning rates to try, each positive.
        runs: Runs per rate.
        seed: Seed of the runs; every rate uses the same networks and episodes.

    Returns:
        ``{rate: mean final training loss}``.

    Raises:
        ConfigError: for an unknown optimizer, a non-positive rate or ``runs < 1``.
    """
    if optimizer not in ("sgd", "adam"):
        raise ConfigError(f"unknown optimizer '{optimizer}'; choose sgd or adam")
    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    for rate in rates:
        if not rate > 0:
            raise ConfigError(f"learning rates must be positive, got {rate}")

    program, family = experiment.program, experiment.family
    batch = experiment.config.inner_batch
    make_optimizer = optax.sgd if optimizer == "sgd" else optax.adam

    def one_run(key: Array, rate: Array, data: Any) -> Array:
        network_key, episode_key = jax.random.split(key)
        state = program.init(network_key, batch)
        episode = family.sample_episode(episode_key, data)
        update = _optimizer_update(program, make_optimizer(rate))
        carry = (state, make_optimizer(rate).init(program.parameters(state)))
        (final, _), _ = jax.lax.scan(
            lambda c, xy: (update(c, *xy), None), carry, (episode.train_x, episode.train_y)
        )
        return _seen_loss(program, final, episode, episode.train_x.shape[0])

    @jax.jit
    def mean_loss(rate: Array, data: Any) -> Array:
        base = jax.random.fold_in(jax.random.key(seed), _SWEEP_STREAM)
        keys = jax.vmap(lambda index: jax.random.fold_in(base, index))(jnp.arange(runs))
        return jax.vmap(one_run, in_axes=(0, None, None))(keys, rate, data).mean()

    return {float(rate): float(mean_loss(jnp.float32(rate), family.data)) for rate in rates}


def format_table(result: EvaluationResult) -> str:
    """Format the last step's statistics of every method as a plain-text table."""
    settings = result.settings
    steps = settings.steps
    if settings.metric == ACCURACY_METRIC:
        metric_header, digits = f"accuracy @ {steps} (%)", 2
    else:
        metric_header, digits = f"eval L2 loss @ {steps}", 4
    headers = ("method", metric_header, f"train loss @ {steps}")

    rows = []
    for method in result.methods:
        final = method.final()
        rows.append(
            (
                method.label,
                _plus_minus(final["metric_mean"], final["metric_std"], digits),
                _plus_minus(final["train_loss_mean"], final["train_loss_std"], 4),
            )
        )

    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(3)]
    lines = [_title(settings)]
    lines.append(" | ".join(text.ljust(width) for text, width in zip(headers, widths, strict=True)))
    lines.append("-+-".join("-" * width for width in widths))
    for row in rows:
        lines.append(" | ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


# Building the methods.


def _override(
    experiment: Experiment,
    network: NetworkConfig | None,
    task: TaskConfig | None,
    data_dir: str | Path | None,
) -> Experiment:
    if network is None and task is None:
        return experiment
    document = experiment.config.model_dump(mode="json")
    if network is not None:
        document["network"] = network.model_dump(mode="json")
    if task is not None:
        document["task"] = task.model_dump(mode="json")
    try:
        config = ExperimentConfig.model_validate(document)
    except ValueError as error:
        raise ConfigError(f"the evaluated network or task is invalid: {error}") from None
    return build_experiment(config, data_dir)


def _method_params(experiment: Experiment, meta_state: MetaState) -> dict[str, Any]:
    """Collect the meta-trained values that the methods read.

    Returns:
        ``learner`` always, ``prior`` with a learned prior, and ``maml_learner`` with
        ``maml_prior`` when the MAML baseline was meta-trained and fits the network.

    Raises:
        ConfigError: when the learner is missing or the learned prior does not fit.
    """
    config = experiment.config
    program, template = experiment.program, experiment.template
    learner_params = meta_state.trainable.get("learner", meta_state.frozen.get("learner"))
    if learner_params is None:
        raise ConfigError("the meta-state has no learner parameters: pass a trained run's state")
    params: dict[str, Any] = {"learner": learner_params}

    if config.learn_prior:
        if not _prior_fits(program, template, meta_state.trainable.get("prior")):
            raise ConfigError(
                "the learned prior does not fit the evaluated network: evaluate it on the "
                "network it was meta-trained with"
            )
        params["prior"] = meta_state.trainable["prior"]

    maml_prior = meta_state.trainable.get("maml_prior")
    if experiment.maml_program is not None and maml_prior is not None:
        if _prior_fits(experiment.maml_program, template, maml_prior):
            params["maml_learner"] = meta_state.frozen["maml_learner"]
            params["maml_prior"] = maml_prior
        else:
            logger.warning("MAML left out: its learned prior does not fit the evaluated network")
    return params


def _prior_fits(program: Program, template: State, prior: Any) -> bool:
    if prior is None:
        return False
    expected = jax.tree.map(jnp.shape, program.parameters(template))
    return bool(jax.tree.map(jnp.shape, prior) == expected)


def _methods(experiment: Experiment, with_prior: bool, with_maml: bool) -> dict[str, Method]:
    """Return ``{label: method}``: the learned rule, each baseline, then MAML when present."""
    config = experiment.config
    program = experiment.program
    label = GRADIENT_LEARNER_LABEL if config.learner.kind == "gradient" else MPLP_LABEL
    prior_name = "prior" if with_prior else None
    methods: dict[str, Method] = {label: _learner_method(program, "learner", prior_name)}
    for baseline in config.baselines:
        methods[baseline.label] = _baseline_method(program, baseline)
    if with_maml and experiment.maml_program is not None:
        methods[MAML_LABEL] = _learner_method(experiment.maml_program, "maml_learner", "maml_prior")
    return methods


def _learner_method(program: Program, learner_name: str, prior_name: str | None) -> Method:
    """Training with ``program``'s learner, from the run's network or from a learned prior.

    ``learner_name`` and ``prior_name`` are the entries of the method parameters to use.
    """

    def run(
        state: State,
        episode: Episode,
        eval_x: Array,
        eval_y: Array,
        params: dict[str, Any],
        measure: Measure,
    ) -> dict[str, Array]:
        if prior_name is not None:
            state = program.replace_parameters(state, params[prior_name])
        learner_params = params[learner_name]

        def update(current: State, x: Array, y: Array) -> State:
            return program.step(learner_params, current, x, y)[0]

        return _rollout(
            program, update, state, lambda current: current, episode, eval_x, eval_y, measure
        )

    return run


def _baseline_method(program: Program, baseline: BaselineConfig) -> Method:
    """Training with optax on the gradient of `Program.loss`, from the run's network."""
    make_optimizer = optax.sgd if baseline.optimizer == "sgd" else optax.adam
    optimizer = make_optimizer(baseline.learning_rate)
    update = _optimizer_update(program, optimizer)

    def run(
        state: State,
        episode: Episode,
        eval_x: Array,
        eval_y: Array,
        params: dict[str, Any],
        measure: Measure,
    ) -> dict[str, Array]:
        del params
        carry = (state, optimizer.init(program.parameters(state)))
        return _rollout(
            program, update, carry, lambda current: current[0], episode, eval_x, eval_y, measure
        )

    return run


def _optimizer_update(
    program: Program, optimizer: optax.GradientTransformation
) -> Callable[[tuple[State, Any], Array, Array], tuple[State, Any]]:
    def update(carry: tuple[State, Any], x: Array, y: Array) -> tuple[State, Any]:
        state, opt_state = carry
        params = program.parameters(state)

        def loss(candidate: Any) -> Array:
            return program.loss(program.replace_parameters(state, candidate), x, y)

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return program.replace_parameters(state, new_params), opt_state

    return update


def _rollout(
    program: Program,
    update: Callable[[Any, Array, Array], Any],
    carry: Any,
    network_of: Callable[[Any], State],
    episode: Episode,
    eval_x: Array,
    eval_y: Array,
    measure: Measure,
) -> dict[str, Array]:
    """Run the T updates as a scan and measure before the first and after each.

    Returns:
        ``{name: (T + 1, ...)}`` for every quantity that ``measure`` returns.
    """

    def record(current: Any, step: Array) -> dict[str, Array]:
        return measure(program, network_of(current), step, episode, eval_x, eval_y)

    first = record(carry, jnp.asarray(0))

    def body(current: Any, inputs: tuple[Array, Array, Array]) -> tuple[Any, dict[str, Array]]:
        step, x, y = inputs
        current = update(current, x, y)
        return current, record(current, step)

    steps = jnp.arange(1, episode.train_x.shape[0] + 1)
    _, rest = jax.lax.scan(body, carry, (steps, episode.train_x, episode.train_y))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


# The task-specific parts: episodes, evaluation data and measurements.


class _TaskProbe(NamedTuple):
    """How to sample a run's data and score a network for one task.

    ``sample(key, family_data, eval_data) -> (episode, eval_x, eval_y)``, where ``eval_data``
    is the MNIST test slice ``(images, labels)`` or None for sinusoids.
    """

    metric: str
    sample: Callable[[Array, Any, Any], tuple[Episode, Array, Array]]
    measure: Measure


def _task_probe(experiment: Experiment) -> _TaskProbe:
    if experiment.config.task.name == "sinusoid":
        return _sinusoid_probe(experiment.config)
    return _mnist_probe(experiment)


def _evaluation_data(config: ExperimentConfig, data_dir: str | Path | None) -> Any:
    """Return the MNIST test slice ``(images (N, D), labels (N,))``, or None for sinusoids."""
    if config.task.name == "sinusoid":
        return None
    dataset = mnist.load_dataset(data_dir, size=config.task.image_size)
    count = config.task.test_images
    available = dataset.test_images.shape[0]
    if count > available:
        raise ConfigError(
            f"task.test_images is {count} but the MNIST test set has {available} images: "
            "lower task.test_images"
        )
    return dataset.test_images[:count], dataset.test_labels[:count]


def _sinusoid_probe(config: ExperimentConfig) -> _TaskProbe:
    grid = sinusoid.evaluation_grid(GRID_POINTS)

    def sample(key: Array, data: Any, eval_data: Any) -> tuple[Episode, Array, Array]:
        del data, eval_data
        # The sinusoid task family makes this same call but drops the task, which the
        # evaluation needs for the true function on the grid. A test checks that both agree.
        drawn = sinusoid.sample_episode(
            key, config.inner_steps, config.inner_batch, config.validation_size
        )
        episode = Episode(drawn.train_x, drawn.train_y, drawn.validation_x, drawn.validation_y)
        return episode, grid, sinusoid.evaluate_task(drawn.task, grid)

    def measure(
        program: Program, state: State, step: Array, episode: Episode, x: Array, y: Array
    ) -> dict[str, Array]:
        return {
            "metric": program.loss(state, x, y),
            "train_loss": _seen_loss(program, state, episode, step),
            "prediction": program.apply(state, x)[:, 0],
        }

    return _TaskProbe(L2_METRIC, sample, measure)


def _mnist_probe(experiment: Experiment) -> _TaskProbe:
    sample_episode = experiment.family.sample_episode

    def sample(key: Array, data: Any, eval_data: Any) -> tuple[Episode, Array, Array]:
        images, labels = eval_data
        return sample_episode(key, data), images, labels

    def measure(
        program: Program, state: State, step: Array, episode: Episode, x: Array, y: Array
    ) -> dict[str, Array]:
        predicted = jnp.argmax(program.apply(state, x), axis=-1)
        latest = jnp.maximum(step, 1) - 1
        batch_x = jnp.take(episode.train_x, latest, axis=0)
        batch_y = jnp.take(episode.train_y, latest, axis=0)
        return {
            "metric": 100.0 * jnp.mean(predicted == y),
            "train_loss": program.loss(state, batch_x, batch_y),
        }

    return _TaskProbe(ACCURACY_METRIC, sample, measure)


def _seen_loss(program: Program, state: State, episode: Episode, step: Array | int) -> Array:
    """Return the loss on the first ``max(step, 1)`` training minibatches.

    The minibatches have equal sizes, so the mean over their examples is the mean of the
    minibatch means.
    """
    batch_losses = jax.vmap(lambda x, y: program.loss(state, x, y))(
        episode.train_x, episode.train_y
    )
    seen = jnp.maximum(step, 1)
    mask = jnp.arange(batch_losses.shape[0]) < seen
    return jnp.sum(jnp.where(mask, batch_losses, 0.0)) / seen


# Running and aggregating.

RunOutputs = dict[str, dict[str, Array]]
RunChunk = Callable[[Array, Any, Any, dict[str, Any]], tuple[RunOutputs, dict[str, Array]]]


# Compiled functions are reused by later evaluations of the same experiment object with the
# same methods. The cache keeps those experiments (and their data) alive, so it stays small.
@functools.lru_cache(maxsize=4)
def _compiled_run_chunk(experiment: Experiment, with_prior: bool, with_maml: bool) -> RunChunk:
    """Build the jitted function that evaluates a chunk of runs, one key each.

    ``run_chunk(keys (R,), family_data, eval_data, method_params)`` returns
    ``({label: {quantity: (R, T + 1, ...)}}, example data)``, where the example data
    (sinusoids only) are each run's training points and true values on the grid.
    """
    program = experiment.program
    batch = experiment.config.inner_batch
    methods = _methods(experiment, with_prior, with_maml)
    probe = _task_probe(experiment)
    keep_example = probe.metric == L2_METRIC

    def one_run(
        key: Array, data: Any, eval_data: Any, params: dict[str, Any]
    ) -> tuple[RunOutputs, dict[str, Array]]:
        network_key, episode_key = jax.random.split(key)
        state = program.init(network_key, batch)
        episode, eval_x, eval_y = probe.sample(episode_key, data, eval_data)
        outputs = {
            label: method(state, episode, eval_x, eval_y, params, probe.measure)
            for label, method in methods.items()
        }
        example = {}
        if keep_example:
            example = {"train_x": episode.train_x, "train_y": episode.train_y, "grid_y": eval_y}
        return outputs, example

    return jax.jit(jax.vmap(one_run, in_axes=(0, None, None, None)))


def _default_chunk_runs(program: Program, config: ExperimentConfig, runs: int) -> int:
    parameters = sum(
        int(np.prod(leaf.shape))
        for leaf in jax.tree.leaves(program.parameters(program.init(jax.random.key(0), 1)))
    )
    per_run = 4 * config.inner_batch * parameters * _LEARNER_WIDTH_ESTIMATE
    return max(1, min(runs, _CHUNK_BUDGET_BYTES // per_run))


def _run_in_chunks(
    run_chunk: RunChunk,
    base_key: Array,
    runs: int,
    chunk: int,
    arguments: tuple[Any, Any, dict[str, Any]],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Evaluate runs ``0 .. runs - 1`` in chunks of equal size and concatenate them.

    The last chunk is padded with extra runs that are dropped, so one compiled function serves
    every chunk. Run i's key is ``fold_in(base_key, i)`` whatever the chunk size.
    """
    pieces = []
    for start in range(0, runs, chunk):
        indices = jnp.arange(start, start + chunk)
        keys = jax.vmap(lambda index: jax.random.fold_in(base_key, index))(indices)
        pieces.append(jax.device_get(run_chunk(keys, *arguments)))
        logger.debug("evaluated runs %d-%d of %d", start + 1, min(start + chunk, runs), runs)

    outputs, example = jax.tree.map(lambda *parts: np.concatenate(parts)[:runs], *pieces)
    return outputs, example


def _method_statistics(label: str, outputs: dict[str, np.ndarray]) -> MethodResult:
    metric = np.asarray(outputs["metric"], np.float64)
    train_loss = np.asarray(outputs["train_loss"], np.float64)
    prediction = outputs.get("prediction")
    return MethodResult(
        label=label,
        metric_mean=metric.mean(axis=0),
        metric_std=metric.std(axis=0),
        train_loss_mean=train_loss.mean(axis=0),
        train_loss_std=train_loss.std(axis=0),
        example_predictions=None if prediction is None else np.asarray(prediction[0], np.float64),
    )


def _example_run(example: dict[str, np.ndarray]) -> ExampleRun | None:
    if not example:
        return None
    return ExampleRun(
        grid_x=np.asarray(sinusoid.evaluation_grid(GRID_POINTS)[:, 0], np.float64),
        grid_y=np.asarray(example["grid_y"][0, :, 0], np.float64),
        train_x=np.asarray(example["train_x"][0, ..., 0], np.float64),
        train_y=np.asarray(example["train_y"][0, ..., 0], np.float64),
    )


def _plus_minus(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _title(settings: EvaluationSettings) -> str:
    network = "-".join(str(size) for size in settings.network_sizes)
    parts = [
        f"{settings.experiment}: {network} {settings.activation} network",
        f"{settings.runs} runs of {settings.steps} steps, seed {settings.seed}",
    ]
    if settings.transfer is not None:
        parts.insert(1, f"{settings.transfer} transfer")
    if settings.test_images is not None:
        parts.append(f"{settings.test_images} test images")
    return ", ".join(parts)
