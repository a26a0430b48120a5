"""Checks behind the performance claims of docs/performance.md.

- The hand-written meta-step in benchmarks/fused_mnist.py computes the framework's meta-loss
  and meta-gradient, so timing one against the other compares equal work.
- The jitted meta-step compiles once and is reused for every later meta-step.
- Learner parameters, network state and meta-state are float32 throughout.
- `rules.broadcast_first_axis`, whose backward pass replaces XLA's reduction, has the
  gradient of a plain broadcast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mplp import builders, learners
from mplp.learners import rules
from mplp.meta import EXPERIMENTS
from mplp.meta.setup import build_experiment
from mplp.meta.trainer import initial_meta_state, make_meta_step, run_keys

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_fused_mnist() -> ModuleType:
    """Import benchmarks/fused_mnist.py by path, because benchmarks/ is not a package."""
    spec = importlib.util.spec_from_file_location("fused_mnist", BENCHMARKS / "fused_mnist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fused_check() -> dict:
    return load_fused_mnist().check_against_framework(sizes=(12, 6, 3), steps=3)


def flatten(tree: object) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(tree)])


def test_fused_meta_loss_matches(fused_check: dict) -> None:
    np.testing.assert_allclose(fused_check["fused_loss"], fused_check["framework_loss"], rtol=1e-4)


def test_fused_check_is_sensitive(fused_check: dict) -> None:
    # The updates must move the loss far more than the tolerance, or a wrong update would
    # pass the comparison above.
    moved = abs(fused_check["fused_loss"] - fused_check["no_update_loss"])
    assert moved > 100 * 1e-4 * abs(fused_check["framework_loss"])


def test_fused_meta_gradient_matches(fused_check: dict) -> None:
    framework = fused_check["framework_grad"]
    fused = fused_check["fused_grad"]
    assert jax.tree.structure(fused) == jax.tree.structure(framework)
    expected, actual = flatten(framework), flatten(fused)
    assert np.linalg.norm(expected) > 0, "the framework's meta-gradient is zero"
    relative = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert relative < 1e-4, f"meta-gradients differ by {relative:.2e} (relative norm)"


def small_experiment() -> object:
    """Build the sinusoid experiment, shrunk so that compiling its meta-step takes seconds."""
    base = EXPERIMENTS["sinusoid"]
    network = base.network.model_copy(update={"sizes": (1, 4, 1)})
    learner = base.learner.model_copy(update={"message_size": 2, "hidden_size": 3})
    config = base.model_copy(
        update={
            "network": network,
            "learner": learner,
            "inner_steps": 2,
            "inner_batch": 3,
            "validation_size": 4,
            "outer_batch": 2,
            "pool_size": 2,
        }
    )
    return build_experiment(config)


def test_meta_step_compiles_once() -> None:
    experiment = small_experiment()
    keys = run_keys(0)
    meta_state = initial_meta_state(experiment, keys, calibrate=False)
    pool = experiment.initial_pool(keys.pool)
    step = make_meta_step(experiment)

    data = experiment.family.data
    first_state, _, _ = step(meta_state, pool, data, jax.random.fold_in(keys.train, 0))
    assert step._cache_size() == 1
    step(first_state, pool, data, jax.random.fold_in(keys.train, 1))
    assert step._cache_size() == 1, "the second meta-step compiled the function again"


@pytest.mark.parametrize("kind", ["stateless", "stateful"])
def test_everything_is_float32(kind: str) -> None:
    if kind == "stateless":
        learner = learners.stateless(3, sharing="kind")
    else:
        learner = learners.stateful(3, 4, sharing="kind")
    program = builders.mlp((5, 4, 3), learner=learner, activation="sigmoid", loss="cross_entropy")
    params = jax.jit(program.init_learner)(jax.random.key(0))
    state = jax.jit(program.init, static_argnums=1)(jax.random.key(1), 2)
    x = np.ones((2, 5), np.float32)
    target = np.eye(3, dtype=np.float32)[[0, 2]]
    new_state, _ = jax.jit(program.step)(params, state, x, target)

    trees = {"learner parameters": params, "initial state": state, "state after a step": new_state}
    for name, tree in trees.items():
        paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, leaf in paths:
            assert leaf.dtype == jnp.float32, f"{name} {jax.tree_util.keystr(path)}: {leaf.dtype}"


def test_meta_state_is_float32() -> None:
    experiment = small_experiment()
    meta_state = initial_meta_state(experiment, run_keys(0), calibrate=False)
    for path, leaf in jax.tree_util.tree_flatten_with_path(meta_state.trainable)[0]:
        assert leaf.dtype == jnp.float32, f"trainable {jax.tree_util.keystr(path)}: {leaf.dtype}"
    for path, leaf in jax.tree_util.tree_flatten_with_path(meta_state.opt_state)[0]:
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, f"optimizer {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_broadcast_first_axis_gradient(size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.normal(size=(1, 4, 3)).astype(np.float32)
    weights = rng.normal(size=(size, 4, 3)).astype(np.float32)

    def custom(v: jax.Array) -> jax.Array:
        return jnp.sum(rules.broadcast_first_axis(v, size) * weights)

    def plain(v: jax.Array) -> jax.Array:
        return jnp.sum(jnp.broadcast_to(v, (size, 4, 3)) * weights)

    np.testing.assert_array_equal(
        rules.broadcast_first_axis(values, size), np.broadcast_to(values, (size, 4, 3))
    )
    np.testing.assert_allclose(
        jax.grad(custom)(values), jax.grad(plain)(values), rtol=1e-6, atol=1e-6
    )
