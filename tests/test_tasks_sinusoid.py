"""Tests for the few-shot sinusoid regression tasks."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mplp.tasks import sinusoid
from mplp.tasks.sinusoid import Episode, SinusoidTask

sizes = st.integers(min_value=1, max_value=9)

_TASK = SinusoidTask(amplitude=jnp.float32(0.3), phase=jnp.float32(1.2))


def test_sample_task_shapes_and_dtypes() -> None:
    task = sinusoid.sample_task(jax.random.key(0))

    assert isinstance(task, SinusoidTask)
    assert task.amplitude.shape == ()
    assert task.phase.shape == ()
    assert task.amplitude.dtype == jnp.float32
    assert task.phase.dtype == jnp.float32


def test_sample_task_default_ranges() -> None:
    keys = jax.random.split(jax.random.key(1), 2000)
    tasks = jax.vmap(sinusoid.sample_task)(keys)

    assert float(tasks.amplitude.min()) >= 0.1
    assert float(tasks.amplitude.max()) <= 0.5
    assert float(tasks.phase.min()) >= 0.0
    assert float(tasks.phase.max()) <= math.pi

    # 2000 uniform draws nearly fill each range.
    assert float(tasks.amplitude.min()) < 0.11
    assert float(tasks.amplitude.max()) > 0.49
    assert float(tasks.phase.min()) < 0.05
    assert float(tasks.phase.max()) > math.pi - 0.05


def test_sample_task_custom_ranges() -> None:
    keys = jax.random.split(jax.random.key(2), 500)
    tasks = jax.vmap(lambda k: sinusoid.sample_task(k, (1.0, 2.0), (-1.0, 0.0)))(keys)

    assert float(tasks.amplitude.min()) >= 1.0
    assert float(tasks.amplitude.max()) <= 2.0
    assert float(tasks.phase.min()) >= -1.0
    assert float(tasks.phase.max()) <= 0.0


def test_evaluate_task_matches_formula() -> None:
    task = SinusoidTask(amplitude=jnp.float32(0.3), phase=jnp.float32(1.2))
    x = jnp.linspace(-5.0, 5.0, 11, dtype=jnp.float32)[:, None]

    y = sinusoid.evaluate_task(task, x)

    assert y.shape == (11, 1)
    expected = 0.3 * np.sin(np.asarray(x, dtype=np.float64) + 1.2)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(num_batches=sizes, batch_size=sizes, seed=st.integers(0, 2**31 - 1))
def test_sample_batches_shapes_and_values(num_batches: int, batch_size: int, seed: int) -> None:
    task_key, batch_key = jax.random.split(jax.random.key(seed))
    task = sinusoid.sample_task(task_key)

    xs, ys = sinusoid.sample_batches(batch_key, task, num_batches, batch_size)

    assert xs.shape == (num_batches, batch_size, 1)
    assert ys.shape == (num_batches, batch_size, 1)
    assert xs.dtype == jnp.float32
    assert float(xs.min()) >= -5.0
    assert float(xs.max()) <= 5.0
    assert jnp.array_equal(ys, task.amplitude * jnp.sin(xs + task.phase))


def test_sample_batches_custom_x_range() -> None:
    task = sinusoid.sample_task(jax.random.key(3))

    xs, _ = sinusoid.sample_batches(jax.random.key(4), task, 4, 50, x_range=(2.0, 3.0))

    assert float(xs.min()) >= 2.0
    assert float(xs.max()) <= 3.0


def test_sample_batches_draws_distinct_minibatches() -> None:
    task = sinusoid.sample_task(jax.random.key(5))

    xs, _ = sinusoid.sample_batches(jax.random.key(6), task, 3, 8)

    assert not jnp.array_equal(xs[0], xs[1])
    assert not jnp.array_equal(xs[1], xs[2])


@settings(max_examples=10, deadline=None)
@given(
    num_steps=sizes,
    batch_size=sizes,
    validation_size=st.one_of(st.none(), sizes),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_episode_shapes_and_targets(
    num_steps: int, batch_size: int, validation_size: int | None, seed: int
) -> None:
    episode = sinusoid.sample_episode(jax.random.key(seed), num_steps, batch_size, validation_size)

    expected_validation_size = batch_size if validation_size is None else validation_size
    assert isinstance(episode, Episode)
    assert episode.train_x.shape == (num_steps, batch_size, 1)
    assert episode.train_y.shape == (num_steps, batch_size, 1)
    assert episode.validation_x.shape == (expected_validation_size, 1)
    assert episode.validation_y.shape == (expected_validation_size, 1)

    task = episode.task
    assert jnp.array_equal(episode.train_y, task.amplitude * jnp.sin(episode.train_x + task.phase))
    assert jnp.array_equal(
        episode.validation_y, task.amplitude * jnp.sin(episode.validation_x + task.phase)
    )
    assert float(episode.validation_x.min()) >= -5.0
    assert float(episode.validation_x.max()) <= 5.0


def test_sample_episode_validation_independent_of_training() -> None:
    episode = sinusoid.sample_episode(jax.random.key(7), num_steps=1, batch_size=16)

    assert not jnp.array_equal(episode.validation_x, episode.train_x[0])


def test_sample_episode_deterministic_by_key() -> None:
    first = sinusoid.sample_episode(jax.random.key(8), 3, 5, 7)
    again = sinusoid.sample_episode(jax.random.key(8), 3, 5, 7)
    other = sinusoid.sample_episode(jax.random.key(9), 3, 5, 7)

    for first_leaf, again_leaf in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        assert jnp.array_equal(first_leaf, again_leaf)
    assert not jnp.array_equal(first.train_x, other.train_x)
    assert not jnp.array_equal(first.task.amplitude, other.task.amplitude)


def test_sample_episode_vmap_equals_loop() -> None:
    keys = jax.random.split(jax.random.key(10), 4)

    batched = jax.vmap(lambda k: sinusoid.sample_episode(k, 3, 5, 6))(keys)

    assert batched.train_x.shape == (4, 3, 5, 1)
    assert batched.validation_x.shape == (4, 6, 1)
    assert batched.task.amplitude.shape == (4,)
    for index in range(4):
        single = sinusoid.sample_episode(keys[index], 3, 5, 6)
        for batched_leaf, single_leaf in zip(
            jax.tree.leaves(batched), jax.tree.leaves(single), strict=True
        ):
            np.testing.assert_allclose(np.asarray(batched_leaf[index]), np.asarray(single_leaf))


def test_sample_episode_under_jit_matches_eager() -> None:
    key = jax.random.key(11)
    sample = jax.jit(sinusoid.sample_episode, static_argnums=(1, 2, 3))

    compiled = sample(key, 2, 4, 3)
    eager = sinusoid.sample_episode(key, 2, 4, 3)

    for compiled_leaf, eager_leaf in zip(
        jax.tree.leaves(compiled), jax.tree.leaves(eager), strict=True
    ):
        np.testing.assert_allclose(np.asarray(compiled_leaf), np.asarray(eager_leaf))


def test_evaluation_grid_default() -> None:
    grid = sinusoid.evaluation_grid()

    assert grid.shape == (100, 1)
    assert grid.dtype == jnp.float32
    assert float(grid[0, 0]) == -5.0
    assert float(grid[-1, 0]) == 5.0
    np.testing.assert_allclose(np.diff(np.asarray(grid[:, 0])), 10.0 / 99, rtol=1e-5)


def test_evaluation_grid_custom() -> None:
    grid = sinusoid.evaluation_grid(5, (0.0, 1.0))

    np.testing.assert_allclose(np.asarray(grid[:, 0]), [0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sinusoid.sample_task(jax.random.key(0), (0.5, 0.1)), "amplitude_range"),
        (lambda: sinusoid.sample_task(jax.random.key(0), (0.1, 0.1)), "low < high"),
        (lambda: sinusoid.sample_task(jax.random.key(0), phase_range=(1.0,)), "phase_range"),
        (
            lambda: sinusoid.sample_task(jax.random.key(0), (0.1, math.inf)),
            "finite",
        ),
        (lambda: sinusoid.sample_episode(jax.random.key(0), 0, 4), "num_steps"),
        (lambda: sinusoid.sample_batches(jax.random.key(0), _TASK, 0, 4), "num_batches"),
        (lambda: sinusoid.sample_episode(jax.random.key(0), 2, -1), "batch_size"),
        (lambda: sinusoid.sample_episode(jax.random.key(0), 2, 4, 0), "validation_size"),
        (lambda: sinusoid.sample_episode(jax.random.key(0), 2.5, 4), "positive int"),
        (lambda: sinusoid.sample_episode(jax.random.key(0), True, 4), "positive int"),
        (
            lambda: sinusoid.sample_episode(jax.random.key(0), 2, 4, x_range=(5.0, -5.0)),
            "x_range",
        ),
        (lambda: sinusoid.evaluation_grid(0), "num_points"),
        (lambda: sinusoid.evaluation_grid(10, (1.0, 1.0)), "x_range"),
    ],
)
def test_invalid_arguments_raise_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_error_message_shows_value_and_fix() -> None:
    with pytest.raises(ValueError) as error:
        sinusoid.sample_batches(jax.random.key(0), sinusoid.sample_task(jax.random.key(0)), 0, 1)

    assert "got 0" in str(error.value)
    assert "pass a value of 1 or more" in str(error.value)
