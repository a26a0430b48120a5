"""The compiled `Program`: forward pass, loss, state layout, input checks and JAX transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp
from helpers import (
    ATOL,
    RTOL,
    random_batch,
    reference_forward,
    reference_loss,
    reference_sgd_run,
)

SIZES = (3, 4, 2)
BATCH = 3
LEARNING_RATE = 0.5


def build(loss: str = "l2", activation: str = "tanh", init_std: float = 0.5) -> mplp.Program:
    return mplp.builders.mlp(
        SIZES,
        learner=mplp.learners.gradient(LEARNING_RATE),
        activation=activation,
        loss=loss,
        init_std=init_std,
    )


@pytest.fixture(scope="module")
def program() -> mplp.Program:
    return build()


@pytest.fixture(scope="module")
def state(program: mplp.Program) -> dict:
    return program.init(jax.random.key(0), BATCH)


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    return random_batch(0, (BATCH,), SIZES[0], SIZES[-1], "l2")


# Forward pass and loss.


@pytest.mark.parametrize("loss", ["l2", "cross_entropy"])
def test_apply_matches_reference(loss: str) -> None:
    program = build(loss)
    state = program.init(jax.random.key(1), BATCH)
    x, _ = random_batch(1, (BATCH,), SIZES[0], SIZES[-1], loss)

    output = program.apply(state, x)

    layers = mplp.builders.dense_layers(program, state)
    expected = reference_forward(layers, x, "tanh", loss)
    assert output.shape == (BATCH, SIZES[-1])
    np.testing.assert_allclose(output, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss", ["l2", "cross_entropy"])
def test_loss_matches_reference(loss: str) -> None:
    program = build(loss)
    state = program.init(jax.random.key(2), BATCH)
    x, target = random_batch(2, (BATCH,), SIZES[0], SIZES[-1], loss)

    value = program.loss(state, x, target)

    layers = mplp.builders.dense_layers(program, state)
    assert value.shape == ()
    np.testing.assert_allclose(value, reference_loss(layers, x, target, "tanh", loss), rtol=RTOL)


def test_step_reports_loss_before_update(program, state, batch) -> None:
    x, target = batch

    new_state, metrics = program.step(program.init_learner(jax.random.key(0)), state, x, target)

    np.testing.assert_allclose(metrics["loss"], program.loss(state, x, target), rtol=RTOL)
    assert float(program.loss(new_state, x, target)) < float(metrics["loss"])


def test_calls_leave_state_unchanged(program, state, batch) -> None:
    before = jax.tree.map(np.asarray, state)

    program.apply(state, batch[0])
    program.loss(state, *batch)
    program.step(program.init_learner(jax.random.key(0)), state, *batch)

    after = jax.tree.map(np.asarray, state)
    assert jax.tree.structure(after) == jax.tree.structure(before)
    for group, fields in before.items():
        for name, value in fields.items():
            np.testing.assert_array_equal(after[group][name], value, err_msg=f"{group}.{name}")


# State layout.


def test_init_state_layout(program, state) -> None:
    assert set(state) == {group.name for group in program.graph.groups}
    assert state["input"] == {}
    assert set(state["dense0"]) == {"w", "input"}
    assert set(state["bias0"]) == {"b", "input"}
    assert set(state["act0"]) == {"input"}
    assert set(state["loss"]) == {"input", "target"}
    assert state["dense0"]["w"].shape == (3, 4)
    assert state["dense1"]["w"].shape == (4, 2)
    assert state["bias1"]["b"].shape == (2,)
    assert state["dense0"]["input"].shape == (BATCH, 3)
    assert state["loss"]["target"].shape == (BATCH, 2)


def test_init_values() -> None:
    state = build(init_std=1.0).init(jax.random.key(3), BATCH)
    wide = mplp.builders.mlp([64, 64, 1], learner=mplp.learners.gradient(), init_std=0.2)
    wide_weights = np.asarray(wide.init(jax.random.key(4), 1)["dense0"]["w"])

    assert np.all(np.asarray(state["bias0"]["b"]) == 0.0)
    assert np.all(np.asarray(state["dense0"]["input"]) == 0.0)
    assert np.all(np.asarray(state["loss"]["target"]) == 0.0)
    assert abs(wide_weights.std() - 0.2) < 0.02
    assert abs(wide_weights.mean()) < 0.02
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))


def test_init_keys_give_different_networks(program) -> None:
    first = program.init(jax.random.key(0), BATCH)
    second = program.init(jax.random.key(1), BATCH)
    same = program.init(jax.random.key(0), BATCH)

    assert not np.allclose(first["dense0"]["w"], second["dense0"]["w"])
    np.testing.assert_array_equal(first["dense0"]["w"], same["dense0"]["w"])
    # Each dense group draws from its own key.
    assert not np.allclose(first["dense0"]["w"][:, :2], first["dense1"]["w"][:3, :])


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, "3", True])
def test_init_rejects_bad_batch(program, batch_size: object) -> None:
    with pytest.raises(mplp.GraphError, match="batch_size"):
        program.init(jax.random.key(0), batch_size)  # type: ignore[arg-type]


def test_state_fields_roles(program) -> None:
    fields = program.state_fields(5)

    assert fields["dense0"]["w"] == mplp.graphcore.FieldSpec((3, 4), "parameter")
    assert fields["bias0"]["b"] == mplp.graphcore.FieldSpec((4,), "parameter")
    assert fields["dense0"]["input"] == mplp.graphcore.FieldSpec((5, 3), "stored")
    assert fields["act0"]["input"] == mplp.graphcore.FieldSpec((5, 4), "stored")
    assert fields["loss"]["input"] == mplp.graphcore.FieldSpec((5, 2), "stored")
    assert fields["loss"]["target"] == mplp.graphcore.FieldSpec((5, 2), "stored")
    assert fields["input"] == {}


def test_state_fields_match_init(program, state) -> None:
    fields = program.state_fields(BATCH)

    assert set(fields) == set(state)
    for group, specs in fields.items():
        assert set(specs) == set(state[group]), group
        for name, spec in specs.items():
            assert state[group][name].shape == spec.shape, f"{group}.{name}"


def test_reset_keeps_parameters(program, state, batch) -> None:
    trained, _ = program.step(program.init_learner(jax.random.key(0)), state, *batch)

    reset = program.reset(trained, 7)

    for group, fields in program.parameters(trained).items():
        for name, value in fields.items():
            np.testing.assert_array_equal(reset[group][name], value, err_msg=f"{group}.{name}")
    assert reset["dense0"]["input"].shape == (7, 3)
    assert reset["loss"]["target"].shape == (7, 2)
    assert np.all(np.asarray(reset["dense0"]["input"]) == 0.0)


def test_reset_allows_new_batch_size(program, state) -> None:
    reset = program.reset(state, 1)
    x, target = random_batch(5, (1,), SIZES[0], SIZES[-1], "l2")

    step = jax.jit(program.step)
    new_state, metrics = step(program.init_learner(jax.random.key(0)), reset, x, target)

    assert new_state["dense0"]["input"].shape == (1, 3)
    assert metrics["loss"].shape == ()


def test_parameters_lists_trainable_fields(program, state) -> None:
    parameters = program.parameters(state)

    assert set(parameters) == {"dense0", "bias0", "dense1", "bias1"}
    assert set(parameters["dense0"]) == {"w"}
    assert set(parameters["bias1"]) == {"b"}


# Replacing parameters.


def test_replace_parameters_round_trip(program, state) -> None:
    parameters = program.parameters(state)
    new_weights = np.full((3, 4), 0.25, np.float32)

    same = program.replace_parameters(state, parameters)
    changed = program.replace_parameters(state, {"dense0": {"w": new_weights}})

    for group, fields in parameters.items():
        for name, value in fields.items():
            np.testing.assert_array_equal(same[group][name], value, err_msg=f"{group}.{name}")
    np.testing.assert_array_equal(mplp.builders.dense_layers(program, changed)[0][0], new_weights)
    np.testing.assert_array_equal(changed["dense1"]["w"], state["dense1"]["w"])
    # The original state is not modified.
    assert not np.allclose(state["dense0"]["w"], new_weights)


def test_replace_dense_layers_round_trip(program, state) -> None:
    layers = [(w + 1.0, b - 1.0) for w, b in mplp.builders.dense_layers(program, state)]

    replaced = mplp.builders.replace_dense_layers(program, state, layers)

    for (weights, biases), (new_weights, new_biases) in zip(
        layers, mplp.builders.dense_layers(program, replaced), strict=True
    ):
        np.testing.assert_array_equal(new_weights, weights)
        np.testing.assert_array_equal(new_biases, biases)
    with pytest.raises(mplp.GraphError, match="2 layers but 1 were given"):
        mplp.builders.replace_dense_layers(program, state, layers[:1])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"nonexistent": {"w": np.zeros((3, 4))}}, "'nonexistent'"),
        ({"act0": {"w": np.zeros((3, 4))}}, "'act0'"),
        ({"dense0": {"b": np.zeros((3, 4))}}, "no parameter 'b'"),
        ({"dense0": {"w": np.zeros((4, 3))}}, r"'dense0\.w' must have shape \(3, 4\)"),
        ({"bias0": {"b": np.zeros((4, 1))}}, r"'bias0\.b' must have shape \(4,\)"),
    ],
    ids=["unknown-group", "group-without-parameters", "unknown-field", "wrong-shape", "wrong-rank"],
)
def test_replace_parameters_errors(program, state, parameters: dict, message: str) -> None:
    with pytest.raises(mplp.GraphError, match=message):
        program.replace_parameters(state, parameters)


# JAX transforms.


def test_jit_step_traces_once(program, state) -> None:
    traces = 0

    def counted_step(learner_params, state, x, target):
        nonlocal traces
        traces += 1
        return program.step(learner_params, state, x, target)

    step = jax.jit(counted_step)
    learner_params = program.init_learner(jax.random.key(0))
    first_x, first_target = random_batch(10, (BATCH,), SIZES[0], SIZES[-1], "l2")
    second_x, second_target = random_batch(11, (BATCH,), SIZES[0], SIZES[-1], "l2")

    # The second call takes the state the first returned, so any change of the state's
    # structure, shapes or dtypes by a step would trigger a new trace.
    state, first_metrics = step(learner_params, state, first_x, first_target)
    state, second_metrics = step(learner_params, state, second_x, second_target)

    assert traces == 1
    assert float(first_metrics["loss"]) != float(second_metrics["loss"])


def test_jit_bound_step_reused(batch) -> None:
    traces = 0

    def counted_identity(x):
        nonlocal traces
        traces += 1
        return x

    # The hidden activation counts how often it is traced, so the count grows only when
    # jax.jit(program.step) traces the step again.
    kind = mplp.nodes.activation_kind("counted_identity", counted_identity)
    graph = mplp.builders.mlp_graph(SIZES, activation="identity", aggregate="sum")
    groups = tuple(
        group.model_copy(update={"kind": "counted_identity"}) if group.name == "act0" else group
        for group in graph.groups
    )
    program = mplp.compile_graph(
        graph.model_copy(update={"groups": groups}),
        mplp.learners.gradient(LEARNING_RATE),
        kinds={"counted_identity": kind},
    )
    learner_params = program.init_learner(jax.random.key(0))
    state = program.init(jax.random.key(0), BATCH)
    step = jax.jit(program.step)

    state, _ = step(learner_params, state, *batch)
    traces_after_first_call = traces
    step(learner_params, state, *batch)

    assert traces_after_first_call >= 1
    assert traces == traces_after_first_call


def test_vmap_over_apply(program, state) -> None:
    # Four networks: the fixture's state with its parameters scaled by 1, 2, 3 and 4.
    scales = np.arange(1.0, 5.0, dtype=np.float32)
    parameters = jax.tree.map(
        lambda leaf: scales.reshape(-1, *[1] * leaf.ndim) * np.asarray(leaf),
        program.parameters(state),
    )
    states = jax.tree.map(lambda leaf: np.stack([np.asarray(leaf)] * 4), state)
    for group, fields in parameters.items():
        states[group] = {**states[group], **fields}
    x, _ = random_batch(5, (BATCH,), SIZES[0], SIZES[-1], "l2")
    xs, _ = random_batch(6, (4, BATCH), SIZES[0], SIZES[-1], "l2")
    single = jax.tree.map(lambda leaf: leaf[0], states)

    over_states = jax.jit(jax.vmap(program.apply, in_axes=(0, None)))(states, x)
    over_inputs = jax.jit(jax.vmap(program.apply, in_axes=(None, 0)))(single, xs)

    assert over_states.shape == (4, BATCH, SIZES[-1])
    assert over_inputs.shape == (4, BATCH, SIZES[-1])
    stacked_layers = jax.tree.map(np.asarray, mplp.builders.dense_layers(program, states))
    for index in range(4):
        layers = jax.tree.map(lambda leaf, i=index: leaf[i], stacked_layers)
        expected = reference_forward(layers, x, "tanh", "l2")
        np.testing.assert_allclose(over_states[index], expected, rtol=RTOL, atol=ATOL)
    first_layers = jax.tree.map(lambda leaf: leaf[0], stacked_layers)
    expected_over_inputs = reference_forward(first_layers, xs.reshape(-1, SIZES[0]), "tanh", "l2")
    np.testing.assert_allclose(
        over_inputs.reshape(-1, SIZES[-1]), expected_over_inputs, rtol=RTOL, atol=ATOL
    )


def test_grad_through_run(program, state) -> None:
    learner_params = program.init_learner(jax.random.key(0))
    steps = 3
    xs, targets = random_batch(7, (steps, BATCH), SIZES[0], SIZES[-1], "l2")
    x_test, target_test = random_batch(8, (BATCH,), SIZES[0], SIZES[-1], "l2")
    initial = program.parameters(state)

    def final_loss(learner_params, parameters):
        start = program.replace_parameters(state, parameters)
        final, _ = program.run(learner_params, start, xs, targets)
        return program.loss(final, x_test, target_test)

    rate_gradient, gradients = jax.jit(jax.grad(final_loss, argnums=(0, 1)))(
        learner_params, initial
    )

    def reference_final_loss(layers):
        trained, _ = reference_sgd_run(layers, xs, targets, LEARNING_RATE, "tanh", "l2")
        return reference_loss(trained, x_test, target_test, "tanh", "l2")

    layers = mplp.builders.dense_layers(program, state)
    expected = jax.jit(jax.grad(reference_final_loss))(layers)
    for layer, (weight_gradient, bias_gradient) in enumerate(expected):
        actual_weights = gradients[f"dense{layer}"]["w"]
        actual_biases = gradients[f"bias{layer}"]["b"]
        assert np.all(np.isfinite(actual_weights)), layer
        assert np.abs(actual_weights).max() > 0.0, layer
        np.testing.assert_allclose(actual_weights, weight_gradient, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(actual_biases, bias_gradient, rtol=1e-4, atol=1e-6)
    # Meta-training differentiates with respect to the learner's parameters.
    assert np.isfinite(rate_gradient["learning_rate"])
    assert rate_gradient["learning_rate"] != 0.0


# Input checks.


def test_rejects_integer_input(program, state, batch) -> None:
    x = np.ones((BATCH, 3), np.int32)

    with pytest.raises(mplp.GraphError, match="dtype int32: pass floating-point data"):
        program.apply(state, x)
    with pytest.raises(mplp.GraphError, match="dtype int32"):
        program.step(program.init_learner(jax.random.key(0)), state, x, batch[1])


@pytest.mark.parametrize("shape", [(BATCH, 4), (BATCH,), (BATCH, 3, 1)], ids=str)
def test_rejects_wrong_input_shape(program, state, shape: tuple[int, ...]) -> None:
    with pytest.raises(mplp.GraphError, match=r"input x has shape .* expects \(batch, 3\)"):
        program.apply(state, np.zeros(shape, np.float32))


def test_rejects_wrong_step_batch(program, state) -> None:
    x, target = random_batch(0, (BATCH + 1,), SIZES[0], SIZES[-1], "l2")

    with pytest.raises(mplp.GraphError, match="batch size 4 but the state was initialised for 3"):
        program.step(program.init_learner(jax.random.key(0)), state, x, target)


@pytest.mark.parametrize("shape", [(BATCH, 3), (BATCH,), (BATCH + 1, 2)], ids=str)
def test_rejects_wrong_target_shape(program, state, batch, shape: tuple[int, ...]) -> None:
    target = np.zeros(shape, np.float32)

    with pytest.raises(mplp.GraphError, match=r"target has shape .* expects \(3, 2\)"):
        program.loss(state, batch[0], target)
    with pytest.raises(mplp.GraphError, match="target has shape"):
        program.step(program.init_learner(jax.random.key(0)), state, batch[0], target)


def test_rejects_integer_target(program, state, batch) -> None:
    target = np.ones((BATCH, 2), np.int32)

    with pytest.raises(mplp.GraphError, match="target has dtype int32"):
        program.loss(state, batch[0], target)
    with pytest.raises(mplp.GraphError, match="target has dtype int32"):
        program.step(program.init_learner(jax.random.key(0)), state, batch[0], target)


def test_run_rejects_unstacked_batches(program, state, batch) -> None:
    learner_params = program.init_learner(jax.random.key(0))
    xs, targets = random_batch(0, (2, BATCH), SIZES[0], SIZES[-1], "l2")

    with pytest.raises(mplp.GraphError, match="stacked minibatches"):
        program.run(learner_params, state, batch[0][0], targets)
    with pytest.raises(mplp.GraphError, match="xs has 2 steps but targets has 1"):
        program.run(learner_params, state, xs, targets[:1])
