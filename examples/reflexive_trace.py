"""A user-defined node kind whose eligibility trace a reflexive arrow updates every step.

The kind ``hebbian_probe`` is a dense synapse group ``y = x W`` that keeps, next to its
weights, a Hebbian eligibility trace per synapse::

    trace_ij <- decay * trace_ij + (1 - decay) * mean over the batch of x_i * y_j

Its reflexive function computes that update from the forward input stored in the group's
state. A ``probe`` group of this kind reads the hidden layer of a small sinusoid regressor but
feeds nothing back. No backward arrow reaches it, so it never receives a message, no learner
runs on it and its weights stay fixed. The schedule still runs its reflexive arrow once per
learning step (`Schedule.reflexive_only`).

The script trains the regressor for ``--steps`` steps with the gradient learner and with an
untrained stateless MPLP learner, recomputes the trace directly in NumPy from the same hidden
activations, and prints the largest difference.

Run it with ``python examples/reflexive_trace.py [--steps N]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import mplp
from mplp import Arrow, Fields, FieldSpec, Graph, Group, NodeKind, connect
from mplp.nodes.common import aggregate_axis, check_rank, float_option
from mplp.tasks import sinusoid

Array = jax.Array

HIDDEN = 8
PROBE_OUTPUTS = 3
BATCH = 16
DEFAULT_DECAY = 0.9


# The node kind. Each function receives the group (its name, shape and options) or its fields.


def probe_input_shape(group: Group) -> tuple[int, ...]:
    check_rank(group, 2)
    return (group.shape[0],)


def probe_output_shape(group: Group) -> tuple[int, ...]:
    check_rank(group, 2)
    return (group.shape[1],)


def probe_init_params(key: Array, group: Group) -> Fields:
    std = float_option(group, "init_std", 0.5)
    return {"w": std * jax.random.normal(key, group.shape, jnp.float32)}


def probe_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del target
    return x @ params["w"]


def probe_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "weight": 1, "input": 1}


def probe_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    # What a learned learner reads at synapse (i, j) if a backward arrow ever reaches the group.
    del target
    return {
        "message": message[:, None, :, :],
        "weight": params["w"][None, :, :, None],
        "input": x[:, :, None, None],
    }


def probe_reduce_message(messages: Array, aggregate: str) -> Array:
    # messages: (B, n, m, k). The synapses (i, :) share input i.
    return aggregate_axis(messages, axis=2, aggregate=aggregate)


def probe_state_fields(group: Group) -> dict[str, FieldSpec]:
    return {"trace": FieldSpec(group.shape, "state")}


def probe_init_state(key: Array, group: Group) -> Fields:
    del key
    return {"trace": jnp.zeros(group.shape, jnp.float32)}


def probe_reflexive(group: Group, fields: Fields) -> Fields:
    decay = float_option(group, "decay", DEFAULT_DECAY)
    x = fields["input"]  # (B, n), stored by this step's forward pass
    y = x @ fields["w"]  # (B, m)
    coactivity = jnp.einsum("bi,bj->ij", x, y) / x.shape[0]
    return {**fields, "trace": decay * fields["trace"] + (1.0 - decay) * coactivity}


HEBBIAN_PROBE = NodeKind(
    name="hebbian_probe",
    family="weight",
    connection="dense",
    input_shape=probe_input_shape,
    output_shape=probe_output_shape,
    init_params=probe_init_params,
    apply=probe_apply,
    feature_sizes=probe_feature_sizes,
    features=probe_features,
    update_field="w",
    reduce_message=probe_reduce_message,
    init_state=probe_init_state,
    state_fields=probe_state_fields,
    reflexive=probe_reflexive,
)


def probe_graph(aggregate: str) -> Graph:
    """Build a 1-8-1 tanh regressor whose hidden layer also feeds the probe group."""
    groups = (
        Group(name="input", kind="input", shape=(1,)),
        Group(name="dense0", kind="dense", shape=(1, HIDDEN), options={"init_std": 0.5}),
        Group(name="bias0", kind="bias", shape=(HIDDEN,)),
        Group(name="act0", kind="tanh", shape=(HIDDEN,)),
        Group(name="dense1", kind="dense", shape=(HIDDEN, 1), options={"init_std": 0.5}),
        Group(name="bias1", kind="bias", shape=(1,)),
        Group(name="loss", kind="l2", shape=(1,)),
        Group(
            name="probe",
            kind="hebbian_probe",
            shape=(HIDDEN, PROBE_OUTPUTS),
            options={"decay": DEFAULT_DECAY},
        ),
    )
    chain = ["input", "dense0", "bias0", "act0", "dense1", "bias1", "loss"]
    arrows = []
    for source, target in zip(chain[:-1], chain[1:], strict=True):
        arrows += connect(
            source,
            target,
            connection="dense" if target.startswith("dense") else "elementwise",
            aggregate=aggregate,
            backward=source != "input",
        )
    arrows += [
        Arrow(
            name="act0->probe", kind="forward", source="act0", target="probe", connection="dense"
        ),
        Arrow(name="probe:trace", kind="reflexive", source="probe", target="probe"),
    ]
    return Graph(groups=groups, arrows=tuple(arrows))


def hidden_activity(state: mplp.State, x: Array) -> np.ndarray:
    """Compute the output of ``act0`` for inputs ``x`` directly from the state's parameters."""
    weights = np.asarray(state["dense0"]["w"])
    biases = np.asarray(state["bias0"]["b"])
    return np.tanh(np.asarray(x) @ weights + biases)


def train_and_check(learner: mplp.Learner, steps: int) -> None:
    """Train with ``learner`` and compare the probe's trace with a NumPy recomputation."""
    program = mplp.compile_graph(
        probe_graph(learner.default_aggregate), learner, kinds={"hebbian_probe": HEBBIAN_PROBE}
    )
    backward_groups = [step.group for step in program.schedule.backward]
    assert "probe" not in backward_groups

    state = program.init(jax.random.key(0), BATCH)
    learner_params = program.init_learner(jax.random.key(1))
    episode = sinusoid.sample_episode(jax.random.key(2), steps, BATCH)
    step = jax.jit(program.step)

    probe_weights = np.asarray(state["probe"]["w"])
    expected = np.zeros((HIDDEN, PROBE_OUTPUTS), np.float32)
    losses = []
    for x, y in zip(episode.train_x, episode.train_y, strict=True):
        # The forward pass of this step uses the parameters from before its update.
        hidden = hidden_activity(state, x)
        coactivity = hidden.T @ (hidden @ probe_weights) / BATCH
        expected = DEFAULT_DECAY * expected + (1.0 - DEFAULT_DECAY) * coactivity
        state, metrics = step(learner_params, state, x, y)
        losses.append(float(metrics["loss"]))

    trace = np.asarray(state["probe"]["trace"])
    weight_change = np.abs(np.asarray(state["probe"]["w"]) - probe_weights).max()
    print(f"{learner.name} learner, {steps} steps:")
    print(f"  backward pass: {', '.join(backward_groups)}")
    print(f"  reflexive arrows outside the backward pass: {program.schedule.reflexive_only}")
    print(f"  loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"  probe weights changed by: {weight_change:.1e}")
    print(f"  trace norm: {np.linalg.norm(trace):.4f}")
    print(f"  max trace difference: {np.abs(trace - expected).max():.3e}")


def main(argv: Sequence[str] | None = None) -> None:
    """Train with both learners for ``--steps`` steps each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="learning steps per learner")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")

    train_and_check(mplp.learners.gradient(0.1), args.steps)
    train_and_check(mplp.learners.stateless(message_size=4), args.steps)


if __name__ == "__main__":
    main()
