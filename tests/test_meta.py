"""Tests of the meta-trainer: meta-gradient, reproducibility, resumption and the NaN guard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mplp.meta import ExperimentConfig, NonFiniteUpdateError, build_experiment, load_run, train
from mplp.meta.checkpoint import CHECKPOINT_NAME
from mplp.meta.config import ConfigError
from mplp.meta.trainer import (
    METRICS_NAME,
    initial_meta_state,
    make_meta_loss,
    make_meta_step,
    run_keys,
)

TINY = {
    "name": "tiny-sinusoid",
    "task": {"name": "sinusoid"},
    "network": {"sizes": [1, 4, 1], "activation": "tanh", "loss": "l2"},
    "learner": {"kind": "stateless", "message_size": 2},
    "inner_steps": 2,
    "inner_batch": 4,
    "validation_size": 8,
    "outer_batch": 2,
    "pool_size": 2,
    "meta_steps": 4,
    "meta_learning_rate": 1e-3,
    "calibration_runs": 1,
    "checkpoint_every": 2,
    "log_every": 1,
}


def tiny_config(**updates: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**TINY, **updates})


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]


def flat_learner(run: Path) -> np.ndarray:
    _, _, meta_state = load_run(run)
    leaves = jax.tree.leaves(meta_state.trainable)
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])


def test_meta_gradient_matches_finite_difference() -> None:
    experiment = build_experiment(tiny_config())
    keys = run_keys(0)
    meta_state = initial_meta_state(experiment, keys, calibrate=True)
    pool = experiment.initial_pool(keys.pool)
    meta_loss = make_meta_loss(experiment)
    key = jax.random.key(7)

    def loss_of(trainable: dict) -> jax.Array:
        return meta_loss(trainable, meta_state.frozen, pool, experiment.family.data, key)[0]

    gradient = jax.grad(loss_of)(meta_state.trainable)
    norm = float(jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(gradient))))
    direction = jax.tree.map(lambda leaf: leaf / norm, gradient)

    epsilon = 1e-3
    plus = jax.tree.map(lambda p, d: p + epsilon * d, meta_state.trainable, direction)
    minus = jax.tree.map(lambda p, d: p - epsilon * d, meta_state.trainable, direction)
    finite_difference = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * epsilon)

    # Along the normalised gradient the directional derivative equals the gradient's norm.
    assert norm > 0
    assert finite_difference == pytest.approx(norm, rel=2e-2)


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    config = tiny_config(meta_steps=3)
    train(config, tmp_path / "first")
    train(config, tmp_path / "second")

    first = read_metrics(tmp_path / "first")
    second = read_metrics(tmp_path / "second")
    assert len(first) == 3
    assert first == second
    np.testing.assert_array_equal(
        flat_learner(tmp_path / "first"), flat_learner(tmp_path / "second")
    )


def test_other_seed_other_metrics(tmp_path: Path) -> None:
    train(tiny_config(meta_steps=2), tmp_path / "seed0")
    train(tiny_config(meta_steps=2, seed=1), tmp_path / "seed1")

    assert read_metrics(tmp_path / "seed0") != read_metrics(tmp_path / "seed1")


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    train(tiny_config(meta_steps=4), tmp_path / "whole")

    train(tiny_config(meta_steps=2), tmp_path / "split")
    train(tiny_config(meta_steps=4), tmp_path / "split", resume=True)

    whole = read_metrics(tmp_path / "whole")
    split = read_metrics(tmp_path / "split")
    assert [row["step"] for row in split] == [1, 2, 3, 4]
    assert whole == split
    np.testing.assert_array_equal(
        flat_learner(tmp_path / "whole"), flat_learner(tmp_path / "split")
    )


def test_resume_drops_metrics_after_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(meta_steps=2), run)
    with (run / METRICS_NAME).open("a") as file:
        file.write(json.dumps({"step": 3, "meta_loss": 1.0}) + "\n")

    train(tiny_config(meta_steps=3), run, resume=True)

    steps = [row["step"] for row in read_metrics(run)]
    assert steps == [1, 2, 3]
    assert read_metrics(run)[-1]["meta_loss"] != 1.0


def test_resume_rejects_other_configuration(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(meta_steps=1), run)

    with pytest.raises(ConfigError, match="another configuration"):
        train(tiny_config(meta_steps=2, hint_ratio=0.5), run, resume=True)


def test_new_run_rejects_used_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(meta_steps=1), run)

    with pytest.raises(ConfigError, match="not empty"):
        train(tiny_config(meta_steps=1), run)


def test_nan_guard_skips_and_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(meta_steps=6, max_nonfinite=2, checkpoint_every=1)
    real_step = make_meta_step(build_experiment(config))
    calls = {"count": 0}

    def poisoned_step(meta_state, pool, data, key):  # type: ignore[no-untyped-def]
        new_state, applied, metrics = real_step(meta_state, pool, data, key)
        calls["count"] += 1
        if calls["count"] >= 2:
            # From the second step on, every step returns a NaN meta-loss, as a diverging run would.
            metrics = {**metrics, "meta_loss": jnp.nan}
            poisoned = jax.tree.map(lambda leaf: leaf * jnp.nan, new_state.trainable)
            return new_state._replace(trainable=poisoned), jnp.asarray(False), metrics
        return new_state, applied, metrics

    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteUpdateError):
        train(config, run, meta_step_fn=poisoned_step)

    assert "update skipped" in caplog.text
    rows = read_metrics(run)
    assert [row["applied"] for row in rows] == [True, False, False]
    assert (run / CHECKPOINT_NAME).is_file()
    assert np.all(np.isfinite(flat_learner(run)))


def test_nan_guard_keeps_state_on_nan_gradient() -> None:
    experiment = build_experiment(tiny_config())
    keys = run_keys(0)
    meta_state = initial_meta_state(experiment, keys, calibrate=False)
    pool = jax.tree.map(lambda leaf: leaf * jnp.nan, experiment.initial_pool(keys.pool))
    step = make_meta_step(experiment)

    new_state, applied, metrics = step(meta_state, pool, experiment.family.data, jax.random.key(0))

    assert not bool(applied)
    assert not np.isfinite(float(metrics["meta_loss"]))
    for old, new in zip(
        jax.tree.leaves(meta_state.trainable), jax.tree.leaves(new_state.trainable), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
