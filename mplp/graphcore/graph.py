"""Structural validation of a graph, its networkx view, and the static schedule.

The schedule is plain hashable Python data (tuples of names), so a compiled program treats it as
a compile-time constant: one learning step is a fixed sequence of vectorised group operations,
with no Python loop over individual nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import networkx as nx

from mplp.graphcore.errors import GraphError
from mplp.graphcore.kinds import NodeKind, get_kind
from mplp.graphcore.schema import Arrow, Graph, check_unique_names


class ForwardStep(NamedTuple):
    """One group's forward computation: its input is the sum of its sources' outputs."""

    group: str
    sources: tuple[str, ...]


class BackwardStep(NamedTuple):
    """One group's backward computation.

    Attributes:
        group: The group that receives messages, runs its learner and sends a message upstream.
        senders: Groups whose messages reach ``group`` through backward arrows, in arrow order.
        receivers: Groups that ``group`` sends its message to (through backward arrows).
        aggregate_in: How the messages from ``senders`` are combined (``mean`` or ``sum``).
        aggregate_out: How the group combines the messages of nodes that share one upstream
            node, taken from its outgoing backward arrows.
        reflexive: Reflexive arrows of ``group``, run right after its backward computation.
    """

    group: str
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    aggregate_in: str
    aggregate_out: str
    reflexive: tuple[str, ...]


class Schedule(NamedTuple):
    """The static order of one learning step: forward in topological order, then backward in
    reverse order, then the reflexive arrows of groups that the backward pass never reaches."""

    input_group: str
    loss_group: str
    output_group: str
    forward: tuple[ForwardStep, ...]
    backward: tuple[BackwardStep, ...]
    reflexive_only: tuple[tuple[str, str], ...]


def resolve_kinds(
    graph: Graph, extra_kinds: Mapping[str, NodeKind] | None = None
) -> dict[str, NodeKind]:
    """Return each group's node kind, keyed by group name."""
    resolved = {}
    for group in graph.groups:
        try:
            resolved[group.name] = get_kind(group.kind, extra_kinds)
        except GraphError as error:
            raise GraphError(f"group '{group.name}': {error}") from None
    return resolved


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Build the multigraph view: one node per group, one edge per arrow keyed by its name.

    Node attributes are the group's ``kind`` and ``shape``; edge attributes are the arrow's
    ``kind``, ``connection`` and ``aggregate``.
    """
    multigraph = nx.MultiDiGraph()
    for group in graph.groups:
        multigraph.add_node(group.name, kind=group.kind, shape=group.shape)
    for arrow in graph.arrows:
        multigraph.add_edge(
            arrow.source,
            arrow.target,
            key=arrow.name,
            kind=arrow.kind,
            connection=arrow.connection,
            aggregate=arrow.aggregate,
        )
    return multigraph


def validate_graph(
    graph: Graph, extra_kinds: Mapping[str, NodeKind] | None = None
) -> dict[str, NodeKind]:
    """Check the structure of ``graph`` and return each group's node kind.

    Raises:
        GraphError: naming the offending group or arrow and the fix, for duplicate names,
            unknown groups or kinds, misplaced reflexive arrows, connection or shape mismatches,
            cycles among forward arrows, backward arrows without a forward counterpart, and a
            graph without exactly one input group and one loss group.
    """
    check_unique_names(graph)
    kinds = resolve_kinds(graph, extra_kinds)
    names = set(kinds)

    for arrow in graph.arrows:
        _check_endpoints(arrow, names)
        _check_arrow(graph, arrow, kinds)

    _check_special_groups(graph, kinds)
    _check_forward_acyclic(graph)
    _check_backward_mirrors(graph)
    return kinds


def _check_endpoints(arrow: Arrow, names: set[str]) -> None:
    for end in ("source", "target"):
        name = getattr(arrow, end)
        if name not in names:
            known = ", ".join(sorted(names))
            raise GraphError(
                f"arrow '{arrow.name}' has {end} '{name}' which is not a group; "
                f"known groups: {known}"
            )


def _check_arrow(graph: Graph, arrow: Arrow, kinds: Mapping[str, NodeKind]) -> None:
    if arrow.kind == "reflexive":
        if arrow.source != arrow.target:
            raise GraphError(
                f"reflexive arrow '{arrow.name}' goes from '{arrow.source}' to "
                f"'{arrow.target}': a reflexive arrow must start and end at the same group"
            )
        if kinds[arrow.source].reflexive is None:
            raise GraphError(
                f"reflexive arrow '{arrow.name}' is on group '{arrow.source}' whose kind "
                f"'{kinds[arrow.source].name}' defines no reflexive function"
            )
        return

    if arrow.source == arrow.target:
        raise GraphError(
            f"{arrow.kind} arrow '{arrow.name}' starts and ends at '{arrow.source}': "
            "use kind 'reflexive' for an arrow from a group to itself"
        )
    if arrow.kind == "backward":
        if kinds[arrow.target].is_input:
            raise GraphError(
                f"backward arrow '{arrow.name}' ends at input group '{arrow.target}', which "
                "has no state for a learner to update: remove the arrow"
            )
        return

    source_kind, target_kind = kinds[arrow.source], kinds[arrow.target]
    if target_kind.is_input:
        raise GraphError(
            f"forward arrow '{arrow.name}' ends at input group '{arrow.target}': "
            "input groups receive the program's data and take no forward arrows"
        )
    if arrow.connection != target_kind.connection:
        raise GraphError(
            f"forward arrow '{arrow.name}' has connection '{arrow.connection}' but its target "
            f"'{arrow.target}' of kind '{target_kind.name}' takes '{target_kind.connection}': "
            f"set connection='{target_kind.connection}'"
        )
    produced = source_kind.output_shape(graph.group(arrow.source))
    expected = target_kind.input_shape(graph.group(arrow.target))
    if produced != expected:
        raise GraphError(
            f"shape mismatch on forward arrow '{arrow.name}': '{arrow.source}' outputs "
            f"{produced} per example but '{arrow.target}' expects {expected}; "
            "make the group shapes agree"
        )


def _check_special_groups(graph: Graph, kinds: Mapping[str, NodeKind]) -> None:
    inputs = [name for name, kind in kinds.items() if kind.is_input]
    losses = [name for name, kind in kinds.items() if kind.is_loss]
    if len(inputs) != 1:
        raise GraphError(f"a graph needs exactly one input group, found {len(inputs)}: {inputs}")
    if len(losses) != 1:
        raise GraphError(f"a graph needs exactly one loss group, found {len(losses)}: {losses}")

    forward = [arrow for arrow in graph.arrows if arrow.kind == "forward"]
    fed = {arrow.target for arrow in forward}
    for name, kind in kinds.items():
        if not kind.is_input and name not in fed:
            raise GraphError(
                f"group '{name}' has no incoming forward arrow: connect it to the graph "
                "or remove it"
            )

    loss = losses[0]
    into_loss = [arrow for arrow in forward if arrow.target == loss]
    if len(into_loss) != 1:
        raise GraphError(
            f"loss group '{loss}' must have exactly one incoming forward arrow, "
            f"found {len(into_loss)}"
        )
    out_of_loss = [arrow.name for arrow in forward if arrow.source == loss]
    if out_of_loss:
        raise GraphError(
            f"loss group '{loss}' ends the forward pass but has outgoing forward arrows "
            f"{out_of_loss}: remove them"
        )


def _check_forward_acyclic(graph: Graph) -> None:
    forward = nx.DiGraph()
    forward.add_nodes_from(group.name for group in graph.groups)
    forward.add_edges_from(
        (arrow.source, arrow.target) for arrow in graph.arrows if arrow.kind == "forward"
    )
    try:
        cycle = nx.find_cycle(forward)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise GraphError(f"forward arrows form a cycle {path}: the forward pass must be acyclic")


def _check_backward_mirrors(graph: Graph) -> None:
    forward_pairs: dict[tuple[str, str], str] = {}
    for arrow in graph.arrows:
        if arrow.kind != "forward":
            continue
        pair = (arrow.source, arrow.target)
        if pair in forward_pairs:
            # The forward pass would add the source twice while the backward pass sends one
            # message per arrow pair, so the two passes would disagree.
            raise GraphError(
                f"forward arrows '{forward_pairs[pair]}' and '{arrow.name}' both go from "
                f"'{arrow.source}' to '{arrow.target}': keep one of them"
            )
        forward_pairs[pair] = arrow.name
    for arrow in graph.arrows:
        if arrow.kind == "backward" and (arrow.target, arrow.source) not in forward_pairs:
            raise GraphError(
                f"backward arrow '{arrow.name}' from '{arrow.source}' to '{arrow.target}' "
                f"mirrors no forward arrow: add a forward arrow from '{arrow.target}' to "
                f"'{arrow.source}' or remove it"
            )


def build_schedule(graph: Graph, kinds: Mapping[str, NodeKind]) -> Schedule:
    """Derive the static schedule of one learning step from a validated graph."""
    forward_arrows = [arrow for arrow in graph.arrows if arrow.kind == "forward"]
    backward_arrows = [arrow for arrow in graph.arrows if arrow.kind == "backward"]
    reflexive_arrows = [arrow for arrow in graph.arrows if arrow.kind == "reflexive"]

    dependency = nx.DiGraph()
    dependency.add_nodes_from(group.name for group in graph.groups)
    dependency.add_edges_from((arrow.source, arrow.target) for arrow in forward_arrows)
    order = tuple(nx.lexicographical_topological_sort(dependency))

    forward = tuple(
        ForwardStep(name, tuple(a.source for a in forward_arrows if a.target == name))
        for name in order
        if not kinds[name].is_input
    )

    input_group = next(name for name in order if kinds[name].is_input)
    loss_group = next(name for name in order if kinds[name].is_loss)
    output_group = next(a.source for a in forward_arrows if a.target == loss_group)

    backward = []
    for name in reversed(order):
        incoming = [arrow for arrow in backward_arrows if arrow.target == name]
        outgoing = [arrow for arrow in backward_arrows if arrow.source == name]
        if not incoming and not kinds[name].is_loss:
            continue
        backward.append(
            BackwardStep(
                group=name,
                senders=tuple(arrow.source for arrow in incoming),
                receivers=tuple(arrow.target for arrow in outgoing),
                aggregate_in=_common_aggregate(name, incoming, "incoming"),
                aggregate_out=_common_aggregate(name, outgoing, "outgoing"),
                reflexive=tuple(a.name for a in reflexive_arrows if a.source == name),
            )
        )

    reached = {step.group for step in backward}
    reflexive_only = tuple(
        (arrow.source, arrow.name) for arrow in reflexive_arrows if arrow.source not in reached
    )
    return Schedule(
        input_group=input_group,
        loss_group=loss_group,
        output_group=output_group,
        forward=forward,
        backward=tuple(backward),
        reflexive_only=reflexive_only,
    )


def _common_aggregate(group: str, arrows: list[Arrow], direction: str) -> str:
    modes = {arrow.aggregate for arrow in arrows}
    if len(modes) > 1:
        names = ", ".join(f"'{arrow.name}' ({arrow.aggregate})" for arrow in arrows)
        raise GraphError(
            f"the {direction} backward arrows of group '{group}' mix aggregations: {names}; "
            "give them the same aggregate"
        )
    return modes.pop() if modes else "mean"
