"""Tests for mplp.meta.optim: per-tensor normalisation, the meta-optimizer and the
non-finite guard."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mplp.meta.optim import (
    NonFiniteUpdateError,
    SkippedUpdateCounter,
    all_finite,
    guarded_update,
    meta_optimizer,
    normalize_per_tensor,
)


def leaf_norm(leaf: jax.Array) -> float:
    return float(np.linalg.norm(np.asarray(leaf, dtype=np.float64).ravel()))


# normalize_per_tensor.


def test_normalize_gives_unit_norm_under_jit() -> None:
    grads = {
        "small": jnp.array([3e-3, -4e-3], jnp.float32),
        "large": {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * 1e6},
        "huge": jnp.array([1e30, -2e30, 3e30], jnp.float32),
        "scalar": jnp.float32(-2.5),
        "zero": jnp.zeros((2, 2), jnp.float32),
    }
    transform = normalize_per_tensor()

    state = transform.init(grads)
    normalized, new_state = jax.jit(transform.update)(grads, state)

    assert isinstance(new_state, optax.EmptyState)
    for name in ("small", "huge", "scalar"):
        assert leaf_norm(normalized[name]) == pytest.approx(1.0, rel=1e-5), name
    assert leaf_norm(normalized["large"]["w"]) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(normalized["zero"]), np.zeros((2, 2)))


def test_normalize_adds_epsilon_to_norm() -> None:
    transform = normalize_per_tensor(epsilon=1e-3)
    gradient = jnp.array([6e-4, -8e-4], jnp.float32)

    normalized, _ = transform.update(gradient, transform.init(gradient))

    assert leaf_norm(normalized) == pytest.approx(0.5, rel=1e-5)


def test_normalize_preserves_direction() -> None:
    gradient = jnp.array([[1.0, -2.0], [0.5, 4.0]], jnp.float32)
    transform = normalize_per_tensor()

    normalized, _ = jax.jit(transform.update)({"g": gradient}, transform.init({"g": gradient}))

    expected = np.asarray(gradient) / np.linalg.norm(np.asarray(gradient))
    np.testing.assert_allclose(np.asarray(normalized["g"]), expected, rtol=1e-6)


def test_normalize_keeps_dtype_and_none_leaves() -> None:
    grads = {"half": jnp.array([3.0, 4.0], jnp.bfloat16), "frozen": None}
    transform = normalize_per_tensor()

    normalized, _ = transform.update(grads, transform.init(grads))

    assert normalized["half"].dtype == jnp.bfloat16
    assert normalized["frozen"] is None
    np.testing.assert_allclose(
        np.asarray(normalized["half"], dtype=np.float32), [0.6, 0.8], rtol=1e-2
    )


def test_normalize_passes_empty_leaf_through() -> None:
    transform = normalize_per_tensor()

    normalized, _ = jax.jit(transform.update)(jnp.zeros((0, 3)), optax.EmptyState())

    assert normalized.shape == (0, 3)


def test_normalize_keeps_nan_visible() -> None:
    grads = {"bad": jnp.array([1.0, jnp.nan]), "inf": jnp.array([jnp.inf, 1.0])}
    transform = normalize_per_tensor()

    normalized, _ = jax.jit(transform.update)(grads, transform.init(grads))

    assert not bool(all_finite(normalized["bad"]))
    assert not bool(all_finite(normalized["inf"]))


@pytest.mark.parametrize("epsilon", [0.0, -1e-8, math.nan, math.inf])
def test_normalize_rejects_invalid_epsilon(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon must be a positive finite number"):
        normalize_per_tensor(epsilon)


# meta_optimizer.


def test_meta_optimizer_first_step_is_learning_rate() -> None:
    learning_rate = 1e-3
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    grads = {
        "w": jnp.array([[5.0, -0.1], [2e3, -7.0], [0.3, 1.0]], jnp.float32),
        "b": jnp.array([-1e-3, 2e-3], jnp.float32),
    }
    optimizer = meta_optimizer(learning_rate)

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    new_params, _ = step(params, optimizer.init(params))

    for name in params:
        change = np.asarray(new_params[name]) - np.asarray(params[name])
        expected = -learning_rate * np.sign(np.asarray(grads[name]))
        np.testing.assert_allclose(change, expected, rtol=1e-3, err_msg=name)


def test_meta_optimizer_accepts_schedule() -> None:
    optimizer = meta_optimizer(optax.constant_schedule(1e-2))
    params = jnp.ones(2)

    updates, _ = optimizer.update(jnp.array([1.0, -1.0]), optimizer.init(params), params)

    np.testing.assert_allclose(np.asarray(updates), [-1e-2, 1e-2], rtol=1e-3)


@pytest.mark.parametrize("learning_rate", [0.0, -1e-3, math.nan, math.inf])
def test_meta_optimizer_rejects_invalid_learning_rate(learning_rate: float) -> None:
    with pytest.raises(ValueError, match="learning_rate must be a positive") as error:
        meta_optimizer(learning_rate)

    assert repr(learning_rate) in str(error.value)


# all_finite.


def test_all_finite_under_jit() -> None:
    check = jax.jit(all_finite)
    finite_tree = {"a": jnp.ones(3), "b": [jnp.float32(2.0), 1.5], "n": jnp.arange(3)}

    assert bool(check(finite_tree))
    assert not bool(check({**finite_tree, "c": jnp.array([1.0, jnp.nan])}))
    assert not bool(check({**finite_tree, "c": jnp.array([-jnp.inf])}))
    assert not bool(check(jnp.array(jnp.inf, jnp.bfloat16)))


def test_all_finite_ignores_integer_and_key_leaves() -> None:
    tree = {"count": jnp.int32(5), "key": jax.random.key(0), "mask": jnp.array([True])}

    assert bool(jax.jit(all_finite)(tree))
    assert bool(all_finite({}))
    assert all_finite({}).shape == ()
    assert all_finite({}).dtype == jnp.bool_


# guarded_update.


def make_problem() -> tuple[optax.GradientTransformation, Any, Any, Any]:
    optimizer = meta_optimizer(1e-2)
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.float32(0.5)}
    grads = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.float32(1.0)}
    return optimizer, params, grads, optimizer.init(params)


def assert_trees_identical(actual: Any, expected: Any) -> None:
    actual_structure: Any = jax.tree.structure(actual)
    assert actual_structure == jax.tree.structure(expected)
    for actual_leaf, expected_leaf in zip(
        jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(actual_leaf), np.asarray(expected_leaf))


def test_guarded_update_applies_finite_step() -> None:
    optimizer, params, grads, state = make_problem()
    step = jax.jit(lambda g, s, p, loss: guarded_update(optimizer, g, s, p, loss))

    new_params, new_state, applied = step(grads, state, params, jnp.float32(0.7))

    expected_updates, expected_state = optimizer.update(grads, state, params)
    assert bool(applied)
    assert applied.shape == ()
    assert_trees_identical(new_params, optax.apply_updates(params, expected_updates))
    assert_trees_identical(new_state, expected_state)


@pytest.mark.parametrize(
    ("bad_value", "where"),
    [(jnp.nan, "grads"), (jnp.inf, "grads"), (jnp.inf, "loss"), (jnp.nan, "loss")],
)
def test_guarded_update_skips_non_finite_step(bad_value: float, where: str) -> None:
    optimizer, params, grads, state = make_problem()
    loss = jnp.float32(0.7)
    if where == "grads":
        grads = {**grads, "w": grads["w"].at[1].set(bad_value)}
    else:
        loss = jnp.float32(bad_value)
    step = jax.jit(lambda g, s, p, loss: guarded_update(optimizer, g, s, p, loss))

    new_params, new_state, applied = step(grads, state, params, loss)

    assert not bool(applied)
    assert_trees_identical(new_params, params)
    assert_trees_identical(new_state, state)


def test_guarded_update_recovers_after_skip() -> None:
    optimizer, params, grads, state = make_problem()
    step = jax.jit(lambda g, s, p, loss: guarded_update(optimizer, g, s, p, loss))
    bad_grads = jax.tree.map(lambda leaf: leaf * jnp.nan, grads)

    params_after_skip, state_after_skip, skipped = step(bad_grads, state, params, 1.0)
    new_params, new_state, applied = step(grads, state_after_skip, params_after_skip, 1.0)

    assert not bool(skipped)
    assert bool(applied)
    assert int(new_state[1][0].count) == 1
    assert bool(all_finite(new_params))
    assert not np.allclose(np.asarray(new_params["w"]), np.asarray(params["w"]))


# SkippedUpdateCounter.


def test_counter_raises_after_consecutive_skips() -> None:
    counter = SkippedUpdateCounter(max_consecutive=3)

    assert counter.record(jnp.array(False)) == 1
    assert counter.record(False) == 2
    assert counter.record(True) == 0
    assert counter.record(False, step=10) == 1
    assert counter.record(False, step=11) == 2
    with pytest.raises(NonFiniteUpdateError, match="3 meta-updates in a row.*step 12"):
        counter.record(jnp.array(False), step=12)

    assert counter.consecutive == 3
    assert counter.total == 5


def test_counter_with_guarded_update() -> None:
    optimizer, params, grads, state = make_problem()
    step = jax.jit(lambda g, s, p, loss: guarded_update(optimizer, g, s, p, loss))
    counter = SkippedUpdateCounter(max_consecutive=2)

    params, state, applied = step(grads, state, params, jnp.nan)
    counter.record(applied)
    with pytest.raises(NonFiniteUpdateError, match="2 meta-updates in a row"):
        _, _, applied = step(grads, state, params, jnp.inf)
        counter.record(applied)


def test_counter_rejects_invalid_limit() -> None:
    with pytest.raises(ValueError, match="max_consecutive must be at least 1, got 0"):
        SkippedUpdateCounter(max_consecutive=0)
