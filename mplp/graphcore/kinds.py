"""Node kinds: the pure functions that give a group of nodes its behaviour.

A node kind is a bundle of small pure functions over one vectorised group, in the style of
``optax.GradientTransformation``. Graphcore calls them without knowing what they compute, so a
user adds a new kind by building a `NodeKind` and passing it to `register_kind`; nothing in
graphcore changes.

Shapes below use ``B`` for the batch, ``node`` for the group's node shape, ``in`` / ``out`` for
the per-example shapes of its forward input and output, and ``k`` for the message size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import jax

from mplp.graphcore.errors import GraphError
from mplp.graphcore.schema import Connection, Group

Array = jax.Array
Fields = dict[str, Array]
Role = Literal["parameter", "stored", "carry", "statistic", "state"]


class FieldSpec(NamedTuple):
    """Shape and role of one state field of a group.

    ``shape`` may start with the string ``"batch"``, which is replaced by the batch size when
    the state is initialised. Roles: ``parameter`` (updated by the learner), ``stored`` (written
    by the forward pass for the backward pass), ``carry`` (a learner's recurrent state),
    ``statistic`` (frozen statistics) and ``state`` (any other per-node state of the kind).
    """

    shape: tuple[int | str, ...]
    role: Role


def _no_extra_state(key: Array, group: Group) -> Fields:
    del key, group
    return {}


def _no_extra_fields(group: Group) -> dict[str, FieldSpec]:
    del group
    return {}


class NodeKind(NamedTuple):
    """The behaviour of a node kind, as pure functions of one group.

    Attributes:
        name: Registry name, used as ``Group.kind``.
        family: What the nodes are for learners that share rules by kind: ``weight``, ``bias``,
            ``activation``, ``softmax``, ``loss``, ``input`` or a user-defined word.
        connection: How a source group's nodes feed this kind's nodes (see `Arrow.connection`).
        input_shape: ``group -> in``, the per-example shape of the forward input.
        output_shape: ``group -> out``, the per-example shape of the forward output.
        init_params: ``(key, group) -> {name: array}``, the trainable parameters.
        apply: ``(params, x (B, *in), target) -> y (B, *out)``. ``target`` is the training
            target for loss kinds and None otherwise. A loss kind returns the per-element loss,
            shape ``(B, *in)``.
        feature_sizes: ``(message_size) -> {name: width}``, the named inputs that MPLP learners
            read, in a fixed order.
        features: ``(params, x, target, message (B, *out, k)) -> {name: array}`` with each array
            broadcastable to ``(B, *node, width)``. Keeping the parts separate lets a learner's
            first layer project each part once instead of materialising the concatenation.
        update_field: Parameter that a learner's per-node update is added to (shape ``node``),
            or None for kinds without parameters.
        reduce_message: ``(messages (B, *node, k), aggregate) -> (B, *in, k)``: combines the
            messages of nodes that share one upstream node (their fan-out).
        is_input: True for the kind that receives the program's input data.
        is_loss: True for loss kinds; their backward pass is seeded with their own output.
        target_shape: ``group -> shape`` of one example's target (loss kinds only).
        init_state: ``(key, group) -> {name: array}``, extra non-parameter fields.
        state_fields: ``group -> {name: FieldSpec}`` describing ``init_state``'s fields.
        reflexive: ``(group, fields) -> fields``, run by reflexive arrows once per step.
    """

    name: str
    family: str
    connection: Connection
    input_shape: Callable[[Group], tuple[int, ...]]
    output_shape: Callable[[Group], tuple[int, ...]]
    init_params: Callable[[Array, Group], Fields]
    apply: Callable[[Fields, Array, Array | None], Array]
    feature_sizes: Callable[[int], dict[str, int]]
    features: Callable[[Fields, Array, Array | None, Array], dict[str, Array]]
    update_field: str | None = None
    reduce_message: Callable[[Array, str], Array] | None = None
    is_input: bool = False
    is_loss: bool = False
    target_shape: Callable[[Group], tuple[int, ...]] | None = None
    init_state: Callable[[Array, Group], Fields] = _no_extra_state
    state_fields: Callable[[Group], dict[str, FieldSpec]] = _no_extra_fields
    reflexive: Callable[[Group, Fields], Fields] | None = None


_REGISTRY: dict[str, NodeKind] = {}


def register_kind(kind: NodeKind, *, replace: bool = False) -> NodeKind:
    """Add ``kind`` to the registry under ``kind.name`` and return it.

    Raises:
        GraphError: if the name is taken and ``replace`` is False.
    """
    if not isinstance(kind, NodeKind):
        raise GraphError(f"register_kind expects a NodeKind, got {type(kind).__name__}")
    if kind.name in _REGISTRY and not replace:
        raise GraphError(
            f"node kind '{kind.name}' is already registered: pick another name, "
            "or pass replace=True to overwrite it"
        )
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str, extra: Mapping[str, NodeKind] | None = None) -> NodeKind:
    """Look up a node kind by name, first in ``extra`` and then in the registry."""
    if extra is not None and name in extra:
        return extra[name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = ", ".join(sorted(set(_REGISTRY) | set(extra or {})))
    raise GraphError(
        f"unknown node kind '{name}'; known kinds: {known}. "
        "Register a new kind with mplp.register_kind first"
    )


def registered_kinds() -> dict[str, NodeKind]:
    """Return a copy of the registry, name to kind."""
    return dict(_REGISTRY)
