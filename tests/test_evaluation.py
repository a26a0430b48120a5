"""Tests of the evaluation of learned learners against baselines, its table and its figures."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mplp.meta.config import (
    EXPERIMENTS,
    BaselineConfig,
    ConfigError,
    ExperimentConfig,
    LearnerConfig,
    NetworkConfig,
    TaskConfig,
)
from mplp.meta.evaluation import (
    ACCURACY_METRIC,
    L2_METRIC,
    MAML_LABEL,
    MPLP_LABEL,
    EvaluationResult,
    EvaluationSettings,
    MethodResult,
    _seen_loss,
    _sinusoid_probe,
    evaluate,
    format_table,
    sweep_learning_rates,
    transfer_overrides,
)
from mplp.meta.figures import plot_evaluation
from mplp.meta.setup import Experiment, build_experiment
from mplp.meta.trainer import MetaState, initial_meta_state, run_keys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 2
BATCH = 4


def tiny_sinusoid_config(**changes: object) -> ExperimentConfig:
    config = ExperimentConfig(
        name="tiny-sinusoid",
        task=TaskConfig(name="sinusoid"),
        network=NetworkConfig(sizes=(1, 4, 1)),
        learner=LearnerConfig(kind="stateless", message_size=2),
        inner_steps=STEPS,
        inner_batch=BATCH,
        validation_size=8,
        outer_batch=2,
        pool_size=2,
        meta_steps=1,
        calibration_runs=1,
        baselines=(
            BaselineConfig(optimizer="adam", learning_rate=0.01),
            BaselineConfig(optimizer="sgd", learning_rate=0.1),
        ),
    )
    return config.model_copy(update=changes)


def untrained(experiment: Experiment) -> MetaState:
    return initial_meta_state(experiment, run_keys(0), calibrate=False)


@pytest.fixture(scope="module")
def sinusoid_setup() -> tuple[Experiment, MetaState]:
    experiment = build_experiment(tiny_sinusoid_config())
    return experiment, untrained(experiment)


@pytest.fixture(scope="module")
def sinusoid_result(sinusoid_setup: tuple[Experiment, MetaState]) -> EvaluationResult:
    experiment, meta_state = sinusoid_setup
    return evaluate(experiment, meta_state, runs=3, seed=0)


# Sinusoid evaluation.


def test_evaluate_same_seed_same_result(
    sinusoid_setup: tuple[Experiment, MetaState], sinusoid_result: EvaluationResult
) -> None:
    experiment, meta_state = sinusoid_setup
    again = evaluate(experiment, meta_state, runs=3, seed=0)
    assert again.to_json() == sinusoid_result.to_json()


def test_evaluate_chunking_keeps_numbers(
    sinusoid_setup: tuple[Experiment, MetaState], sinusoid_result: EvaluationResult
) -> None:
    experiment, meta_state = sinusoid_setup
    chunked = evaluate(experiment, meta_state, runs=3, seed=0, chunk_runs=1)
    for expected, actual in zip(sinusoid_result.methods, chunked.methods, strict=True):
        np.testing.assert_allclose(actual.metric_mean, expected.metric_mean, rtol=1e-6)
        np.testing.assert_allclose(actual.train_loss_mean, expected.train_loss_mean, rtol=1e-6)


def test_evaluate_other_seed_differs(
    sinusoid_setup: tuple[Experiment, MetaState], sinusoid_result: EvaluationResult
) -> None:
    experiment, meta_state = sinusoid_setup
    other = evaluate(experiment, meta_state, runs=3, seed=1)
    assert not np.allclose(
        other.method(MPLP_LABEL).metric_mean, sinusoid_result.method(MPLP_LABEL).metric_mean
    )


def test_evaluate_methods_and_shapes(sinusoid_result: EvaluationResult) -> None:
    assert sinusoid_result.labels == (MPLP_LABEL, "Adam lr 0.01", "SGD lr 0.1")
    for method in sinusoid_result.methods:
        assert method.metric_mean.shape == (STEPS + 1,)
        assert method.metric_std.shape == (STEPS + 1,)
        assert method.train_loss_mean.shape == (STEPS + 1,)
        assert method.train_loss_std.shape == (STEPS + 1,)
        assert method.example_predictions is not None
        assert method.example_predictions.shape == (STEPS + 1, 100)
        assert np.all(np.isfinite(method.metric_mean))


def test_evaluate_settings(sinusoid_result: EvaluationResult) -> None:
    settings = sinusoid_result.settings
    assert settings.runs == 3
    assert settings.seed == 0
    assert settings.steps == STEPS
    assert settings.metric == L2_METRIC
    assert settings.test_images is None
    assert settings.network_sizes == (1, 4, 1)


def test_methods_share_step_zero(sinusoid_result: EvaluationResult) -> None:
    reference = sinusoid_result.methods[0]
    for method in sinusoid_result.methods[1:]:
        np.testing.assert_allclose(method.metric_mean[0], reference.metric_mean[0], rtol=1e-6)
        np.testing.assert_allclose(
            method.train_loss_mean[0], reference.train_loss_mean[0], rtol=1e-6
        )
        np.testing.assert_allclose(
            method.example_predictions[0], reference.example_predictions[0], rtol=1e-6
        )


def test_baselines_change_the_network(sinusoid_result: EvaluationResult) -> None:
    adam = sinusoid_result.method("Adam lr 0.01")
    assert adam.metric_mean[-1] != adam.metric_mean[0]


def test_example_run_matches_grid(sinusoid_result: EvaluationResult) -> None:
    example = sinusoid_result.example
    assert example is not None
    assert example.grid_x.shape == (100,)
    assert example.grid_x[0] == -5.0
    assert example.grid_x[-1] == 5.0
    assert example.train_x.shape == (STEPS, BATCH)
    assert example.train_y.shape == (STEPS, BATCH)
    assert np.all(np.abs(example.grid_y) <= 0.5)


def test_std_zero_for_one_run(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, meta_state = sinusoid_setup
    result = evaluate(experiment, meta_state, runs=1, seed=0)
    for method in result.methods:
        assert np.all(method.metric_std == 0.0)
        assert np.all(method.train_loss_std == 0.0)


def test_evaluate_rejects_zero_runs(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, meta_state = sinusoid_setup
    with pytest.raises(ConfigError, match="runs must be at least 1"):
        evaluate(experiment, meta_state, runs=0)


def test_evaluate_on_other_network(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, meta_state = sinusoid_setup
    network = NetworkConfig(sizes=(1, 6, 1), activation="tanh")
    result = evaluate(experiment, meta_state, runs=2, network=network, transfer="wider")
    assert result.settings.network_sizes == (1, 6, 1)
    assert result.settings.activation == "tanh"
    assert result.settings.transfer == "wider"
    assert np.all(np.isfinite(result.method(MPLP_LABEL).metric_mean))


def test_sinusoid_probe_matches_task_family(
    sinusoid_setup: tuple[Experiment, MetaState],
) -> None:
    experiment, _ = sinusoid_setup
    key = jax.random.key(7)
    probe = _sinusoid_probe(experiment.config)
    episode, _, _ = probe.sample(key, experiment.family.data, None)
    expected = experiment.family.sample_episode(key, experiment.family.data)
    np.testing.assert_array_equal(episode.train_x, expected.train_x)
    np.testing.assert_array_equal(episode.train_y, expected.train_y)
    np.testing.assert_array_equal(episode.validation_x, expected.validation_x)


def test_seen_loss_averages_seen_batches(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, _ = sinusoid_setup
    program = experiment.program
    state = program.init(jax.random.key(1), BATCH)
    episode = experiment.family.sample_episode(jax.random.key(2), experiment.family.data)
    first = program.loss(state, episode.train_x[0], episode.train_y[0])
    second = program.loss(state, episode.train_x[1], episode.train_y[1])

    np.testing.assert_allclose(_seen_loss(program, state, episode, 0), first, rtol=1e-6)
    np.testing.assert_allclose(_seen_loss(program, state, episode, 1), first, rtol=1e-6)
    np.testing.assert_allclose(
        _seen_loss(program, state, episode, 2), (first + second) / 2, rtol=1e-6
    )


def test_evaluate_with_maml_and_prior() -> None:
    config = EXPERIMENTS["sinusoid-maml"].model_copy(
        update={
            "network": NetworkConfig(sizes=(1, 4, 1)),
            "learner": LearnerConfig(kind="stateless", message_size=2),
            "inner_batch": BATCH,
            "validation_size": 8,
        }
    )
    experiment = build_experiment(config)
    meta_state = untrained(experiment)
    result = evaluate(experiment, meta_state, runs=2)
    assert result.labels == (MPLP_LABEL, "Adam lr 0.01", MAML_LABEL)

    # MPLP starts from the learned prior, so its prediction at step 0 is the prior's.
    mplp = result.method(MPLP_LABEL)
    assert mplp.example_predictions is not None
    prior_state = experiment.program.replace_parameters(
        experiment.template, meta_state.trainable["prior"]
    )
    grid = jnp.linspace(-5.0, 5.0, 100)[:, None]
    expected = experiment.program.apply(prior_state, grid)[:, 0]
    np.testing.assert_allclose(mplp.example_predictions[0], expected, rtol=1e-5, atol=1e-7)


def test_learned_prior_must_fit_network() -> None:
    config = EXPERIMENTS["sinusoid-maml"].model_copy(
        update={
            "network": NetworkConfig(sizes=(1, 4, 1)),
            "learner": LearnerConfig(kind="stateless", message_size=2),
            "inner_batch": BATCH,
        }
    )
    experiment = build_experiment(config)
    with pytest.raises(ConfigError, match="learned prior does not fit"):
        evaluate(experiment, untrained(experiment), runs=1, network=NetworkConfig(sizes=(1, 6, 1)))


# Serialisation and the table.


def test_result_json_round_trip(sinusoid_result: EvaluationResult) -> None:
    text = sinusoid_result.to_json()
    document = json.loads(text)
    assert [method["label"] for method in document["methods"]] == list(sinusoid_result.labels)
    assert document["settings"]["runs"] == 3
    assert set(document["methods"][0]["final"]) == {
        "metric_mean",
        "metric_std",
        "train_loss_mean",
        "train_loss_std",
    }
    assert EvaluationResult.from_json(text).to_json() == text


def test_table_lists_every_method(sinusoid_result: EvaluationResult) -> None:
    table = format_table(sinusoid_result)
    for label in sinusoid_result.labels:
        assert label in table
    assert f"eval L2 loss @ {STEPS}" in table
    assert f"train loss @ {STEPS}" in table
    assert "±" in table


def test_table_accuracy_header() -> None:
    table = format_table(synthetic_accuracy_result())
    assert "accuracy @ 3 (%)" in table
    assert "50.00 ± 5.00" in table


# Figures.


def test_plot_sinusoid_writes_png(sinusoid_result: EvaluationResult, tmp_path: Path) -> None:
    path = plot_evaluation(sinusoid_result, tmp_path / "sinusoid.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_accuracy_writes_png(tmp_path: Path) -> None:
    path = plot_evaluation(synthetic_accuracy_result(), tmp_path / "mnist.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def synthetic_accuracy_result() -> EvaluationResult:
    settings = EvaluationSettings(
        experiment="synthetic",
        task="mnist",
        network_sizes=(144, 8, 10),
        activation="sigmoid",
        runs=2,
        seed=0,
        steps=3,
        metric=ACCURACY_METRIC,
        test_images=100,
        image_size=12,
    )
    method = MethodResult(
        label="Adam lr 0.01",
        metric_mean=np.array([10.0, 20.0, 40.0, 50.0]),
        metric_std=np.array([1.0, 2.0, 4.0, 5.0]),
        train_loss_mean=np.array([2.3, 2.0, 1.8, 1.5]),
        train_loss_std=np.array([0.1, 0.1, 0.1, 0.1]),
    )
    return EvaluationResult(settings, (method,))


# Learning-rate sweep and transfers.


def test_sweep_learning_rates(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, _ = sinusoid_setup
    losses = sweep_learning_rates(experiment, "sgd", [0.01, 0.1], runs=2, seed=0)
    assert list(losses) == [0.01, 0.1]
    assert all(np.isfinite(value) and value > 0 for value in losses.values())


def test_sweep_rejects_unknown_optimizer(sinusoid_setup: tuple[Experiment, MetaState]) -> None:
    experiment, _ = sinusoid_setup
    with pytest.raises(ConfigError, match="unknown optimizer"):
        sweep_learning_rates(experiment, "rmsprop", [0.1], runs=1)  # type: ignore[arg-type]


def test_transfer_overrides_for_mnist() -> None:
    config = EXPERIMENTS["mnist"]
    network, task = transfer_overrides(config, "step")
    assert network.activation == "step"
    assert network.sizes == config.network.sizes
    assert task == config.task

    network, task = transfer_overrides(config, "784")
    assert network.sizes == (784, 100, 10)
    assert network.activation == config.network.activation
    assert task.image_size == 28


def test_transfer_rejects_sinusoid() -> None:
    with pytest.raises(ConfigError, match="needs an MNIST experiment"):
        transfer_overrides(EXPERIMENTS["sinusoid"], "step")


def test_transfer_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown transfer"):
        transfer_overrides(EXPERIMENTS["mnist"], "wide")


# MNIST, on the real data set.


def tiny_mnist_config(test_images: int = 100) -> ExperimentConfig:
    return EXPERIMENTS["mnist"].model_copy(
        update={
            "network": NetworkConfig(
                sizes=(144, 8, 10), activation="sigmoid", loss="cross_entropy"
            ),
            "learner": LearnerConfig(kind="stateless", message_size=2, sharing="kind"),
            "task": TaskConfig(name="mnist", image_size=12, test_images=test_images),
            "inner_steps": 2,
            "validation_size": 8,
        }
    )


def test_evaluate_mnist_accuracy(mnist_dir: Path) -> None:
    experiment = build_experiment(tiny_mnist_config(), mnist_dir)
    result = evaluate(experiment, untrained(experiment), runs=2, data_dir=mnist_dir)

    expected = (MPLP_LABEL, "SGD lr 0.1", "SGD lr 1", "Adam lr 0.01", "Adam lr 0.03")
    assert result.labels == expected
    assert result.settings.metric == ACCURACY_METRIC
    assert result.settings.test_images == 100
    assert result.example is None
    for method in result.methods:
        assert method.metric_mean.shape == (3,)
        assert np.all(method.metric_mean >= 0.0)
        assert np.all(method.metric_mean <= 100.0)
        # Each run scores 100 test images, so the mean of two runs is a multiple of 0.5 %.
        np.testing.assert_allclose(method.metric_mean * 2, np.round(method.metric_mean * 2))
    step_zero = {method.metric_mean[0] for method in result.methods}
    assert len(step_zero) == 1
    assert "accuracy @ 2 (%)" in format_table(result)


def test_mnist_rejects_too_many_test_images(mnist_dir: Path) -> None:
    experiment = build_experiment(tiny_mnist_config(test_images=10_001), mnist_dir)
    with pytest.raises(ConfigError, match="test set has 10000 images"):
        evaluate(experiment, untrained(experiment), runs=1, data_dir=mnist_dir)
