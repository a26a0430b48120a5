"""The ground truth of the framework: the gradient learner is plain SGD.

One learning step of an MLP compiled with `mplp.learners.gradient(lr)` must equal one step of
`optax.sgd(lr)` on the same network written directly in JAX (tests/helpers.py), eagerly, under
`jax.jit`, through `program.run` and under `jax.vmap`.

Most tests fill the state with NumPy values (`random_state`) instead of calling `program.init`,
because compiling `jax.random` sampling for every drawn network shape would dominate their run
time. The vmap test starts from `program.init`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mplp
from helpers import (
    ATOL,
    RTOL,
    assert_layers_close,
    max_change,
    random_batch,
    reference_sgd_run,
    reference_sgd_step,
)

ACTIVATIONS = ("sigmoid", "relu", "tanh", "identity")
LOSSES = ("l2", "cross_entropy")
LEARNING_RATE = 0.5
# A larger initial scale than the default 0.05 gives every layer a sizeable gradient, so a
# wrong update of an early layer cannot hide below the tolerance.
INIT_STD = 0.5
# The eager tests use one network shape so that JAX's per-operation compile cache is reused.
EAGER_SIZES = (3, 4, 2)
EAGER_BATCH = 3


@st.composite
def networks(draw: st.DrawFn) -> dict:
    """Draw an MLP configuration: 1-3 dense layers of widths 1-8, an activation and a loss."""
    loss = draw(st.sampled_from(LOSSES))
    depth = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 8), min_size=depth, max_size=depth))
    # A softmax over one node is constant, so its gradient is zero: that case has its own test.
    output_width = draw(st.integers(2 if loss == "cross_entropy" else 1, 8))
    return {
        "sizes": (*widths, output_width),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
        "loss": loss,
        "batch": draw(st.integers(1, 5)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build(config: dict, learning_rate: float = LEARNING_RATE) -> mplp.Program:
    return mplp.builders.mlp(
        config["sizes"],
        learner=mplp.learners.gradient(learning_rate),
        activation=config["activation"],
        loss=config["loss"],
        init_std=INIT_STD,
    )


def random_state(program: mplp.Program, batch: int, seed: int) -> dict:
    """Return a state of ``program`` with normal parameters (std `INIT_STD`) and zero stored
    values, built from `program.state_fields` with NumPy."""
    rng = np.random.default_rng(seed)
    state = {}
    for group, fields in program.state_fields(batch).items():
        state[group] = {}
        for name, spec in fields.items():
            if spec.role == "parameter":
                value = INIT_STD * rng.normal(size=spec.shape)
            else:
                value = np.zeros(spec.shape)
            state[group][name] = value.astype(np.float32)
    return state


def numpy_layers(program: mplp.Program, state: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    # NumPy copies keep the comparisons below from compiling a JAX operation per shape.
    return jax.tree.map(np.asarray, mplp.builders.dense_layers(program, state))


def check_one_step(config: dict, use_jit: bool) -> None:
    program = build(config)
    sizes, batch, seed = config["sizes"], config["batch"], config["seed"]
    state = random_state(program, batch, seed)
    learner_params = program.init_learner(jax.random.key(0))
    x, target = random_batch(seed, (batch,), sizes[0], sizes[-1], config["loss"])

    step = jax.jit(program.step) if use_jit else program.step
    new_state, metrics = step(learner_params, state, x, target)

    before = numpy_layers(program, state)
    after = numpy_layers(program, new_state)
    expected, expected_loss = reference_sgd_step(
        before, x, target, LEARNING_RATE, config["activation"], config["loss"]
    )
    assert_layers_close(after, expected)
    # The updates themselves must agree, not only the parameters they are added to.
    updates = jax.tree.map(np.subtract, after, before)
    expected_updates = jax.tree.map(np.subtract, expected, before)
    assert_layers_close(updates, expected_updates, rtol=1e-4, atol=ATOL)
    # The output bias always moves for these losses, so a no-op step cannot pass.
    output_bias_change = np.abs(after[-1][1] - before[-1][1]).max()
    assert output_bias_change > 1e-4

    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=RTOL, atol=ATOL)


@settings(max_examples=6)
@given(config=networks())
def test_step_matches_sgd_jit(config: dict) -> None:
    check_one_step(config, use_jit=True)


@settings(max_examples=4)
@given(
    activation=st.sampled_from(ACTIVATIONS),
    loss=st.sampled_from(LOSSES),
    seed=st.integers(0, 2**31 - 1),
)
def test_step_matches_sgd_eager(activation: str, loss: str, seed: int) -> None:
    config = {
        "sizes": EAGER_SIZES,
        "activation": activation,
        "loss": loss,
        "batch": EAGER_BATCH,
        "seed": seed,
    }
    check_one_step(config, use_jit=False)


@pytest.mark.parametrize(
    ("sizes", "batch"), [((1, 1), 1), ((2, 1, 3, 2), 1), ((8, 5, 3), 5)], ids=str
)
def test_step_matches_sgd_corner_sizes(sizes: tuple[int, ...], batch: int) -> None:
    config = {"sizes": sizes, "activation": "tanh", "loss": "l2", "batch": batch, "seed": 7}
    check_one_step(config, use_jit=True)


def test_single_class_softmax_no_update() -> None:
    program = build({"sizes": (3, 1), "activation": "relu", "loss": "cross_entropy"})
    state = random_state(program, EAGER_BATCH, 0)
    x, target = random_batch(0, (EAGER_BATCH,), 3, 1, "cross_entropy")

    new_state, _ = jax.jit(program.step)(program.init_learner(jax.random.key(0)), state, x, target)

    before = numpy_layers(program, state)
    after = numpy_layers(program, new_state)
    assert max_change(before, after) == 0.0


@settings(max_examples=4)
@given(config=networks(), steps=st.integers(1, 4))
def test_run_matches_sgd_steps(config: dict, steps: int) -> None:
    program = build(config)
    sizes, batch, seed = config["sizes"], config["batch"], config["seed"]
    state = random_state(program, batch, seed)
    learner_params = program.init_learner(jax.random.key(0))
    xs, targets = random_batch(seed, (steps, batch), sizes[0], sizes[-1], config["loss"])

    final, metrics = jax.jit(program.run)(learner_params, state, xs, targets)

    before = numpy_layers(program, state)
    after = numpy_layers(program, final)
    expected, expected_losses = reference_sgd_run(
        before, xs, targets, LEARNING_RATE, config["activation"], config["loss"]
    )
    assert_layers_close(after, expected)
    assert max_change(before, after) > 1e-4
    assert metrics["loss"].shape == (steps,)
    np.testing.assert_allclose(metrics["loss"], expected_losses, rtol=RTOL, atol=ATOL)


def test_vmap_matches_python_loop() -> None:
    program = build({"sizes": EAGER_SIZES, "activation": "sigmoid", "loss": "l2"})
    learner_params = program.init_learner(jax.random.key(0))
    networks_count = 3
    keys = jax.random.split(jax.random.key(1), networks_count)
    xs, targets = random_batch(1, (networks_count, EAGER_BATCH), 3, 2, "l2")

    states = jax.jit(jax.vmap(lambda key: program.init(key, EAGER_BATCH)))(keys)
    stepped, metrics = jax.jit(jax.vmap(program.step, in_axes=(None, 0, 0, 0)))(
        learner_params, states, xs, targets
    )

    # The networks must start apart, or a vmap that broadcast one of them would pass.
    first_weights = np.asarray(states["dense0"]["w"])
    assert np.abs(first_weights[0] - first_weights[1]).max() > 1e-3
    assert metrics["loss"].shape == (networks_count,)
    stepped = jax.tree.map(np.asarray, stepped)
    losses = np.asarray(metrics["loss"])

    init_single = jax.jit(program.init, static_argnums=1)
    step_single = jax.jit(program.step)
    for index in range(networks_count):
        single = init_single(keys[index], EAGER_BATCH)
        expected, expected_metrics = step_single(learner_params, single, xs[index], targets[index])
        for group, fields in expected.items():
            for name, value in fields.items():
                np.testing.assert_allclose(
                    stepped[group][name][index],
                    value,
                    rtol=RTOL,
                    atol=ATOL,
                    err_msg=f"network {index}, {group}.{name}",
                )
        np.testing.assert_allclose(losses[index], expected_metrics["loss"], rtol=RTOL, atol=ATOL)


def test_step_activation_blocks_gradient() -> None:
    config = {"sizes": (3, 4, 4, 2), "activation": "step", "loss": "l2", "batch": 4, "seed": 3}
    program = build(config)
    state = random_state(program, 4, 3)
    x, target = random_batch(3, (4,), 3, 2, "l2")

    new_state, _ = jax.jit(program.step)(program.init_learner(jax.random.key(0)), state, x, target)

    before = numpy_layers(program, state)
    after = numpy_layers(program, new_state)
    for layer in (0, 1):
        np.testing.assert_array_equal(after[layer][0], before[layer][0], err_msg=f"W{layer}")
        np.testing.assert_array_equal(after[layer][1], before[layer][1], err_msg=f"b{layer}")
    assert np.abs(after[2][0] - before[2][0]).max() > 1e-4
    assert np.abs(after[2][1] - before[2][1]).max() > 1e-4
    expected, _ = reference_sgd_step(before, x, target, LEARNING_RATE, "step", "l2")
    assert_layers_close(after, expected)


def test_learning_rate_is_traced() -> None:
    program = build({"sizes": EAGER_SIZES, "activation": "relu", "loss": "l2"})
    state = random_state(program, EAGER_BATCH, 0)
    x, target = random_batch(0, (EAGER_BATCH,), 3, 2, "l2")
    step = jax.jit(program.step)

    # Learner parameters are data, so a program built with one rate runs with another.
    new_state, _ = step({"learning_rate": jnp.float32(0.25)}, state, x, target)

    before = numpy_layers(program, state)
    expected, _ = reference_sgd_step(before, x, target, 0.25, "relu", "l2")
    assert_layers_close(numpy_layers(program, new_state), expected)


@pytest.mark.parametrize("learning_rate", [0.0, -0.1, True, "0.1"])
def test_gradient_rejects_bad_rate(learning_rate: object) -> None:
    with pytest.raises(mplp.GraphError, match="learning_rate"):
        mplp.learners.gradient(learning_rate)  # type: ignore[arg-type]
