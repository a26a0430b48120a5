"""The learner interface: what graphcore calls in the backward pass of each group.

A learner is a bundle of pure functions (like a node kind), so the compiled program stays a pure
function of (learner parameters, network state, data) and can be differentiated with respect to
the learner parameters (meta-training) or vmapped over an outer batch of tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax

from mplp.graphcore.kinds import Fields, NodeKind
from mplp.graphcore.schema import Group

Array = jax.Array
LearnerParams = Any  # a pytree of arrays, structured by each learner


class GroupInfo(NamedTuple):
    """Static description of one group as a learner sees it.

    ``parameters`` names the group's trainable fields (those the kind's ``init_params``
    returns), in order. ``sends_messages`` is False when no backward arrow leaves the group
    (e.g. the first layer), so its outgoing message is dropped.
    """

    group: Group
    kind: NodeKind
    parameters: tuple[str, ...] = ()
    sends_messages: bool = True


class Learner(NamedTuple):
    """A learning rule for every group of a graph.

    Attributes:
        name: Short name shown in summaries, e.g. ``gradient`` or ``stateful``.
        message_size: Width ``k`` of the messages that groups send upstream.
        init: ``(key, groups) -> params``: the learner's own (meta-)parameters for the groups
            that take part in the backward pass.
        init_carry: ``(info, batch_size) -> array or None``: the recurrent state of one group,
            shape ``(B, *node, carry)``, or None for stateless learners.
        backward: ``(params, info, fields, message, aggregate) -> (fields, message_out, aux)``.
            ``fields`` holds the group's state (parameters, stored forward input and target,
            carry); ``message`` has shape ``(B, *out, k)`` (``(B, *in, 1)`` for a loss group,
            which is seeded with its own per-element loss). It returns the updated fields, the
            message for the upstream groups, shape ``(B, *in, k)``, combined over each upstream
            node's fan-out with ``aggregate``, and a dict of diagnostics.
        default_aggregate: The aggregation that builders use with this learner.
        exact_gradient: True when messages are exact gradients; then every backward arrow
            must aggregate with ``sum`` for the messages to stay exact.
        options: The settings the learner was built with (e.g. ``sharing``), for inspection,
            checkpoints and tools that need them.
    """

    name: str
    message_size: int
    init: Callable[[Array, Sequence[GroupInfo]], LearnerParams]
    init_carry: Callable[[GroupInfo, int], Array | None]
    backward: Callable[
        [LearnerParams, GroupInfo, Fields, Array, str], tuple[Fields, Array, dict[str, Array]]
    ]
    default_aggregate: str = "mean"
    exact_gradient: bool = False
    options: Mapping[str, Any] = MappingProxyType({})
