"""Smoke test of every learner on every built-in node kind.

After one learning step the network state must keep its tree structure, the shape and dtype
of every field, and finite values. Every learner configuration (the gradient learner, and the
stateless and stateful learners with each sharing mode, with and without ``pass_gradient``)
runs one eager step with a batch of one on every network, and is traced with a batch of three
by `jax.eval_shape`, which follows the same path as `jax.jit` without compiling. A subset of
the pairs also runs compiled under `jax.jit`, batch sizes one and three, because each compile
takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

import mplp
from helpers import random_batch
from mplp import Arrow, Graph, Group
from mplp.learners import SHARING_MODES, gradient, stateful, stateless

MESSAGE_SIZE = 3
HIDDEN_SIZE = 4
SIZES = (3, 4, 2)


def _learners() -> dict[str, mplp.Learner]:
    learners = {"gradient": gradient(0.1)}
    for sharing in SHARING_MODES:
        for pass_gradient in (False, True):
            suffix = f"{sharing}-gradient" if pass_gradient else sharing
            learners[f"stateless-{suffix}"] = stateless(
                MESSAGE_SIZE, sharing=sharing, pass_gradient=pass_gradient
            )
            learners[f"stateful-{suffix}"] = stateful(
                MESSAGE_SIZE, HIDDEN_SIZE, sharing=sharing, pass_gradient=pass_gradient
            )
    return learners


LEARNERS = _learners()


def _skip_graph(aggregate: str) -> Graph:
    """Build an MLP with a second dense group from the input straight into the last bias.

    The skip group ``zskip`` sends no message, and the schedule runs it before ``dense1``,
    which sends one: with shared rules the weight rule must still have a message output.
    """
    groups = (
        Group(name="input", kind="input", shape=(3,)),
        Group(name="dense0", kind="dense", shape=(3, 4)),
        Group(name="bias0", kind="bias", shape=(4,)),
        Group(name="act0", kind="tanh", shape=(4,)),
        Group(name="dense1", kind="dense", shape=(4, 2)),
        Group(name="zskip", kind="dense", shape=(3, 2)),
        Group(name="bias1", kind="bias", shape=(2,)),
        Group(name="loss", kind="l2", shape=(2,)),
    )
    forward = [
        ("input", "dense0", "dense"),
        ("dense0", "bias0", "elementwise"),
        ("bias0", "act0", "elementwise"),
        ("act0", "dense1", "dense"),
        ("dense1", "bias1", "elementwise"),
        ("input", "zskip", "dense"),
        ("zskip", "bias1", "elementwise"),
        ("bias1", "loss", "elementwise"),
    ]
    arrows = []
    for source, target, connection in forward:
        arrows.append(
            Arrow(
                name=f"{source}->{target}",
                kind="forward",
                source=source,
                target=target,
                connection=connection,
            )
        )
        if source != "input":
            arrows.append(
                Arrow(
                    name=f"{target}->{source}",
                    kind="backward",
                    source=target,
                    target=source,
                    aggregate=aggregate,
                )
            )
    return Graph(groups=tuple(groups), arrows=tuple(arrows))


def _mlp(activation: str, output_activation: str | None, loss: str) -> Callable:
    def build(learner: mplp.Learner) -> mplp.Program:
        return mplp.builders.mlp(
            SIZES,
            learner=learner,
            activation=activation,
            output_activation=output_activation,
            loss=loss,
        )

    return build


def _skip(learner: mplp.Learner) -> mplp.Program:
    return mplp.compile_graph(_skip_graph(learner.default_aggregate), learner)


# Together the networks contain every built-in node kind; test_networks_cover_kinds checks it.
NETWORKS: dict[str, tuple[Callable[[mplp.Learner], mplp.Program], str]] = {
    "sigmoid-step-ce": (_mlp("sigmoid", "step", "cross_entropy"), "cross_entropy"),
    "relu-tanh-l2": (_mlp("relu", "tanh", "l2"), "l2"),
    "step-identity-l2": (_mlp("step", "identity", "l2"), "l2"),
    "skip-l2": (_skip, "l2"),
}

# Compiled pairs: each learner family, sharing mode, pass_gradient setting and network at
# least once.
JIT_CASES = [
    ("gradient", "sigmoid-step-ce"),
    ("stateless-layer", "relu-tanh-l2"),
    ("stateless-all-gradient", "step-identity-l2"),
    ("stateful-kind", "skip-l2"),
    ("stateful-layer-gradient", "sigmoid-step-ce"),
]

_PROGRAMS: dict[tuple[str, str], mplp.Program] = {}
_LEARNER_PARAMS: dict[tuple[str, str], object] = {}


def program_for(learner_name: str, network_name: str) -> mplp.Program:
    key = (learner_name, network_name)
    if key not in _PROGRAMS:
        build, _ = NETWORKS[network_name]
        _PROGRAMS[key] = build(LEARNERS[learner_name])
    return _PROGRAMS[key]


def learner_params_for(learner_name: str, network_name: str) -> object:
    key = (learner_name, network_name)
    if key not in _LEARNER_PARAMS:
        program = program_for(learner_name, network_name)
        _LEARNER_PARAMS[key] = program.init_learner(jax.random.key(0))
    return _LEARNER_PARAMS[key]


def batch_for(network_name: str, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    _, loss = NETWORKS[network_name]
    return random_batch(seed, (batch,), SIZES[0], SIZES[-1], loss)


def assert_same_layout(before: dict, after: dict) -> None:
    """Assert equal tree structure, and equal shape and dtype for every leaf."""
    assert jax.tree.structure(after) == jax.tree.structure(before)
    old_leaves = jax.tree_util.tree_leaves_with_path(before)
    new_leaves = jax.tree.leaves(after)
    for (path, old), new in zip(old_leaves, new_leaves, strict=True):
        name = jax.tree_util.keystr(path)
        assert np.shape(new) == np.shape(old), f"shape of {name}"
        assert new.dtype == old.dtype, f"dtype of {name}"


def assert_finite(state: dict) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        assert np.isfinite(np.asarray(leaf)).all(), f"{jax.tree_util.keystr(path)} is not finite"


def test_networks_cover_kinds() -> None:
    builtin = {
        mplp.nodes.INPUT.name,
        mplp.nodes.DENSE.name,
        mplp.nodes.BIAS.name,
        mplp.nodes.SOFTMAX.name,
        *mplp.nodes.LOSSES,
        *mplp.nodes.ACTIVATIONS,
    }
    covered = set()
    for network_name in NETWORKS:
        covered |= {group.kind for group in program_for("gradient", network_name).graph.groups}
    assert covered == builtin


@pytest.mark.parametrize("network_name", list(NETWORKS))
@pytest.mark.parametrize("learner_name", list(LEARNERS))
def test_step_eager_and_traced(learner_name: str, network_name: str) -> None:
    program = program_for(learner_name, network_name)
    learner_params = learner_params_for(learner_name, network_name)

    state = program.init(jax.random.key(1), 1)
    x, target = batch_for(network_name, 1)
    new_state, metrics = program.step(learner_params, state, x, target)
    assert_same_layout(state, new_state)
    assert_finite(new_state)
    assert np.isfinite(metrics["loss"])

    traced_state = jax.eval_shape(lambda key: program.init(key, 3), jax.random.key(1))
    x, target = batch_for(network_name, 3)
    traced_new, _ = jax.eval_shape(program.step, learner_params, traced_state, x, target)
    assert_same_layout(traced_state, traced_new)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("learner_name", "network_name"), JIT_CASES)
def test_step_jitted(learner_name: str, network_name: str, batch: int) -> None:
    program = program_for(learner_name, network_name)
    learner_params = learner_params_for(learner_name, network_name)

    state = program.init(jax.random.key(2), batch)
    x, target = batch_for(network_name, batch, seed=1)
    new_state, metrics = jax.jit(program.step)(learner_params, state, x, target)
    assert_same_layout(state, new_state)
    assert_finite(new_state)
    assert np.isfinite(metrics["loss"])
