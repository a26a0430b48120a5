"""Randomly generated graphs against direct JAX evaluation, and messages over an empty fan-in.

A random graph is a stack of 1-3 blocks. Each block has one or two dense branches
(dense -> bias -> activation) from the block's input, and an identity group ``merge`` that
adds its fan-in: the first branch, plus either the second branch or the block's input itself
(a skip connection, when the widths agree). The reference functions below evaluate the same
computation from the block description alone, without the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mplp
from helpers import chain_arrows
from mplp import Graph, Group

Array = jax.Array
Parameters = dict[str, dict[str, Array]]

LEARNING_RATE = 0.1
RTOL = 1e-5
ATOL = 1e-5

REFERENCE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": lambda z: 1.0 / (1.0 + jnp.exp(-z)),
    "tanh": jnp.tanh,
    "relu": lambda z: jnp.where(z > 0, z, 0.0),
    "identity": lambda z: z,
}


class Block(NamedTuple):
    """One block: ``activations`` has one entry per dense branch; ``skip`` adds the input."""

    width: int
    activations: tuple[str, ...]
    skip: bool


class Spec(NamedTuple):
    input_width: int
    blocks: tuple[Block, ...]
    batch: int
    seed: int


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """Draw a random network: depth 1-3, widths 1-5, fan-in of 1-2 groups per merge group."""
    input_width = draw(st.integers(1, 5))
    width = input_width
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        block_width = draw(st.integers(1, 5))
        activation = st.sampled_from(sorted(REFERENCE_ACTIVATIONS))
        fan_in = draw(st.integers(1, 2))
        skip = fan_in == 2 and block_width == width and draw(st.booleans())
        branches = 1 if fan_in == 1 or skip else 2
        activations = tuple(draw(activation) for _ in range(branches))
        blocks.append(Block(block_width, activations, skip))
        width = block_width
    return Spec(
        input_width, tuple(blocks), draw(st.integers(1, 4)), draw(st.integers(0, 2**31 - 1))
    )


def branch_names(layer: int, branch: int) -> tuple[str, str, str]:
    suffix = f"{layer}{'ab'[branch]}"
    return f"dense{suffix}", f"bias{suffix}", f"act{suffix}"


def build_graph(spec: Spec) -> Graph:
    """Lower ``spec`` into groups and arrows; every forward arrow but those from the input has
    a backward mirror that sums its messages."""
    groups = [Group(name="input", kind="input", shape=(spec.input_width,))]
    pairs: list[tuple[str, str]] = []
    previous, width = "input", spec.input_width
    for layer, block in enumerate(spec.blocks):
        merge = f"merge{layer}"
        for branch, activation in enumerate(block.activations):
            dense, bias, act = branch_names(layer, branch)
            groups += [
                Group(name=dense, kind="dense", shape=(width, block.width)),
                Group(name=bias, kind="bias", shape=(block.width,)),
                Group(name=act, kind=activation, shape=(block.width,)),
            ]
            pairs += [(previous, dense), (dense, bias), (bias, act), (act, merge)]
        if block.skip:
            pairs.append((previous, merge))
        groups.append(Group(name=merge, kind="identity", shape=(block.width,)))
        previous, width = merge, block.width
    groups.append(Group(name="loss", kind="l2", shape=(width,)))
    pairs.append((previous, "loss"))

    arrows = chain_arrows(pairs, aggregate="sum")
    return Graph(groups=tuple(groups), arrows=tuple(arrows))


def reference_output(spec: Spec, parameters: Parameters, x: Array) -> Array:
    """Evaluate the network of ``spec`` directly: each merge adds its branches (and skip)."""
    hidden = x
    for layer, block in enumerate(spec.blocks):
        terms = []
        for branch, activation in enumerate(block.activations):
            dense, bias, _ = branch_names(layer, branch)
            linear = hidden @ parameters[dense]["w"] + parameters[bias]["b"]
            terms.append(REFERENCE_ACTIVATIONS[activation](linear))
        if block.skip:
            terms.append(hidden)
        hidden = sum(terms[1:], start=terms[0])
    return hidden


def reference_loss(spec: Spec, parameters: Parameters, x: Array, target: Array) -> Array:
    output = reference_output(spec, parameters, x)
    return jnp.mean(jnp.sum(0.5 * (output - target) ** 2, axis=-1))


def random_setup(spec: Spec) -> tuple[mplp.Program, mplp.State, np.ndarray, np.ndarray]:
    """Compile ``spec`` with the gradient learner and give it random parameters and data."""
    program = mplp.compile_graph(build_graph(spec), mplp.learners.gradient(LEARNING_RATE))
    state = program.init(jax.random.key(0), spec.batch)
    rng = np.random.default_rng(spec.seed)
    parameters = jax.tree.map(
        lambda value: (0.7 * rng.normal(size=value.shape)).astype(np.float32),
        program.parameters(state),
    )
    state = program.replace_parameters(state, parameters)
    width_out = spec.blocks[-1].width
    x = rng.normal(size=(spec.batch, spec.input_width)).astype(np.float32)
    target = rng.normal(size=(spec.batch, width_out)).astype(np.float32)
    return program, state, x, target


@given(specs())
def test_random_graph_forward_matches_jax(spec: Spec) -> None:
    program, state, x, _ = random_setup(spec)

    # One jitted call per example compiles faster than running the new shapes op by op.
    @jax.jit
    def both(state: mplp.State, x: Array) -> tuple[Array, Array]:
        return program.apply(state, x), reference_output(spec, program.parameters(state), x)

    output, expected = both(state, x)

    assert output.shape == (spec.batch, spec.blocks[-1].width)
    np.testing.assert_allclose(output, expected, rtol=RTOL, atol=ATOL)


@given(specs())
def test_random_graph_step_matches_sgd(spec: Spec) -> None:
    program, state, x, target = random_setup(spec)
    learner_params = program.init_learner(jax.random.key(0))
    optimizer = optax.sgd(LEARNING_RATE)

    @jax.jit
    def both(state: mplp.State, x: Array, target: Array) -> tuple[Any, Any, Array, Array]:
        new_state, metrics = program.step(learner_params, state, x, target)
        parameters = program.parameters(state)
        loss, gradients = jax.value_and_grad(reference_loss, argnums=1)(spec, parameters, x, target)
        updates, _ = optimizer.update(gradients, optimizer.init(parameters), parameters)
        expected = optax.apply_updates(parameters, updates)
        return program.parameters(new_state), expected, metrics["loss"], loss

    actual, expected, loss, expected_loss = both(state, x, target)

    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL, atol=ATOL)
    assert set(actual) == set(expected)
    for group, fields in expected.items():
        for name, value in fields.items():
            np.testing.assert_allclose(
                actual[group][name], value, rtol=RTOL, atol=ATOL, err_msg=f"{group}.{name}"
            )


@given(specs())
def test_random_graph_json_round_trip(spec: Spec) -> None:
    graph = build_graph(spec)

    loaded = Graph.from_json(graph.to_json())

    assert loaded == graph
    assert loaded.to_json() == graph.to_json()


# Messages over an empty fan-in: a side branch act0 -> dense_side -> bias_side -> act_side that
# does not reach the loss. bias_side declares act_side as its backward sender, but act_side
# receives no message and so never sends one: bias_side aggregates over an empty fan-in.


def dead_branch_graph(aggregate: str) -> Graph:
    groups = (
        Group(name="input", kind="input", shape=(2,)),
        Group(name="dense0", kind="dense", shape=(2, 3), options={"init_std": 0.5}),
        Group(name="bias0", kind="bias", shape=(3,)),
        Group(name="act0", kind="tanh", shape=(3,)),
        Group(name="dense1", kind="dense", shape=(3, 1), options={"init_std": 0.5}),
        Group(name="bias1", kind="bias", shape=(1,)),
        Group(name="loss", kind="l2", shape=(1,)),
        Group(name="dense_side", kind="dense", shape=(3, 2), options={"init_std": 0.5}),
        Group(name="bias_side", kind="bias", shape=(2,)),
        Group(name="act_side", kind="sigmoid", shape=(2,)),
    )
    pairs = [
        ("input", "dense0"),
        ("dense0", "bias0"),
        ("bias0", "act0"),
        ("act0", "dense1"),
        ("dense1", "bias1"),
        ("bias1", "loss"),
        ("act0", "dense_side"),
        ("dense_side", "bias_side"),
        ("bias_side", "act_side"),
    ]
    arrows = chain_arrows(pairs, aggregate=aggregate)
    return Graph(groups=groups, arrows=tuple(arrows))


def recording(learner: mplp.Learner) -> mplp.Learner:
    """Wrap ``learner`` so that each group's diagnostics include its incoming message."""

    def backward(
        params: mplp.LearnerParams,
        info: mplp.GroupInfo,
        fields: mplp.Fields,
        message: Array,
        aggregate: str,
    ) -> tuple[mplp.Fields, Array, dict[str, Array]]:
        new_fields, message_out, aux = learner.backward(params, info, fields, message, aggregate)
        return new_fields, message_out, {**aux, "message": message}

    return learner._replace(backward=backward)


@pytest.fixture(scope="module")
def dead_branch_run() -> dict[str, Any]:
    """One learning step of a stateless learner on the dead-branch graph, its diagnostics, and
    the meta-gradient of the loss after the step with respect to the learner parameters."""
    program = mplp.compile_graph(
        dead_branch_graph("mean"), recording(mplp.learners.stateless(message_size=2))
    )
    state = program.init(jax.random.key(0), 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2)).astype(np.float32)
    target = rng.normal(size=(4, 1)).astype(np.float32)

    def loss_after_step(learner_params: mplp.LearnerParams) -> tuple[Array, Any]:
        new_state, metrics = program.step(learner_params, state, x, target)
        return program.loss(new_state, x, target), metrics

    (loss, metrics), gradients = jax.jit(jax.value_and_grad(loss_after_step, has_aux=True))(
        program.init_learner(jax.random.key(1))
    )
    return {"program": program, "metrics": metrics, "loss": loss, "gradients": gradients}


def test_empty_fan_in_message_is_zero(dead_branch_run: dict[str, Any]) -> None:
    program, metrics = dead_branch_run["program"], dead_branch_run["metrics"]

    steps = {step.group: step for step in program.schedule.backward}
    assert "act_side" not in steps
    assert steps["bias_side"].senders == ("act_side",)
    assert steps["act0"].senders == ("dense1", "dense_side")
    message = np.asarray(metrics["learner"]["bias_side"]["message"])
    assert message.shape == (4, 2, 2)
    assert np.all(message == 0.0)
    # The dead branch still sends a learned message upstream, so act0 averages two messages.
    assert np.any(np.asarray(metrics["learner"]["act0"]["message"]) != 0.0)


def test_empty_fan_in_meta_gradient_finite(dead_branch_run: dict[str, Any]) -> None:
    gradients = dead_branch_run["gradients"]

    assert np.isfinite(float(dead_branch_run["loss"]))
    for path, leaf in jax.tree_util.tree_leaves_with_path(gradients):
        assert np.all(np.isfinite(np.asarray(leaf))), jax.tree_util.keystr(path)
    # bias_side's message reaches the loss through dense_side, act0 and the first layer.
    side_rule = gradients["rules"]["bias_side"]
    assert any(np.any(np.asarray(leaf) != 0.0) for leaf in jax.tree.leaves(side_rule))
