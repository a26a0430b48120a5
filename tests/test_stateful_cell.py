"""The rule networks of `mplp.learners.rules` against direct NumPy implementations.

The stateful cell is MPLP eq. 6-8:

    u = sigmoid(x Wux + c Wuc + bu)
    r = sigmoid(x Wrx + c Wrc + br)
    c' = u * c + (1 - u) * tanh(MLPx(x) + MLPc(r * c) + bn)

where MLPx and MLPc have tanh layers of 80 and 40 units and a linear layer without bias to the
carry width. The stateless rule is two MLPs on the same input: f with relu 80, relu 40 and one
tanh output (the update), g with relu 80, relu 40 and k tanh outputs (the message).

The NumPy versions below are written from these formulas in float64. Every parameter, biases
included, is drawn at random, so a missing or misplaced term changes the result. The rules
read their input as separate feature parts shaped like a dense group's (message
``(B, 1, m, k)``, weight ``(1, n, m, 1)``, input ``(B, n, 1, 1)``), and the NumPy versions read
the broadcast concatenation of the parts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mplp.learners import rules

# One compile per rule and parameter structure, shared by the tests (eager calls would compile
# every operation on its own).
apply_stateful = jax.jit(rules.apply_stateful, static_argnums=3)
apply_stateless = jax.jit(rules.apply_stateless, static_argnums=(2, 3))
project_parts = jax.jit(rules.project_parts)

BATCH = 2
FAN_IN = 2  # n, the dense group's input width
FAN_OUT = 3  # m, the dense group's output width
MESSAGE_WIDTH = 3  # width of the incoming message part
MESSAGE_SIZE = 2  # k, width of the outgoing message
HIDDEN_SIZE = 3
CARRY = rules.carry_size(HIDDEN_SIZE, MESSAGE_SIZE)
INPUT_SIZE = MESSAGE_WIDTH + 2
LEADING = (BATCH, FAN_IN, FAN_OUT)

RTOL = 1e-5
ATOL = 1e-5


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def feature_parts(seed: int) -> list[np.ndarray]:
    """Return the message, weight and input parts of a dense group, in that order."""
    rng = np.random.default_rng(seed)
    message = rng.normal(size=(BATCH, 1, FAN_OUT, MESSAGE_WIDTH))
    weight = rng.normal(size=(1, FAN_IN, FAN_OUT, 1))
    forward_input = rng.normal(size=(BATCH, FAN_IN, 1, 1))
    return [part.astype(np.float32) for part in (message, weight, forward_input)]


def concatenated(parts: list[np.ndarray]) -> np.ndarray:
    """Broadcast the parts to ``(B, n, m, width)`` and concatenate them, in float64."""
    broadcast = [np.broadcast_to(part, (*LEADING, part.shape[-1])) for part in parts]
    return np.concatenate(broadcast, axis=-1).astype(np.float64)


def randomise(params: dict, seed: int) -> dict:
    """Return normal values of std 0.5 with the shapes of ``params`` (arrays or shape structs).

    Drawing with NumPy keeps `jax.random` from compiling a sampler for every shape.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(0.5 * rng.normal(size=leaf.shape), jnp.float32), params
    )


def as_float64(params: dict) -> dict:
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)


def stateless_shapes(has_update: bool, has_message: bool) -> dict:
    """Return the parameter shapes of a stateless rule without sampling its weights."""
    return jax.eval_shape(
        lambda key: rules.init_stateless(key, INPUT_SIZE, MESSAGE_SIZE, has_update, has_message),
        jax.random.key(0),
    )


def numpy_tanh_mlp(h: np.ndarray, layers: list[dict]) -> np.ndarray:
    """tanh(h W1 + b1) -> tanh(. W2 + b2) -> . W3, with no bias on the last layer."""
    first, second, last = layers
    hidden = np.tanh(h @ first["w"] + first["b"])
    hidden = np.tanh(hidden @ second["w"] + second["b"])
    return hidden @ last["w"]


def numpy_cell(params: dict, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One step of MPLP eq. 6-8."""
    u = sigmoid(x @ params["update_x"] + c @ params["update_c"] + params["update_b"])
    r = sigmoid(x @ params["reset_x"] + c @ params["reset_c"] + params["reset_b"])
    candidate = np.tanh(
        numpy_tanh_mlp(x, params["mlp_x"])
        + numpy_tanh_mlp(r * c, params["mlp_c"])
        + params["candidate_b"]
    )
    return u * c + (1.0 - u) * candidate


def numpy_relu_mlp(h: np.ndarray, layers: list[dict]) -> np.ndarray:
    """relu(h W1 + b1) -> relu(. W2 + b2) -> tanh(. W3 + b3)."""
    first, second, last = layers
    hidden = relu(h @ first["w"] + first["b"])
    hidden = relu(hidden @ second["w"] + second["b"])
    return np.tanh(hidden @ last["w"] + last["b"])


@pytest.fixture(scope="module")
def cell_params() -> dict:
    shapes = jax.eval_shape(
        lambda key: rules.init_stateful(key, INPUT_SIZE, CARRY), jax.random.key(0)
    )
    return randomise(shapes, seed=1)


@pytest.fixture(scope="module")
def carry() -> np.ndarray:
    rng = np.random.default_rng(2)
    return (0.5 * rng.normal(size=(*LEADING, CARRY))).astype(np.float32)


def test_cell_layer_shapes(cell_params: dict) -> None:
    for name in ("mlp_x", "mlp_c"):
        width_in = INPUT_SIZE if name == "mlp_x" else CARRY
        shapes = [layer["w"].shape for layer in cell_params[name]]
        assert shapes == [(width_in, 80), (80, 40), (40, CARRY)], name
        assert "b" in cell_params[name][0], f"{name} first layer has no bias"
        assert "b" in cell_params[name][1], f"{name} second layer has no bias"
        assert "b" not in cell_params[name][2], f"{name} last layer has a bias"
    for gate in ("update", "reset"):
        assert cell_params[f"{gate}_x"].shape == (INPUT_SIZE, CARRY)
        assert cell_params[f"{gate}_c"].shape == (CARRY, CARRY)
        assert cell_params[f"{gate}_b"].shape == (CARRY,)
    assert cell_params["candidate_b"].shape == (CARRY,)


def test_cell_matches_numpy(cell_params: dict, carry: np.ndarray) -> None:
    parts = feature_parts(seed=3)
    output = apply_stateful(cell_params, [jnp.asarray(p) for p in parts], carry, MESSAGE_SIZE)
    expected = numpy_cell(as_float64(cell_params), concatenated(parts), carry.astype(np.float64))

    assert output.carry.shape == (*LEADING, CARRY)
    np.testing.assert_allclose(output.carry, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(output.update, expected[..., 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(output.messages, expected[..., -MESSAGE_SIZE:], rtol=RTOL, atol=ATOL)


def test_cell_from_zero_carry(cell_params: dict) -> None:
    parts = feature_parts(seed=4)
    zero = np.zeros((*LEADING, CARRY), np.float32)
    output = apply_stateful(cell_params, [jnp.asarray(p) for p in parts], zero, MESSAGE_SIZE)
    expected = numpy_cell(as_float64(cell_params), concatenated(parts), zero.astype(np.float64))
    np.testing.assert_allclose(output.carry, expected, rtol=RTOL, atol=ATOL)


def test_cell_split_equals_concatenated(cell_params: dict, carry: np.ndarray) -> None:
    parts = feature_parts(seed=5)
    split = apply_stateful(cell_params, [jnp.asarray(p) for p in parts], carry, MESSAGE_SIZE)
    whole_input = jnp.asarray(concatenated(parts), jnp.float32)
    whole = apply_stateful(cell_params, [whole_input], carry, MESSAGE_SIZE)
    np.testing.assert_allclose(split.carry, whole.carry, rtol=1e-6, atol=1e-6)


def test_project_parts_equals_matmul() -> None:
    parts = feature_parts(seed=6)
    weights = np.random.default_rng(7).normal(size=(INPUT_SIZE, 5)).astype(np.float32)
    projected = project_parts([jnp.asarray(p) for p in parts], jnp.asarray(weights))
    expected = concatenated(parts) @ weights.astype(np.float64)

    # The sum of per-part projections broadcasts to the parts' common leading shape.
    assert projected.shape == (*LEADING, 5)
    np.testing.assert_allclose(projected, expected, rtol=RTOL, atol=ATOL)


def test_stateless_matches_numpy() -> None:
    initial = stateless_shapes(True, True)
    params = randomise(initial, seed=9)
    parts = feature_parts(seed=10)
    output = apply_stateless(params, [jnp.asarray(p) for p in parts], LEADING, MESSAGE_SIZE)

    x = concatenated(parts)
    reference = as_float64(params)
    expected_update = numpy_relu_mlp(x, reference["f"])[..., 0]
    expected_messages = numpy_relu_mlp(x, reference["g"])

    assert output.carry is None
    assert output.update.shape == LEADING
    assert output.messages.shape == (*LEADING, MESSAGE_SIZE)
    np.testing.assert_allclose(output.update, expected_update, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(output.messages, expected_messages, rtol=RTOL, atol=ATOL)


def test_stateless_layer_shapes() -> None:
    params = stateless_shapes(True, True)
    f_shapes = [(layer["w"].shape, layer["b"].shape) for layer in params["f"]]
    g_shapes = [(layer["w"].shape, layer["b"].shape) for layer in params["g"]]
    assert f_shapes == [((INPUT_SIZE, 80), (80,)), ((80, 40), (40,)), ((40, 1), (1,))]
    assert g_shapes == [
        ((INPUT_SIZE, 80), (80,)),
        ((80, 40), (40,)),
        ((40, MESSAGE_SIZE), (MESSAGE_SIZE,)),
    ]


def test_stateless_message_only() -> None:
    initial = stateless_shapes(False, True)
    params = randomise(initial, seed=12)
    parts = feature_parts(seed=13)
    output = apply_stateless(params, [jnp.asarray(p) for p in parts], LEADING, MESSAGE_SIZE)
    expected = numpy_relu_mlp(concatenated(parts), as_float64(params)["g"])

    assert "f" not in params
    assert output.update is None
    np.testing.assert_allclose(output.messages, expected, rtol=RTOL, atol=ATOL)


def test_stateless_update_only() -> None:
    initial = stateless_shapes(True, False)
    params = randomise(initial, seed=15)
    parts = feature_parts(seed=16)
    output = apply_stateless(params, [jnp.asarray(p) for p in parts], LEADING, MESSAGE_SIZE)
    expected = numpy_relu_mlp(concatenated(parts), as_float64(params)["f"])[..., 0]

    assert "g" not in params
    np.testing.assert_allclose(output.update, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(output.messages, np.zeros((*LEADING, MESSAGE_SIZE)))
