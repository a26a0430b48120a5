"""Learned MPLP rules as learners: standardisation, output scaling and parameter sharing.

In the backward pass each node reads its features (incoming message, parameter, stored forward
values; see each node kind's ``features``), standardises each feature part with a frozen scalar
shift and scale, and runs its rule. The rule's update output ``f`` becomes the parameter change
``mean_batch((f - out_mean) * out_scale)`` (MPLP eq. 3-4, with the output centring and scaling of
the paper's normalisation section), and its message output ``g`` is combined over each upstream
node's fan-out (eq. 5 with the mean).

Learner parameters are a dict with three entries:

- ``rules``: ``{slot: rule parameters}``, meta-trained;
- ``standardisers``: ``{slot: {part: {"shift", "scale"}}}``, frozen statistics (set by
  `mplp.learners.calibrate`, held constant by `jax.lax.stop_gradient`);
- ``outputs``: ``{slot: {"mean", "scale"}}`` for groups with parameters: ``mean`` is frozen,
  ``scale`` is meta-trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, GraphError, GroupInfo, Learner, LearnerParams
from mplp.learners import rules
from mplp.nodes import DEFAULT_INIT_STD

Array = jax.Array
Sharing = Literal["layer", "kind", "all"]
SHARING_MODES = ("layer", "kind", "all")

DEFAULT_OUTPUT_SCALE = 0.2 * DEFAULT_INIT_STD
"""Initial output scale: 0.2 times the weight initialisation's standard deviation."""

GRADIENT_PART = "gradient"
"""Feature part holding the exact per-node gradient, when a learner passes gradients."""

STD_FLOOR = 1e-5
"""A measured standard deviation below this is replaced by a scale of 1."""


class RuleSpec(NamedTuple):
    """The rule family of a learned learner (stateless MLPs or the stateful cell)."""

    name: str
    init: Callable[[Array, int, int, bool, bool], Any]
    carry_size: int | None
    apply: Callable[[Any, Sequence[Array], Array | None, tuple[int, ...]], rules.RuleOutput]


def rule_slot(info: GroupInfo, sharing: str) -> str:
    """Name of the rule that ``info``'s group uses: its own, or its family's when shared."""
    return info.group.name if sharing == "layer" else info.kind.family


def standardiser_slot(info: GroupInfo, sharing: str) -> str:
    """Name of the standardiser (and output scaling) that ``info``'s group uses."""
    return info.kind.family if sharing == "all" else info.group.name


def feature_sizes(info: GroupInfo, message_size: int, pass_gradient: bool) -> dict[str, int]:
    """The named input parts of ``info``'s rule, in order, with their widths."""
    sizes = dict(info.kind.feature_sizes(message_size))
    if pass_gradient and info.kind.update_field is not None:
        sizes[GRADIENT_PART] = 1
    return sizes


def learned_learner(
    spec: RuleSpec,
    *,
    message_size: int,
    sharing: Sharing = "layer",
    output_scale: float = DEFAULT_OUTPUT_SCALE,
    pass_gradient: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Learner:
    """Build a learner around a rule family; see `stateless` and `stateful`.

    With ``pass_gradient`` every message gets one more channel holding the exact gradient
    (computed with `jax.vjp` as in the gradient learner), and parameter nodes also read their
    own per-example gradient: the combination the MPLP paper suggests as a next step.

    NOTE: the gradient channel is exact only where each group receives messages over one
    backward arrow or over arrows that aggregate with ``sum``. With ``mean`` the program
    averages the gradients of several senders instead of adding them.
    """
    _check_positive_int("message_size", message_size)
    if sharing not in SHARING_MODES:
        raise GraphError(f"sharing '{sharing}' is invalid; choose one of: {SHARING_MODES}")
    if not output_scale >= 0:
        raise GraphError(f"output_scale {output_scale} is invalid: pass a number >= 0")

    learned_size = message_size
    total_size = message_size + 1 if pass_gradient else message_size

    def init(key: Array, groups: Sequence[GroupInfo]) -> LearnerParams:
        # A shared rule gets an update output when any of its groups has parameters, and a
        # message output when any of them sends messages, whichever group comes first.
        slot_updates: dict[str, bool] = {}
        slot_messages: dict[str, bool] = {}
        for info in groups:
            slot = rule_slot(info, sharing)
            has_update = info.kind.update_field is not None
            slot_updates[slot] = slot_updates.get(slot, False) or has_update
            slot_messages[slot] = slot_messages.get(slot, False) or info.sends_messages

        rule_params: dict[str, Any] = {}
        standardisers: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for info in groups:
            sizes = feature_sizes(info, total_size, pass_gradient)
            has_update = info.kind.update_field is not None
            slot = rule_slot(info, sharing)
            if slot not in rule_params:
                key, rule_key = jax.random.split(key)
                rule_params[slot] = spec.init(
                    rule_key,
                    sum(sizes.values()),
                    learned_size,
                    slot_updates[slot],
                    slot_messages[slot],
                )
            std_slot = standardiser_slot(info, sharing)
            standardisers.setdefault(
                std_slot,
                {name: {"shift": _scalar(0.0), "scale": _scalar(1.0)} for name in sizes},
            )
            if has_update:
                outputs.setdefault(std_slot, {"mean": _scalar(0.0), "scale": _scalar(output_scale)})
        return {"rules": rule_params, "standardisers": standardisers, "outputs": outputs}

    def init_carry(info: GroupInfo, batch_size: int) -> Array | None:
        if spec.carry_size is None:
            return None
        return jnp.zeros((batch_size, *info.group.shape, spec.carry_size), jnp.float32)

    def backward(
        params: LearnerParams, info: GroupInfo, fields: Fields, message: Array, aggregate: str
    ) -> tuple[Fields, Array, dict[str, Array]]:
        kind = info.kind
        x, target = fields["input"], fields.get("target")
        weights = {name: fields[name] for name in info.parameters}
        leading = (x.shape[0], *info.group.shape)

        parts = dict(kind.features(weights, x, target, message))
        if pass_gradient:
            upstream_gradient, parameter_gradient = _exact_gradients(
                info, weights, x, target, message
            )
            if parameter_gradient is not None:
                parts[GRADIENT_PART] = parameter_gradient[..., None]

        standardisers = params["standardisers"][standardiser_slot(info, sharing)]
        standardiser = jax.lax.stop_gradient(standardisers)
        names = list(feature_sizes(info, total_size, pass_gradient))
        normalised = [
            (parts[name] - standardiser[name]["shift"]) / standardiser[name]["scale"]
            for name in names
        ]
        output = spec.apply(
            params["rules"][rule_slot(info, sharing)], normalised, fields.get("carry"), leading
        )

        new_fields = dict(fields)
        aux = _part_statistics(parts, names)
        if kind.update_field is not None:
            assert output.update is not None
            scaling = params["outputs"][standardiser_slot(info, sharing)]
            centred = output.update - jax.lax.stop_gradient(scaling["mean"])
            change = (centred * scaling["scale"]).mean(axis=0)
            new_fields[kind.update_field] = fields[kind.update_field] + change
            aux["update/mean"] = output.update.mean()
        if output.carry is not None:
            new_fields["carry"] = output.carry

        assert kind.reduce_message is not None
        message_out = kind.reduce_message(output.messages, aggregate)
        if pass_gradient:
            message_out = jnp.concatenate([message_out, upstream_gradient[..., None]], axis=-1)
        return new_fields, message_out, aux

    return Learner(
        name=spec.name,
        message_size=total_size,
        init=init,
        init_carry=init_carry,
        backward=backward,
        default_aggregate="mean",
        exact_gradient=False,
        options=MappingProxyType(
            {
                "message_size": message_size,
                "sharing": sharing,
                "output_scale": output_scale,
                "pass_gradient": pass_gradient,
                **(options or {}),
            }
        ),
    )


def stateless(
    message_size: int = 8,
    *,
    sharing: Sharing = "layer",
    output_scale: float = DEFAULT_OUTPUT_SCALE,
    pass_gradient: bool = False,
) -> Learner:
    """Build the stateless MPLP learner: separate MLPs f (update) and g (message).

    Both are 80-40 relu MLPs with a tanh output layer (1 unit for f, ``message_size`` for g),
    evaluated on every node; kinds without parameters have only g. Both are meta-trained.
    """
    spec = RuleSpec(
        name="stateless",
        init=rules.init_stateless,
        carry_size=None,
        apply=lambda params, parts, carry, leading: rules.apply_stateless(
            params, parts, leading, message_size
        ),
    )
    return learned_learner(
        spec,
        message_size=message_size,
        sharing=sharing,
        output_scale=output_scale,
        pass_gradient=pass_gradient,
    )


def stateful(
    message_size: int = 8,
    hidden_size: int = 15,
    *,
    sharing: Sharing = "layer",
    output_scale: float = DEFAULT_OUTPUT_SCALE,
    pass_gradient: bool = False,
) -> Learner:
    """Build the stateful MPLP learner: the GRU-like cell of MPLP eq. 6-8 on every node.

    Each node keeps a carry of ``1 + hidden_size + message_size`` channels per batch slot,
    starting at zero; channel 0 is read as the update and the last ``message_size`` channels
    as the message.
    """
    _check_positive_int("hidden_size", hidden_size)
    _check_positive_int("message_size", message_size)
    carry = rules.carry_size(hidden_size, message_size)

    def init(
        key: Array, input_size: int, learned_size: int, has_update: bool, has_message: bool
    ) -> Any:
        del learned_size, has_update, has_message  # the carry holds both outputs
        return rules.init_stateful(key, input_size, carry)

    def apply(
        params: Any, parts: Sequence[Array], carry_in: Array | None, leading: tuple[int, ...]
    ) -> rules.RuleOutput:
        del leading
        assert carry_in is not None
        return rules.apply_stateful(params, parts, carry_in, message_size)

    spec = RuleSpec(name="stateful", init=init, carry_size=carry, apply=apply)
    return learned_learner(
        spec,
        message_size=message_size,
        sharing=sharing,
        output_scale=output_scale,
        pass_gradient=pass_gradient,
        options={"hidden_size": hidden_size},
    )


def _exact_gradients(
    info: GroupInfo, weights: Fields, x: Array, target: Array | None, message: Array
) -> tuple[Array, Array | None]:
    """Return the exact upstream gradient ``(B, *in)`` and per-node, per-example parameter
    gradient ``(B, *node)`` (None without parameters), from the incoming gradient channel."""
    kind = info.kind

    def forward(weights: Fields, x: Array) -> Array:
        return kind.apply(weights, x, target)

    outputs, pullback = jax.vjp(forward, weights, x)
    cotangent = jnp.ones_like(outputs) if kind.is_loss else message[..., -1]
    _, upstream = pullback(cotangent)

    if kind.update_field is None:
        return upstream, None

    def example_gradient(x_one: Array, cotangent_one: Array) -> Array:
        # Only kinds with parameters get here, and loss kinds have none, so no target is needed.
        def one(weights: Fields) -> Array:
            return kind.apply(weights, x_one[None], None)[0]

        _, pull = jax.vjp(one, weights)
        return pull(cotangent_one)[0][kind.update_field]

    per_example = jax.vmap(example_gradient)(x, cotangent)
    return upstream, per_example


def _part_statistics(parts: dict[str, Array], names: Sequence[str]) -> dict[str, Array]:
    """Mean and mean square of each feature part, the inputs of `calibrate`.

    A broadcast part repeats each of its values equally often, so its statistics over the
    unbroadcast array equal those over the full ``(B, *node, width)`` input.
    """
    statistics = {}
    for name in names:
        part = jax.lax.stop_gradient(parts[name])
        statistics[f"{name}/mean"] = part.mean()
        statistics[f"{name}/mean_square"] = jnp.square(part).mean()
    return statistics


def _scalar(value: float) -> Array:
    return jnp.asarray(value, jnp.float32)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraphError(f"{name} {value!r} is invalid: pass a positive integer")
