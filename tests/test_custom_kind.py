"""Node kinds: a user-defined kind added without touching graphcore, reflexive arrows, empty
fan-in messages, a residual graph, and the built-in kinds on corner cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mplp
from helpers import (
    ATOL,
    RTOL,
    chain_arrows,
    forward_arrow,
    random_batch,
    reference_sgd_step,
    residual_graph,
)
from mplp import Arrow, Graph, Group
from mplp.graphcore import FieldSpec, NodeKind, compiler, kinds

LEARNING_RATE = 0.5
TRACE_DECAY = 0.9


# A user-defined kind: an identity activation that keeps a decaying trace of its mean absolute
# input, updated by a reflexive arrow once per learning step.


def _trace_shape(group: Group) -> tuple[int, ...]:
    return group.shape


def _trace_init_params(key: jax.Array, group: Group) -> dict:
    return {}


def _trace_apply(params: dict, x: jax.Array, target: jax.Array | None) -> jax.Array:
    return x


def _trace_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "input": 1}


def _trace_features(params: dict, x: jax.Array, target: jax.Array | None, message: jax.Array):
    return {"message": message, "input": x[..., None]}


def _trace_reduce(messages: jax.Array, aggregate: str) -> jax.Array:
    return messages


def _trace_state_fields(group: Group) -> dict[str, FieldSpec]:
    return {"trace": FieldSpec(group.shape, "state")}


def _trace_init_state(key: jax.Array, group: Group) -> dict:
    return {"trace": jnp.zeros(group.shape, jnp.float32)}


def _trace_reflexive(group: Group, fields: dict) -> dict:
    updated = dict(fields)
    batch_mean = jnp.abs(fields["input"]).mean(axis=0)
    updated["trace"] = TRACE_DECAY * fields["trace"] + (1.0 - TRACE_DECAY) * batch_mean
    return updated


LEAKY_TRACE = NodeKind(
    name="leaky_trace",
    family="activation",
    connection="elementwise",
    input_shape=_trace_shape,
    output_shape=_trace_shape,
    init_params=_trace_init_params,
    apply=_trace_apply,
    feature_sizes=_trace_feature_sizes,
    features=_trace_features,
    reduce_message=_trace_reduce,
    init_state=_trace_init_state,
    state_fields=_trace_state_fields,
    reflexive=_trace_reflexive,
)


def trace_mlp_graph(kind_name: str = "leaky_trace", reflexive_count: int = 1) -> Graph:
    """input(3) -> dense0 -> bias0 -> trace(4) -> dense1 -> bias1 -> l2 loss(2), with
    ``reflexive_count`` reflexive arrows on the trace group."""
    groups = (
        Group(name="input", kind="input", shape=(3,)),
        Group(name="dense0", kind="dense", shape=(3, 4), options={"init_std": 0.5}),
        Group(name="bias0", kind="bias", shape=(4,)),
        Group(name="trace", kind=kind_name, shape=(4,)),
        Group(name="dense1", kind="dense", shape=(4, 2), options={"init_std": 0.5}),
        Group(name="bias1", kind="bias", shape=(2,)),
        Group(name="loss", kind="l2", shape=(2,)),
    )
    pairs = [
        ("input", "dense0"),
        ("dense0", "bias0"),
        ("bias0", "trace"),
        ("trace", "dense1"),
        ("dense1", "bias1"),
        ("bias1", "loss"),
    ]
    reflexive = tuple(
        Arrow(name=f"decay{index}", kind="reflexive", source="trace", target="trace")
        for index in range(reflexive_count)
    )
    return Graph(groups=groups, arrows=(*chain_arrows(pairs), *reflexive))


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test its own copy of the kind registry, restored afterwards."""
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))


def check_trace_program(program: mplp.Program, reflexive_count: int = 1) -> None:
    """Run 3 steps and compare the trace and the parameters with a plain-JAX computation.

    Each reflexive arrow applies the decay once per step, all to the same stored input.
    """
    steps, batch = 3, 4
    state = program.init(jax.random.key(0), batch)
    xs, targets = random_batch(0, (steps, batch), 3, 2, "l2")

    final, _ = jax.jit(program.run)(program.init_learner(jax.random.key(0)), state, xs, targets)

    # The trace group is an identity in the forward pass, so the network is a linear MLP.
    layers = mplp.builders.dense_layers(program, state)
    trace = np.zeros(4, np.float32)
    for x, target in zip(xs, targets, strict=True):
        first_weights, first_biases = layers[0]
        hidden = x @ first_weights + first_biases
        for _ in range(reflexive_count):
            trace = TRACE_DECAY * trace + (1.0 - TRACE_DECAY) * np.abs(hidden).mean(axis=0)
        layers, _ = reference_sgd_step(layers, x, target, LEARNING_RATE, "identity", "l2")

    assert np.abs(trace).min() > 1e-3
    np.testing.assert_allclose(final["trace"]["trace"], trace, rtol=RTOL, atol=ATOL)
    for (weights, biases), (expected_weights, expected_biases) in zip(
        mplp.builders.dense_layers(program, final), layers, strict=True
    ):
        np.testing.assert_allclose(weights, expected_weights, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(biases, expected_biases, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reflexive_count", [1, 2])
def test_custom_kind_via_argument(reflexive_count: int) -> None:
    program = mplp.compile_graph(
        trace_mlp_graph(reflexive_count=reflexive_count),
        mplp.learners.gradient(LEARNING_RATE),
        kinds={"leaky_trace": LEAKY_TRACE},
    )

    check_trace_program(program, reflexive_count)


def test_custom_kind_via_registry(isolated_registry: None) -> None:
    mplp.register_kind(LEAKY_TRACE)

    program = mplp.compile_graph(trace_mlp_graph(), mplp.learners.gradient(LEARNING_RATE))

    assert mplp.graphcore.get_kind("leaky_trace") is LEAKY_TRACE
    assert "leaky_trace" in mplp.graphcore.registered_kinds()
    check_trace_program(program)


def test_custom_kind_unknown_without_registration() -> None:
    with pytest.raises(mplp.GraphError, match="unknown node kind 'leaky_trace'"):
        mplp.compile_graph(trace_mlp_graph(), mplp.learners.gradient(LEARNING_RATE))


def test_custom_kind_argument_overrides_registry() -> None:
    renamed = LEAKY_TRACE._replace(name="relu")

    program = mplp.compile_graph(
        trace_mlp_graph("relu"), mplp.learners.gradient(LEARNING_RATE), kinds={"relu": renamed}
    )

    assert program.kinds["trace"] is renamed
    assert mplp.graphcore.get_kind("relu") is mplp.nodes.ACTIVATIONS["relu"]


def test_register_kind_errors(isolated_registry: None) -> None:
    mplp.register_kind(LEAKY_TRACE)

    with pytest.raises(mplp.GraphError, match="'leaky_trace' is already registered"):
        mplp.register_kind(LEAKY_TRACE)
    with pytest.raises(mplp.GraphError, match="expects a NodeKind, got dict"):
        mplp.register_kind({"name": "fake"})  # type: ignore[arg-type]
    replacement = LEAKY_TRACE._replace(family="other")
    assert mplp.register_kind(replacement, replace=True) is replacement
    assert mplp.graphcore.get_kind("leaky_trace") is replacement


def test_custom_state_field_layout() -> None:
    program = mplp.compile_graph(
        trace_mlp_graph(), mplp.learners.gradient(), kinds={"leaky_trace": LEAKY_TRACE}
    )
    state = program.init(jax.random.key(0), 2)

    assert program.state_fields(2)["trace"] == {
        "trace": FieldSpec((4,), "state"),
        "input": FieldSpec((2, 4), "stored"),
    }
    np.testing.assert_array_equal(state["trace"]["trace"], np.zeros(4))
    assert "trace" not in program.parameters(state)


def test_custom_state_survives_reset() -> None:
    program = mplp.compile_graph(
        trace_mlp_graph(), mplp.learners.gradient(), kinds={"leaky_trace": LEAKY_TRACE}
    )
    state = program.init(jax.random.key(0), 2)
    state["trace"]["trace"] = jnp.arange(4.0)

    reset = program.reset(state, 5)

    np.testing.assert_array_equal(reset["trace"]["trace"], np.arange(4.0))
    assert reset["trace"]["input"].shape == (5, 4)


# Reflexive arrows outside the backward pass.


def side_trace_graph(reflexive_count: int) -> Graph:
    """input(3) -> dense0 -> bias0 -> l2 loss(4), and a trace group fed by the input that no
    backward arrow reaches, with ``reflexive_count`` reflexive arrows."""
    groups = (
        Group(name="input", kind="input", shape=(3,)),
        Group(name="dense0", kind="dense", shape=(3, 4)),
        Group(name="bias0", kind="bias", shape=(4,)),
        Group(name="loss", kind="l2", shape=(4,)),
        Group(name="side", kind="leaky_trace", shape=(3,)),
    )
    pairs = [("input", "dense0"), ("dense0", "bias0"), ("bias0", "loss")]
    reflexive = tuple(
        Arrow(name=f"decay{index}", kind="reflexive", source="side", target="side")
        for index in range(reflexive_count)
    )
    arrows = (*chain_arrows(pairs), forward_arrow("input", "side"), *reflexive)
    return Graph(groups=groups, arrows=arrows)


@pytest.mark.parametrize("reflexive_count", [1, 2])
def test_reflexive_only_runs_every_step(reflexive_count: int) -> None:
    program = mplp.compile_graph(
        side_trace_graph(reflexive_count),
        mplp.learners.gradient(LEARNING_RATE),
        kinds={"leaky_trace": LEAKY_TRACE},
    )
    steps, batch = 3, 2
    xs, targets = random_batch(1, (steps, batch), 3, 4, "l2")

    final, _ = program.run(
        program.init_learner(jax.random.key(0)), program.init(jax.random.key(0), batch), xs, targets
    )

    expected_reflexive = tuple(("side", f"decay{index}") for index in range(reflexive_count))
    assert program.schedule.reflexive_only == expected_reflexive
    assert "side" not in {step.group for step in program.schedule.backward}
    trace = np.zeros(3, np.float32)
    for x in xs:
        for _ in range(reflexive_count):
            trace = TRACE_DECAY * trace + (1.0 - TRACE_DECAY) * np.abs(x).mean(axis=0)
    np.testing.assert_allclose(final["side"]["trace"], trace, rtol=RTOL, atol=ATOL)


def test_reflexive_runs_after_backward() -> None:
    program = mplp.compile_graph(
        trace_mlp_graph(), mplp.learners.gradient(), kinds={"leaky_trace": LEAKY_TRACE}
    )

    steps = {step.group: step for step in program.schedule.backward}

    assert steps["trace"].reflexive == ("decay0",)
    assert steps["dense0"].reflexive == ()
    assert program.schedule.reflexive_only == ()


# Messages over an empty fan-in.


def recording_learner(aggregate_exact: bool) -> mplp.Learner:
    """The gradient learner, also returning each group's incoming message as a diagnostic.

    With ``aggregate_exact`` False it accepts ``mean`` aggregation, which the gradient learner
    itself rejects.
    """
    gradient = mplp.learners.gradient(LEARNING_RATE)

    def backward(params, info, fields, message, aggregate):
        new_fields, message_out, aux = gradient.backward(params, info, fields, message, aggregate)
        return new_fields, message_out, {**aux, "message": message}

    return gradient._replace(name="recording", backward=backward, exact_gradient=aggregate_exact)


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_empty_fan_in_zero_message(aggregate: str) -> None:
    # dense0 has a backward arrow from bias0, but no arrow brings a message to bias0, so
    # bias0 never runs a backward step and dense0 receives no message at all.
    groups = (
        Group(name="input", kind="input", shape=(3,)),
        Group(name="dense0", kind="dense", shape=(3, 4)),
        Group(name="bias0", kind="bias", shape=(4,)),
        Group(name="loss", kind="l2", shape=(4,)),
    )
    arrows = (
        forward_arrow("input", "dense0", "dense"),
        forward_arrow("dense0", "bias0"),
        forward_arrow("bias0", "loss"),
        Arrow(
            name="bias0->dense0",
            kind="backward",
            source="bias0",
            target="dense0",
            aggregate=aggregate,
        ),
    )
    graph = Graph(groups=groups, arrows=arrows)
    program = mplp.compile_graph(graph, recording_learner(aggregate == "sum"))
    state = program.init(jax.random.key(0), 2)
    x, target = random_batch(2, (2,), 3, 4, "l2")

    for step in (program.step, jax.jit(program.step)):
        new_state, metrics = step(program.init_learner(jax.random.key(0)), state, x, target)

        message = np.asarray(metrics["learner"]["dense0"]["message"])
        assert [s.group for s in program.schedule.backward] == ["loss", "dense0"]
        assert program.schedule.backward[1].senders == ("bias0",)
        assert message.shape == (2, 4, 1)
        assert np.all(message == 0.0)
        np.testing.assert_array_equal(new_state["dense0"]["w"], state["dense0"]["w"])


def test_combine_messages() -> None:
    first = jnp.array([[1.0], [2.0]])
    second = jnp.array([[3.0], [6.0]])

    assert compiler._combine([], "mean") is None
    assert compiler._combine([], "sum") is None
    np.testing.assert_array_equal(compiler._combine([first, second], "sum"), [[4.0], [8.0]])
    np.testing.assert_array_equal(compiler._combine([first, second], "mean"), [[2.0], [4.0]])
    np.testing.assert_array_equal(compiler._combine([first], "mean"), first)


# A residual graph: fan-in from two groups into one identity group.


def _residual_reference_loss(layers, x, target):
    (first_weights, first_biases), (second_weights, second_biases) = layers
    hidden = jnp.tanh(x @ first_weights + first_biases)
    output = hidden + (hidden @ second_weights + second_biases)
    return jnp.sum(0.5 * (output - target) ** 2, axis=-1).mean()


@jax.jit
def _residual_reference_step(layers, x, target):
    optimizer = optax.sgd(LEARNING_RATE)
    loss, gradients = jax.value_and_grad(_residual_reference_loss)(layers, x, target)
    updates, _ = optimizer.update(gradients, optimizer.init(layers), layers)
    return optax.apply_updates(layers, updates), loss


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_residual_matches_sgd(use_jit: bool) -> None:
    program = mplp.compile_graph(
        residual_graph(width_in=3, width=4), mplp.learners.gradient(LEARNING_RATE)
    )
    rng = np.random.default_rng(3)
    layers = [
        (rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)),
        (rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)),
    ]
    state = mplp.builders.replace_dense_layers(program, program.init(jax.random.key(0), 3), layers)
    x, target = random_batch(3, (3,), 3, 4, "l2")

    step = jax.jit(program.step) if use_jit else program.step
    new_state, metrics = step(program.init_learner(jax.random.key(0)), state, x, target)

    expected, expected_loss = _residual_reference_step(layers, x, target)
    actual = jax.tree.map(np.asarray, mplp.builders.dense_layers(program, new_state))
    for index in range(2):
        np.testing.assert_allclose(actual[index][0], expected[index][0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(actual[index][1], expected[index][1], rtol=RTOL, atol=ATOL)
    # Both paths from act0 to the loss carry gradient, so a dropped fan-in message would move
    # dense0 by a visibly different amount.
    assert np.abs(actual[0][0] - layers[0][0]).max() > 1e-3
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=RTOL)


# Built-in kinds on corner cases: one node, a batch of one.


ACTIVATION_CASES = [
    ("sigmoid", 0.0, 0.5),
    ("sigmoid", 2.0, 1.0 / (1.0 + np.exp(-2.0))),
    ("relu", -1.0, 0.0),
    ("relu", 2.0, 2.0),
    ("tanh", 0.0, 0.0),
    ("tanh", 1.0, np.tanh(1.0)),
    ("step", 0.0, 0.0),
    ("step", 1e-3, 1.0),
    ("step", -1.0, 0.0),
    ("identity", -3.0, -3.0),
]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(("name", "value", "expected"), ACTIVATION_CASES)
def test_activation_one_node(name: str, value: float, expected: float, use_jit: bool) -> None:
    kind = mplp.graphcore.get_kind(name)
    apply = jax.jit(kind.apply) if use_jit else kind.apply

    output = apply({}, jnp.full((1, 1), value, jnp.float32), None)

    assert output.shape == (1, 1)
    assert output.dtype == jnp.float32
    np.testing.assert_allclose(output, [[expected]], rtol=1e-6)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_softmax_corner_cases(use_jit: bool) -> None:
    kind = mplp.graphcore.get_kind("softmax")
    apply = jax.jit(kind.apply) if use_jit else kind.apply

    single = apply({}, jnp.array([[5.0]]), None)
    large = apply({}, jnp.array([[1000.0, 0.0]]), None)

    np.testing.assert_allclose(single, [[1.0]])
    np.testing.assert_allclose(large, [[1.0, 0.0]], atol=1e-30)
    assert np.all(np.isfinite(large))


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_loss_corner_cases(use_jit: bool) -> None:
    l2 = mplp.graphcore.get_kind("l2")
    cross_entropy = mplp.graphcore.get_kind("cross_entropy")
    l2_apply = jax.jit(l2.apply) if use_jit else l2.apply
    cross_entropy_apply = jax.jit(cross_entropy.apply) if use_jit else cross_entropy.apply

    squared = l2_apply({}, jnp.array([[3.0]]), jnp.array([[1.0]]))
    certain = cross_entropy_apply({}, jnp.array([[1.0]]), jnp.array([[1.0]]))
    impossible = cross_entropy_apply({}, jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]]))

    np.testing.assert_allclose(squared, [[2.0]])
    # The clip bound 1 - 1e-7 rounds to the float32 value 1 - 2**-23 = 1 - 1.19e-7.
    np.testing.assert_allclose(certain, [[-np.log(np.float32(1.0 - 1e-7))]], rtol=1e-3)
    np.testing.assert_allclose(impossible, [[-np.log(1e-7), 0.0]], rtol=1e-5)


def test_loss_without_target() -> None:
    with pytest.raises(mplp.GraphError, match="without a target"):
        mplp.graphcore.get_kind("l2").apply({}, jnp.ones((1, 1)), None)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh", "step", "identity"])
def test_one_node_step_matches_sgd(activation: str, use_jit: bool) -> None:
    program = mplp.builders.mlp(
        [1, 1, 1], learner=mplp.learners.gradient(LEARNING_RATE), activation=activation
    )
    layers = [
        (np.array([[0.7]], np.float32), np.array([0.2], np.float32)),
        (np.array([[-1.3]], np.float32), np.array([0.1], np.float32)),
    ]
    state = mplp.builders.replace_dense_layers(program, program.init(jax.random.key(0), 1), layers)
    x, target = np.array([[0.5]], np.float32), np.array([[2.0]], np.float32)

    step = jax.jit(program.step) if use_jit else program.step
    new_state, _ = step(program.init_learner(jax.random.key(0)), state, x, target)

    expected, _ = reference_sgd_step(layers, x, target, LEARNING_RATE, activation, "l2")
    actual = mplp.builders.dense_layers(program, new_state)
    for index in range(2):
        np.testing.assert_allclose(actual[index][0], expected[index][0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(actual[index][1], expected[index][1], rtol=RTOL, atol=ATOL)
    assert abs(float(actual[1][1][0]) - 0.1) > 1e-3


# Learner features of the built-in kinds.


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("dense", (3, 2)),
        ("bias", (2,)),
        ("relu", (2,)),
        ("softmax", (2,)),
        ("l2", (2,)),
        ("cross_entropy", (2,)),
    ],
)
def test_features_broadcast_to_nodes(name: str, shape: tuple[int, ...]) -> None:
    kind = mplp.graphcore.get_kind(name)
    group = Group(name="g", kind=name, shape=shape)
    message_size, batch = 4, 5
    params = kind.init_params(jax.random.key(0), group)
    x = jnp.ones((batch, *kind.input_shape(group)))
    target = jnp.ones((batch, *kind.target_shape(group))) if kind.is_loss else None
    message_width = 1 if kind.is_loss else message_size
    message = jnp.ones((batch, *kind.output_shape(group), message_width))

    features = kind.features(params, x, target, message)
    sizes = kind.feature_sizes(message_size)

    assert list(features) == list(sizes)
    for feature, value in features.items():
        width = sizes[feature]
        broadcast = jnp.broadcast_shapes(value.shape, (batch, *shape, width))
        assert broadcast == (batch, *shape, width), feature


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_dense_reduce_message(aggregate: str) -> None:
    messages = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1)

    reduced = mplp.nodes.DENSE.reduce_message(messages, aggregate)

    expected = messages.sum(axis=2) if aggregate == "sum" else messages.mean(axis=2)
    assert reduced.shape == (2, 3, 1)
    np.testing.assert_allclose(reduced, expected)
