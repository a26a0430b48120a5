"""Pydantic schemas for node groups, arrows and graphs.

A graph is a set of vectorised node groups (one group is many nodes of one kind, e.g. a dense
weight group of shape ``(in, out)`` holds ``in * out`` synapse nodes) connected by named arrows.
The schemas are plain data: they serialise to JSON and back exactly, and they carry no arrays.
Structural checks that need the node kinds (shapes, connections) live in `graphcore.graph`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mplp.graphcore.errors import GraphError

ArrowKind = Literal["forward", "backward", "reflexive"]
Connection = Literal["elementwise", "dense"]
Aggregate = Literal["mean", "sum"]
OptionValue = float | int | str | bool

_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-<>]*$"


class Group(BaseModel):
    """A vectorised group of nodes of one kind.

    Attributes:
        name: Unique name of the group in its graph.
        kind: Name of a registered node kind (see `graphcore.kinds.register_kind`).
        shape: Node shape of the group, e.g. ``(in, out)`` for dense weights or ``(n,)`` for an
            activation layer. Every entry is a positive integer.
        options: Kind-specific settings such as the initial weight scale.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    kind: str
    shape: tuple[int, ...]
    options: dict[str, OptionValue] = Field(default_factory=dict)

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or any(size < 1 for size in shape):
            raise ValueError(f"shape {shape} is invalid: give one or more positive sizes")
        return shape


class Arrow(BaseModel):
    """A named, directed connection between two groups, or a reflexive one on one group.

    Attributes:
        name: Unique name of the arrow in its graph.
        kind: ``forward`` carries values in the forward pass, ``backward`` carries messages
            from ``source`` back to ``target`` and must mirror a forward arrow from ``target``
            to ``source``, ``reflexive`` updates the state of one group (``source == target``)
            once per learning step, after that group's backward pass.
        source: Name of the sending group.
        target: Name of the receiving group.
        connection: How source nodes map onto target nodes. ``elementwise``: node ``i`` feeds
            node ``i``. ``dense``: node ``i`` feeds every node ``(i, j)`` of the target, which
            reduces over ``i`` (a dense layer). It must match the target kind's connection.
        aggregate: How messages that reach one node from its fan-out are combined: ``mean``
            (the MPLP default) or ``sum`` (what backpropagation does).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    kind: ArrowKind
    source: str
    target: str
    connection: Connection = "elementwise"
    aggregate: Aggregate = "mean"


def connect(
    source: str,
    target: str,
    *,
    connection: Connection = "elementwise",
    aggregate: Aggregate = "mean",
    backward: bool = True,
) -> tuple[Arrow, ...]:
    """Build a forward arrow and, unless ``backward`` is false, the backward arrow mirroring it.

    Returns the forward arrow ``source->target`` followed by the backward arrow
    ``target->source``, which carries messages from ``target`` back to ``source``, or the
    forward arrow alone when ``backward`` is false. Invalid names and values raise pydantic's
    ``ValidationError``, as constructing `Arrow` does.

    Args:
        source: Name of the group that sends values forward.
        target: Name of the group that receives them.
        connection: Connection of the forward arrow (see `Arrow`). Backward arrows keep the
            default, ``elementwise``.
        aggregate: Aggregate of the backward arrow (see `Arrow`).
        backward: Whether to add the backward arrow. Pass ``False`` for an arrow out of the
            input group, which has nothing to learn and must not receive messages.

    Example::

        arrows = (
            *connect("input", "dense0", connection="dense", backward=False),
            *connect("dense0", "bias0", aggregate="sum"),
            *connect("bias0", "loss", aggregate="sum"),
        )
    """
    forward_arrow = Arrow(
        name=f"{source}->{target}",
        kind="forward",
        source=source,
        target=target,
        connection=connection,
    )
    if not backward:
        return (forward_arrow,)

    backward_arrow = Arrow(
        name=f"{target}->{source}",
        kind="backward",
        source=target,
        target=source,
        aggregate=aggregate,
    )
    return (forward_arrow, backward_arrow)


class Graph(BaseModel):
    """A multigraph of node groups and arrows, serialisable to JSON.

    Constructing a `Graph` checks only field types; `graphcore.graph.validate_graph` checks the
    structure (names, shapes, cycles, arrow pairs) and runs when a program is compiled.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: tuple[Group, ...]
    arrows: tuple[Arrow, ...]

    def group(self, name: str) -> Group:
        """Return the group called ``name``, or raise `GraphError` listing the known groups."""
        for group in self.groups:
            if group.name == name:
                return group
        known = ", ".join(group.name for group in self.groups)
        raise GraphError(f"unknown group '{name}'; known groups: {known}")

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise the graph to a JSON string."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """Load a graph from a JSON string written by `to_json`."""
        return cls.model_validate_json(text)


def check_unique_names(graph: Graph) -> None:
    """Raise `GraphError` for a duplicate group or arrow name."""
    seen: set[str] = set()
    for group in graph.groups:
        if group.name in seen:
            raise GraphError(f"duplicate group name '{group.name}': give each group its own name")
        seen.add(group.name)

    seen_arrows: set[str] = set()
    for arrow in graph.arrows:
        if arrow.name in seen_arrows:
            raise GraphError(f"duplicate arrow name '{arrow.name}': give each arrow its own name")
        seen_arrows.add(arrow.name)
