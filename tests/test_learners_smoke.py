"""Smoke test of every learner on every built-in node kind.

After one learning step the network state must keep its tree structure, the shape and dtype
of every field, and finite values. The learners are the gradient learner and the stateless
and stateful learners with each sharing mode, with and without ``pass_gradient``. Together
the networks contain every built-in node kind, which `test_networks_cover_kinds` checks.

Compiling one step takes seconds on a shared two-core machine, and running it eagerly the
first time takes longer still, because JAX then compiles every operation on its own. So the
checks are split by cost:

- every learner on every network is traced with a batch of three by `jax.eval_shape`, which
  runs the same Python as `jax.jit` without compiling, and checks structure, shapes and dtypes;
- every learner runs one eager step with a batch of one on the cross-entropy network, checking
  values as well (the rules treat every activation kind alike: they read the message and the
  pre-activation value);
- a few pairs run compiled under `jax.jit`, so that every network and both batch sizes also run
  with values.

Eager and traced cases fill the learner parameters with NumPy values in the structure that
``init_learner`` returns, because sampling them with `jax.random` compiles a sampler for
every new shape.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

import mplp
from helpers import random_batch
from mplp import Arrow, Graph, Group, connect
from mplp.learners import SHARING_MODES, gradient, stateful, stateless

MESSAGE_SIZE = 3
HIDDEN_SIZE = 4
SIZES = (3, 4, 2)
LEARNING_RATE = 0.1


def _learners() -> dict[str, mplp.Learner]:
    learners = {"gradient": gradient(LEARNING_RATE)}
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


def skip_graph(aggregate: str) -> Graph:
    """Build an MLP with a second dense group from the input straight into the last bias.

    The skip group ``zskip`` sends no message, and the schedule runs it before ``dense1``,
    which sends one, so a weight rule shared by both must still have a message output.
    """
    groups = (
        Group(name="input", kind="input", shape=(SIZES[0],)),
        Group(name="dense0", kind="dense", shape=(SIZES[0], SIZES[1])),
        Group(name="bias0", kind="bias", shape=(SIZES[1],)),
        Group(name="act0", kind="tanh", shape=(SIZES[1],)),
        Group(name="dense1", kind="dense", shape=(SIZES[1], SIZES[2])),
        Group(name="zskip", kind="dense", shape=(SIZES[0], SIZES[2])),
        Group(name="bias1", kind="bias", shape=(SIZES[2],)),
        Group(name="loss", kind="l2", shape=(SIZES[2],)),
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
    arrows: list[Arrow] = []
    for source, target, connection in forward:
        arrows += connect(
            source,
            target,
            connection=connection,
            aggregate=aggregate,
            backward=source != "input",
        )
    return Graph(groups=groups, arrows=tuple(arrows))


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
    return mplp.compile_graph(skip_graph(learner.default_aggregate), learner)


# name: (builder, loss kind)
NETWORKS: dict[str, tuple[Callable[[mplp.Learner], mplp.Program], str]] = {
    "sigmoid-ce": (_mlp("sigmoid", None, "cross_entropy"), "cross_entropy"),
    "relu-step-l2": (_mlp("relu", "step", "l2"), "l2"),
    "step-identity-l2": (_mlp("step", "identity", "l2"), "l2"),
    "skip-l2": (_skip, "l2"),
}

EAGER_CASES = [(learner, "sigmoid-ce") for learner in LEARNERS]

JIT_CASES = [
    ("gradient", "relu-step-l2", 1),
    ("gradient", "step-identity-l2", 3),
    ("stateless-all-gradient", "sigmoid-ce", 1),
    ("stateful-kind", "skip-l2", 3),
]

_PROGRAMS: dict[tuple[str, str], mplp.Program] = {}


def program_for(learner_name: str, network_name: str) -> mplp.Program:
    key = (learner_name, network_name)
    if key not in _PROGRAMS:
        build, _ = NETWORKS[network_name]
        _PROGRAMS[key] = build(LEARNERS[learner_name])
    return _PROGRAMS[key]


def filled_learner_params(program: mplp.Program, seed: int) -> dict:
    """Return learner parameters with ``init_learner``'s structure and NumPy values.

    Rule weights are normal with std 0.3, standardisers are the identity (shift 0, scale 1),
    output means 0 and output scales and the learning rate the learner's settings.
    """
    shapes = jax.eval_shape(program.init_learner, jax.random.key(0))
    options = program.learner.options
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
        if names[0] == "learning_rate":
            return np.float32(options["learning_rate"])
        if names[0] == "standardisers":
            return np.float32(1.0 if names[-1] == "scale" else 0.0)
        if names[0] == "outputs":
            return np.float32(options["output_scale"] if names[-1] == "scale" else 0.0)
        return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


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


def test_shared_rule_keeps_message_output() -> None:
    # zskip, which sends no message, is the first weight group in the schedule.
    program = program_for("stateless-kind", "skip-l2")
    order = [info.group.name for info in program.learning_groups]
    shapes = jax.eval_shape(program.init_learner, jax.random.key(0))

    assert order.index("zskip") < order.index("dense1")
    assert "g" in shapes["rules"]["weight"]
    assert "f" in shapes["rules"]["weight"]


@pytest.mark.parametrize("network_name", list(NETWORKS))
@pytest.mark.parametrize("learner_name", list(LEARNERS))
def test_step_traced(learner_name: str, network_name: str) -> None:
    batch = 3
    program = program_for(learner_name, network_name)
    learner_params = jax.eval_shape(program.init_learner, jax.random.key(0))
    state = jax.eval_shape(lambda key: program.init(key, batch), jax.random.key(1))
    x, target = batch_for(network_name, batch)

    new_state, metrics = jax.eval_shape(program.step, learner_params, state, x, target)
    assert_same_layout(state, new_state)
    assert metrics["loss"].shape == ()


@pytest.mark.parametrize(("learner_name", "network_name"), EAGER_CASES)
def test_step_eager(learner_name: str, network_name: str) -> None:
    program = program_for(learner_name, network_name)
    learner_params = filled_learner_params(program, seed=0)
    state = program.init(jax.random.key(1), 1)
    x, target = batch_for(network_name, 1)

    new_state, metrics = program.step(learner_params, state, x, target)
    assert_same_layout(state, new_state)
    assert_finite(new_state)
    assert np.isfinite(metrics["loss"])


@pytest.mark.parametrize(("learner_name", "network_name", "batch"), JIT_CASES)
def test_step_jitted(learner_name: str, network_name: str, batch: int) -> None:
    program = program_for(learner_name, network_name)
    learner_params = program.init_learner(jax.random.key(0))
    state = program.init(jax.random.key(2), batch)
    x, target = batch_for(network_name, batch, seed=1)

    new_state, metrics = jax.jit(program.step)(learner_params, state, x, target)
    assert_same_layout(state, new_state)
    assert_finite(new_state)
    assert np.isfinite(metrics["loss"])
