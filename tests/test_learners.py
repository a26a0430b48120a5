"""Behaviour of the learned learners: output scaling, frozen statistics, calibration,
meta-gradients, parameter counts, pass_gradient and argument checks.

Compiling a meta-gradient through an unrolled inner loop takes several seconds. So each
configuration is compiled once per module (`meta_gradient`) and shared by the tests that read
it. These compiles also skip XLA's slow optimisation passes (`FAST_COMPILE`), because the tests
check which gradients are zero, not how fast the code runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mplp
from helpers import random_batch
from mplp.graphcore import GroupInfo
from mplp.learners import (
    DEFAULT_OUTPUT_SCALE,
    calibrate,
    count_parameters,
    stateful,
    stateless,
)
from mplp.meta.optim import meta_optimizer

MESSAGE_SIZE = 3
HIDDEN_SIZE = 4
# The network of the eager tests, as in test_learners_smoke.py, so that JAX's per-operation
# compile cache is shared when both files run in one process.
SIZES = (3, 4, 2)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Widths of the rule inputs by node family, for message size k. The parts are: weight
# [m, w, x], bias [m, b, pre-bias value], activation [m, pre-activation], softmax [m, logit,
# shifted logit, probability, log-normaliser] and loss [loss, prediction, target, extra].
INPUT_WIDTHS = {
    "weight": lambda k: k + 2,
    "bias": lambda k: k + 2,
    "activation": lambda k: k + 1,
    "softmax": lambda k: k + 4,
    "loss": lambda k: 4,
}


def sigmoid_network(learner: mplp.Learner, init_std: float = 0.05) -> mplp.Program:
    return mplp.builders.mlp(
        SIZES, learner=learner, activation="sigmoid", loss="cross_entropy", init_std=init_std
    )


def parameters_equal(before: dict, after: dict) -> dict[str, bool]:
    """Map ``group.field`` to whether the parameter is bitwise unchanged."""
    result = {}
    for group, fields in before.items():
        for name, value in fields.items():
            result[f"{group}.{name}"] = bool(np.array_equal(value, after[group][name]))
    return result


# Output scale zero.


@pytest.mark.parametrize("family", ["stateless", "stateful"])
def test_zero_output_scale(family: str) -> None:
    if family == "stateless":
        learner = stateless(MESSAGE_SIZE, sharing="kind", output_scale=0.0)
    else:
        learner = stateful(MESSAGE_SIZE, HIDDEN_SIZE, sharing="kind", output_scale=0.0)
    program = sigmoid_network(learner)
    learner_params = program.init_learner(jax.random.key(0))
    state = program.init(jax.random.key(1), 1)
    x, target = random_batch(0, (1,), SIZES[0], SIZES[-1], "cross_entropy")

    new_state, _ = program.step(learner_params, state, x, target)

    unchanged = parameters_equal(program.parameters(state), program.parameters(new_state))
    for name, equal in unchanged.items():
        assert equal, f"parameter {name} changed"
    if family == "stateful":
        for info in program.learning_groups:
            name = info.group.name
            old, new = state[name]["carry"], new_state[name]["carry"]
            assert not np.array_equal(old, new), f"carry of {name} did not change"


# Meta-gradients through three inner steps.

META_SIZES = (2, 3, 2)
META_STEPS = 3
META_BATCH = 4

META_LEARNERS = {
    "stateless-layer": lambda: stateless(MESSAGE_SIZE, sharing="layer"),
    "stateless-kind": lambda: stateless(MESSAGE_SIZE, sharing="kind"),
    "stateful-layer": lambda: stateful(MESSAGE_SIZE, HIDDEN_SIZE, sharing="layer"),
    "stateful-kind": lambda: stateful(MESSAGE_SIZE, HIDDEN_SIZE, sharing="kind"),
}


@functools.cache
def meta_setup(name: str) -> tuple[mplp.Program, dict]:
    program = mplp.builders.mlp(
        META_SIZES, learner=META_LEARNERS[name](), activation="tanh", loss="l2"
    )
    return program, program.init_learner(jax.random.key(3))


@functools.cache
def meta_gradient(name: str) -> tuple[jax.Array, dict]:
    """Return the held-out loss after `META_STEPS` inner steps and its gradient with respect
    to the learner parameters."""
    program, learner_params = meta_setup(name)
    state = program.init(jax.random.key(4), META_BATCH)
    xs, targets = random_batch(5, (META_STEPS, META_BATCH), META_SIZES[0], META_SIZES[-1], "l2")
    x_held_out, target_held_out = random_batch(6, (8,), META_SIZES[0], META_SIZES[-1], "l2")

    def meta_loss(params: dict) -> jax.Array:
        final, _ = program.run(params, state, xs, targets)
        return program.loss(final, x_held_out, target_held_out)

    value_and_grad = jax.jit(jax.value_and_grad(meta_loss), compiler_options=FAST_COMPILE)
    return value_and_grad(learner_params)


@pytest.mark.parametrize("name", list(META_LEARNERS))
def test_meta_gradient_reaches_rules(name: str) -> None:
    loss, gradients = meta_gradient(name)
    assert np.isfinite(loss)

    for path, leaf in jax.tree_util.tree_leaves_with_path(gradients["rules"]):
        label = jax.tree_util.keystr(path)
        assert np.isfinite(leaf).all(), f"gradient of rules{label} is not finite"
        assert np.any(leaf != 0), f"gradient of rules{label} is zero"
    for slot, entry in gradients["outputs"].items():
        assert entry["scale"] != 0, f"gradient of the output scale of {slot} is zero"


@pytest.mark.parametrize("name", ["stateless-layer", "stateless-kind"])
def test_stateless_rules_have_f_and_g(name: str) -> None:
    program, learner_params = meta_setup(name)
    for info in program.learning_groups:
        slot = mplp.learners.rule_slot(info, program.learner.options["sharing"])
        rule = learner_params["rules"][slot]
        if info.kind.update_field is not None:
            assert "f" in rule, f"rule {slot} has no f"
        if info.sends_messages:
            assert "g" in rule, f"rule {slot} has no g"


def test_stateful_gate_bias_init() -> None:
    _, learner_params = meta_setup("stateful-layer")
    for slot, rule in learner_params["rules"].items():
        np.testing.assert_array_equal(rule["update_b"], -1.0, err_msg=slot)
        np.testing.assert_array_equal(rule["reset_b"], -1.0, err_msg=slot)
        np.testing.assert_array_equal(rule["candidate_b"], 0.0, err_msg=slot)


def test_first_layer_has_no_g() -> None:
    program, learner_params = meta_setup("stateless-layer")
    first = {info.group.name: info for info in program.learning_groups}["dense0"]

    assert not first.sends_messages
    assert "g" not in learner_params["rules"]["dense0"]
    assert "f" in learner_params["rules"]["dense0"]


@pytest.mark.parametrize("name", list(META_LEARNERS))
def test_statistics_have_zero_gradient(name: str) -> None:
    _, gradients = meta_gradient(name)
    for path, leaf in jax.tree_util.tree_leaves_with_path(gradients["standardisers"]):
        label = jax.tree_util.keystr(path)
        assert np.all(leaf == 0), f"gradient of standardisers{label} is not zero"
    for slot, entry in gradients["outputs"].items():
        assert entry["mean"] == 0, f"gradient of the output mean of {slot} is not zero"


def test_meta_step_keeps_statistics() -> None:
    _, learner_params = meta_setup("stateless-kind")
    _, gradients = meta_gradient("stateless-kind")
    optimizer = meta_optimizer(1e-3)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def meta_step(params: dict, gradients: dict) -> dict:
        updates, _ = optimizer.update(gradients, optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    new_params = meta_step(learner_params, gradients)

    for path, old in jax.tree_util.tree_leaves_with_path(learner_params["standardisers"]):
        label = jax.tree_util.keystr(path)
        new = new_params["standardisers"]
        for entry in path:
            new = new[entry.key]
        assert np.array_equal(old, new), f"standardisers{label} changed"
    for slot, entry in learner_params["outputs"].items():
        assert np.array_equal(entry["mean"], new_params["outputs"][slot]["mean"]), slot
    changed = jax.tree.map(
        lambda old, new: not np.array_equal(old, new),
        learner_params["rules"],
        new_params["rules"],
    )
    assert all(jax.tree.leaves(changed)), "a rule parameter was not updated"


# Calibration.

CALIBRATION_RUNS = 3
CALIBRATION_SCALE = 0.5
OLD_SHIFT = 0.3
OLD_SCALE = 2.0
OLD_MEAN = 0.1


@functools.cache
def calibration_setup() -> tuple[mplp.Program, dict, dict, np.ndarray, np.ndarray]:
    """Return a program, learner parameters with non-default statistics, R stacked network
    states, and ``(R, 1, 1, ...)`` inputs and targets: one step of batch one per run."""
    learner = stateless(MESSAGE_SIZE, sharing="layer", output_scale=CALIBRATION_SCALE)
    program = sigmoid_network(learner)
    initial = program.init_learner(jax.random.key(7))
    learner_params = {
        **initial,
        "standardisers": jax.tree.map(lambda leaf: leaf, initial["standardisers"]),
        "outputs": {
            slot: {"mean": jnp.float32(OLD_MEAN), "scale": entry["scale"]}
            for slot, entry in initial["outputs"].items()
        },
    }
    for parts in learner_params["standardisers"].values():
        for entry in parts.values():
            entry["shift"] = jnp.float32(OLD_SHIFT)
            entry["scale"] = jnp.float32(OLD_SCALE)

    runs = [program.init(jax.random.key(10 + run), 1) for run in range(CALIBRATION_RUNS)]
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *runs)
    xs, targets = random_batch(8, (CALIBRATION_RUNS, 1, 1), SIZES[0], SIZES[-1], "cross_entropy")
    return program, learner_params, states, xs, targets


@functools.cache
def calibrated(blend: float | None) -> dict:
    program, learner_params, states, xs, targets = calibration_setup()
    return calibrate(program, learner_params, states, xs, targets, blend=blend)


def test_calibrate_input_part() -> None:
    _, _, _, xs, _ = calibration_setup()
    entry = calibrated(None)["standardisers"]["dense0"]["input"]
    # The input part of the first dense layer is the network input x.
    np.testing.assert_allclose(entry["shift"], xs.mean(), rtol=1e-5)
    np.testing.assert_allclose(entry["scale"], xs.std(), rtol=1e-4)


def test_calibrate_constant_part() -> None:
    # Biases start at zero, so in the first step the bias part is zero everywhere.
    standardisers = calibrated(None)["standardisers"]
    for group in ("bias0", "bias1"):
        assert standardisers[group]["bias"]["shift"] == 0.0, group
        assert standardisers[group]["bias"]["scale"] == 1.0, group


def test_calibrate_output_mean() -> None:
    program, learner_params, states, xs, targets = calibration_setup()
    outputs = calibrated(None)["outputs"]

    # One step changes a parameter by mean_batch((f - out_mean) * out_scale), so the mean raw
    # update f of a group is mean(change) / out_scale + out_mean.
    raw_means: dict[str, list[float]] = {slot: [] for slot in outputs}
    for run in range(CALIBRATION_RUNS):
        state = jax.tree.map(lambda leaf, run=run: leaf[run], states)
        new_state, _ = program.step(learner_params, state, xs[run, 0], targets[run, 0])
        for slot in outputs:
            field = "w" if slot.startswith("dense") else "b"
            change = np.asarray(new_state[slot][field]) - np.asarray(state[slot][field])
            raw_means[slot].append(change.mean() / CALIBRATION_SCALE + OLD_MEAN)

    for slot, values in raw_means.items():
        np.testing.assert_allclose(
            outputs[slot]["mean"], np.mean(values), rtol=1e-4, atol=1e-6, err_msg=slot
        )


def test_calibrate_blend() -> None:
    _, old, _, _, _ = calibration_setup()
    new = calibrated(None)
    blended = calibrated(0.5)

    for slot, parts in old["standardisers"].items():
        for part, entry in parts.items():
            for name in ("shift", "scale"):
                expected = 0.5 * entry[name] + 0.5 * new["standardisers"][slot][part][name]
                actual = blended["standardisers"][slot][part][name]
                np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=f"{slot} {part}")
    for slot, entry in old["outputs"].items():
        expected = 0.5 * entry["mean"] + 0.5 * new["outputs"][slot]["mean"]
        np.testing.assert_allclose(blended["outputs"][slot]["mean"], expected, rtol=1e-6)
        assert blended["outputs"][slot]["scale"] == entry["scale"], slot
    same_rules = jax.tree.map(np.array_equal, blended["rules"], old["rules"])
    assert all(jax.tree.leaves(same_rules)), "calibrate changed a rule parameter"


# Parameter counts, computed by hand from the architecture.


def mlp_size(widths: list[int], final_bias: bool = True) -> int:
    """Number of weights and biases of a dense network with layer widths ``widths``."""
    total = 0
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        total += fan_in * fan_out
        if final_bias or index < len(widths) - 2:
            total += fan_out
    return total


def stateless_rule_size(width: int, k: int, has_update: bool, has_message: bool) -> int:
    size = 0
    if has_update:
        size += mlp_size([width, 80, 40, 1])
    if has_message:
        size += mlp_size([width, 80, 40, k])
    return size


def stateful_rule_size(width: int, carry: int) -> int:
    gates = 2 * (width * carry + carry * carry + carry)
    mlp_x = width * 80 + 80 + 80 * 40 + 40 + 40 * carry
    mlp_c = carry * 80 + 80 + 80 * 40 + 40 + 40 * carry
    return gates + mlp_x + mlp_c + carry


def families(program: mplp.Program) -> list[tuple[str, str, bool, bool]]:
    """``(group, family, has_update, sends_messages)`` of every learning group."""
    return [
        (info.group.name, info.kind.family, info.kind.update_field is not None, info.sends_messages)
        for info in program.learning_groups
    ]


def counted(program: mplp.Program) -> dict[str, int]:
    return count_parameters(jax.eval_shape(program.init_learner, jax.random.key(0)))


COUNT_SIZES = (3, 5, 4, 2)


@pytest.mark.parametrize("sharing", ["layer", "kind", "all"])
def test_stateless_counts(sharing: str) -> None:
    k = MESSAGE_SIZE
    program = mplp.builders.mlp(
        COUNT_SIZES, learner=stateless(k, sharing=sharing), activation="tanh", loss="l2"
    )
    # dense0 has f only (its message has no receiver); other weight and bias groups f and g;
    # activations and the loss g only.
    weight, bias = INPUT_WIDTHS["weight"](k), INPUT_WIDTHS["bias"](k)
    activation, loss = INPUT_WIDTHS["activation"](k), INPUT_WIDTHS["loss"](k)
    if sharing == "layer":
        rules = (
            stateless_rule_size(weight, k, True, False)
            + 2 * stateless_rule_size(weight, k, True, True)
            + 3 * stateless_rule_size(bias, k, True, True)
            + 2 * stateless_rule_size(activation, k, False, True)
            + stateless_rule_size(loss, k, False, True)
        )
    else:
        rules = (
            stateless_rule_size(weight, k, True, True)
            + stateless_rule_size(bias, k, True, True)
            + stateless_rule_size(activation, k, False, True)
            + stateless_rule_size(loss, k, False, True)
        )
    # One shift and one scale per feature part: weight and bias 3 parts, activation 2, loss 4.
    if sharing == "all":
        output_scales = 2
        frozen = 2 * (3 + 3 + 2 + 4) + output_scales
    else:
        output_scales = 6
        frozen = 2 * (3 * 3 + 3 * 3 + 2 * 2 + 4) + output_scales

    counts = counted(program)
    assert counts["rules"] == rules
    assert counts["output_scales"] == output_scales
    assert counts["frozen"] == frozen
    assert counts["trainable"] == rules + output_scales


@pytest.mark.parametrize("sharing", ["layer", "kind", "all"])
def test_stateful_counts(sharing: str) -> None:
    k, carry = MESSAGE_SIZE, 1 + HIDDEN_SIZE + MESSAGE_SIZE
    program = mplp.builders.mlp(
        COUNT_SIZES,
        learner=stateful(k, HIDDEN_SIZE, sharing=sharing),
        activation="tanh",
        loss="l2",
    )
    per_family = {
        family: stateful_rule_size(width(k), carry) for family, width in INPUT_WIDTHS.items()
    }
    if sharing == "layer":
        rules = sum(per_family[family] for _, family, _, _ in families(program))
    else:
        rules = sum(per_family[family] for family in ("weight", "bias", "activation", "loss"))

    counts = counted(program)
    assert counts["rules"] == rules
    assert counts["output_scales"] == (2 if sharing == "all" else 6)


def test_pass_gradient_counts() -> None:
    k = MESSAGE_SIZE
    program = mplp.builders.mlp(
        COUNT_SIZES,
        learner=stateless(k, sharing="kind", pass_gradient=True),
        activation="tanh",
        loss="l2",
    )
    # Messages get a gradient channel (k + 1 values) and parameter nodes also read their own
    # gradient; the rules still output k learned channels.
    weight = INPUT_WIDTHS["weight"](k + 1) + 1
    bias = INPUT_WIDTHS["bias"](k + 1) + 1
    activation = INPUT_WIDTHS["activation"](k + 1)
    rules = (
        stateless_rule_size(weight, k, True, True)
        + stateless_rule_size(bias, k, True, True)
        + stateless_rule_size(activation, k, False, True)
        + stateless_rule_size(INPUT_WIDTHS["loss"](k), k, False, True)
    )
    assert counted(program)["rules"] == rules


def test_sinusoid_counts() -> None:
    # 1-20-20-1 relu, l2 loss, stateful k = 8, hidden 15, one rule per group.
    program = mplp.builders.mlp(
        (1, 20, 20, 1), learner=stateful(8, 15, sharing="layer"), activation="relu", loss="l2"
    )
    carry = 1 + 15 + 8
    by_hand = (
        3 * stateful_rule_size(8 + 2, carry)  # dense
        + 3 * stateful_rule_size(8 + 2, carry)  # bias
        + 2 * stateful_rule_size(8 + 1, carry)  # relu
        + stateful_rule_size(4, carry)  # loss
    )
    counts = counted(program)
    assert by_hand == 115_832
    assert counts["rules"] == 115_832
    assert counts["output_scales"] == 6


def test_mnist_counts() -> None:
    # 144-50-10 sigmoid, softmax and cross-entropy, stateful k = 4, hidden 7, rules by kind.
    program = mplp.builders.mlp(
        (144, 50, 10),
        learner=stateful(4, 7, sharing="kind"),
        activation="sigmoid",
        loss="cross_entropy",
    )
    carry = 1 + 7 + 4
    by_hand = (
        stateful_rule_size(4 + 2, carry)  # weight
        + stateful_rule_size(4 + 2, carry)  # bias
        + stateful_rule_size(4 + 1, carry)  # sigmoid
        + stateful_rule_size(4 + 4, carry)  # softmax
        + stateful_rule_size(4, carry)  # loss
    )
    counts = counted(program)
    assert by_hand == 47_436
    assert counts["rules"] == 47_436
    assert counts["output_scales"] == 4


# pass_gradient.


def recording(learner: mplp.Learner) -> mplp.Learner:
    """Wrap ``learner`` so that each group reports its incoming message as a diagnostic."""

    def backward(
        params: dict, info: GroupInfo, fields: dict, message: jax.Array, aggregate: str
    ) -> tuple[dict, jax.Array, dict]:
        new_fields, message_out, aux = learner.backward(params, info, fields, message, aggregate)
        return new_fields, message_out, {**aux, "message_in": message}

    return learner._replace(backward=backward)


def test_pass_gradient_channel() -> None:
    batch, k = 3, MESSAGE_SIZE
    learner = stateless(k, sharing="kind", pass_gradient=True)
    program = sigmoid_network(recording(learner), init_std=0.5)
    learner_params = program.init_learner(jax.random.key(0))
    state = program.init(jax.random.key(1), batch)
    x, target = random_batch(2, (batch,), SIZES[0], SIZES[-1], "cross_entropy")

    step = jax.jit(program.step, compiler_options=FAST_COMPILE)
    _, metrics = step(learner_params, state, x, target)
    received = {group: metrics["learner"][group]["message_in"] for group in ("dense0", "dense1")}

    (w0, b0), (w1, b1) = mplp.builders.dense_layers(program, state)

    def losses(w1: jax.Array, offset0: jax.Array, offset1: jax.Array) -> jax.Array:
        # The offsets are added to the outputs of the two dense groups, so the gradient with
        # respect to an offset is the gradient with respect to that group's output.
        hidden = jax.nn.sigmoid(x @ w0 + offset0 + b0)
        probability = jax.nn.softmax(hidden @ w1 + offset1 + b1, axis=-1)
        clipped = jnp.clip(probability, 1e-7, 1.0 - 1e-7)
        return -(target * jnp.log(clipped)).sum(axis=-1)

    def total(w1: jax.Array, offset0: jax.Array, offset1: jax.Array) -> jax.Array:
        return losses(w1, offset0, offset1).sum()

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def reference_gradients() -> tuple[jax.Array, jax.Array, jax.Array]:
        zeros0, zeros1 = jnp.zeros((batch, SIZES[1])), jnp.zeros((batch, SIZES[2]))
        gradient0, gradient1 = jax.grad(total, argnums=(1, 2))(w1, zeros0, zeros1)
        # Row i of the Jacobian is the gradient of example i's loss.
        per_example_w1 = jax.jacrev(losses)(w1, zeros0, zeros1)
        return gradient0, gradient1, per_example_w1

    gradient0, gradient1, per_example_w1 = reference_gradients()

    assert learner.message_size == k + 1
    assert received["dense0"].shape == (batch, SIZES[1], k + 1)
    assert received["dense1"].shape == (batch, SIZES[2], k + 1)
    np.testing.assert_allclose(received["dense1"][..., -1], gradient1, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(received["dense0"][..., -1], gradient0, rtol=1e-4, atol=1e-7)
    # Weight nodes also read their own per-example gradient, as the feature part "gradient".
    np.testing.assert_allclose(
        metrics["learner"]["dense1"]["gradient/mean_square"],
        np.mean(np.square(per_example_w1)),
        rtol=1e-4,
    )


# Argument checks.

INVALID = [
    (stateless, {"message_size": 0}, "message_size 0"),
    (stateful, {"message_size": 0}, "message_size 0"),
    (stateful, {"hidden_size": -1}, "hidden_size -1"),
    (stateless, {"sharing": "foo"}, "sharing 'foo'"),
    (stateful, {"sharing": "foo"}, "sharing 'foo'"),
    (stateless, {"output_scale": -1}, "output_scale -1"),
    (stateful, {"output_scale": -1}, "output_scale -1"),
]


@pytest.mark.parametrize(("factory", "arguments", "text"), INVALID)
def test_invalid_arguments(
    factory: Callable[..., mplp.Learner], arguments: dict, text: str
) -> None:
    with pytest.raises(mplp.GraphError, match=re.escape(text)):
        factory(**arguments)


def test_default_output_scale() -> None:
    # 0.2 times the standard deviation 0.05 of the weight initialisation.
    assert pytest.approx(0.01) == DEFAULT_OUTPUT_SCALE
