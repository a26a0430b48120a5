"""Inspect graphs: JSON files, a one-screen text summary and a PNG drawing.

`save_graph` and `load_graph` store a `Graph` as the JSON of its pydantic schema, so a file
loads back into an equal graph. `summary` lists the groups and arrows of a graph or compiled
program as text, and `draw` renders the multigraph with matplotlib's Agg backend: groups are
laid out left to right by their topological generation along forward arrows.

None of these functions validates the graph the way `compile_graph` does, so they also help to
look at a graph that does not compile yet. Node kinds that are not registered are shown
without a parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import networkx as nx
from pydantic import ValidationError

from mplp.graphcore.compiler import Program
from mplp.graphcore.errors import GraphError
from mplp.graphcore.graph import to_networkx
from mplp.graphcore.kinds import NodeKind, get_kind
from mplp.graphcore.schema import Graph, Group, check_unique_names

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ARROW_COLORS = {"forward": "tab:blue", "backward": "tab:red", "reflexive": "tab:green"}
"""Matplotlib colour of each arrow kind in `draw`."""

FAMILY_COLORS = {
    "input": "#d9d9d9",
    "weight": "#fdd0a2",
    "bias": "#fff2ae",
    "activation": "#c6dbef",
    "softmax": "#dadaeb",
    "loss": "#fbb4b9",
}
"""Fill colour of each node family in `draw`; other families and unknown kinds are grey."""

OTHER_FAMILY_COLOR = "#f0f0f0"

# Curvature of the first, second, ... arrow between one ordered pair of groups. A forward arrow
# and its backward mirror go in opposite directions, so the same curvature bends them to
# opposite sides and they are drawn as two separate curves.
_CURVATURES = ("arc3,rad=0.18", "arc3,rad=0.36", "arc3,rad=0.54")
_NODE_SIZE = 2600


def save_graph(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` as indented JSON and return the path.

    `load_graph` reads the file back into a graph equal to ``graph``.
    """
    target = Path(path)
    target.write_text(graph.to_json() + "\n", encoding="utf-8")
    return target


def load_graph(path: str | Path) -> Graph:
    """Read a graph from a JSON file written by `save_graph` or `Graph.to_json`.

    The file is checked against the schema only; `compile_graph` checks the structure.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        GraphError: if the file is not a valid graph document. The message names the file and
            the first invalid field.
    """
    source = Path(path)
    text = source.read_text(encoding="utf-8")
    try:
        return Graph.from_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "top level"
        raise GraphError(
            f"graph file {source} is invalid at {location}: {first['msg']}; "
            "write graph files with mplp.save_graph"
        ) from None


def summary(graph_or_program: Graph | Program, kinds: Mapping[str, NodeKind] | None = None) -> str:
    """Describe a graph or a compiled program as a text table that fits on one screen.

    The text lists every group with its kind, family, node shape, node count and parameter
    count, every arrow with its kind, ``source -> target``, connection (forward arrows) and
    aggregate (backward arrows), and the totals. For a `Program` it also names the learner,
    its message size, its number of parameters and the groups that learn in the backward pass.

    Args:
        graph_or_program: The graph, or a program compiled from one.
        kinds: Node kinds to use in addition to the registered ones, by name (as in
            `compile_graph`). Ignored for a program, which already contains its kinds.
    """
    if isinstance(graph_or_program, Program):
        program: Program | None = graph_or_program
        graph = graph_or_program.graph
        resolved = dict(graph_or_program.kinds)
    else:
        program = None
        graph = graph_or_program
        resolved = _known_kinds(graph, kinds)

    counts = {"forward": 0, "backward": 0, "reflexive": 0}
    for arrow in graph.arrows:
        counts[arrow.kind] += 1
    lines = [
        f"Graph: {len(graph.groups)} groups, {len(graph.arrows)} arrows "
        f"({counts['forward']} forward, {counts['backward']} backward, "
        f"{counts['reflexive']} reflexive)",
        "",
        "Groups:",
    ]

    group_rows = []
    total_nodes = 0
    total_parameters = 0
    unknown = []
    for group in graph.groups:
        kind = resolved.get(group.name)
        nodes = math.prod(group.shape)
        parameters = _parameter_count(kind, group) if kind is not None else None
        total_nodes += nodes
        if parameters is None:
            unknown.append(group.name)
        else:
            total_parameters += parameters
        group_rows.append(
            [
                group.name,
                group.kind,
                kind.family if kind is not None else "?",
                str(group.shape),
                str(nodes),
                "?" if parameters is None else str(parameters),
            ]
        )
    lines += _table(
        ["name", "kind", "family", "shape", "nodes", "parameters"],
        group_rows,
        right_aligned={4, 5},
    )

    lines += ["", "Arrows:"]
    # Only forward arrows use `connection` and only backward arrows use `aggregate`.
    arrow_rows = [
        [
            arrow.name,
            arrow.kind,
            f"{arrow.source} -> {arrow.target}",
            arrow.connection if arrow.kind == "forward" else "-",
            arrow.aggregate if arrow.kind == "backward" else "-",
        ]
        for arrow in graph.arrows
    ]
    lines += _table(["name", "kind", "source -> target", "connection", "aggregate"], arrow_rows)

    lines += ["", f"Total: {total_nodes} nodes, {total_parameters} parameters"]
    if unknown:
        lines.append(
            "Parameters not counted (kind unknown or invalid for the group): " + ", ".join(unknown)
        )
    if program is not None:
        lines += _program_lines(program)
    return "\n".join(lines)


def layered_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Place each group for a left-to-right drawing, keyed by group name.

    The x coordinate is the group's topological generation along forward arrows (0 for groups
    without incoming forward arrows, such as the input), and the groups of one generation are
    stacked along y, centred on 0, in the order of ``graph.groups``.

    Raises:
        GraphError: if the forward arrows form a cycle or an arrow names an unknown group.
    """
    _check_endpoints(graph)
    forward = nx.DiGraph()
    forward.add_nodes_from(group.name for group in graph.groups)
    forward.add_edges_from(
        (arrow.source, arrow.target) for arrow in graph.arrows if arrow.kind == "forward"
    )
    try:
        generations = list(nx.topological_generations(forward))
    except nx.NetworkXUnfeasible:
        raise GraphError(
            "forward arrows form a cycle, so the graph has no left-to-right layout: "
            "run mplp.validate_graph to find the cycle"
        ) from None

    order = {group.name: index for index, group in enumerate(graph.groups)}
    positions = {}
    for column, names in enumerate(generations):
        stacked = sorted(names, key=order.__getitem__)
        middle = (len(stacked) - 1) / 2
        for row, name in enumerate(stacked):
            positions[name] = (float(column), middle - row)
    return positions


def draw(
    graph_or_program: Graph | Program,
    path: str | Path,
    *,
    kinds: Mapping[str, NodeKind] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw the graph as a PNG file and return its path.

    Groups are nodes, labelled with their name, kind and shape and filled by the family of
    their kind. Arrows are coloured by kind (see `ARROW_COLORS`). A forward arrow and the
    backward arrow between the same two groups are drawn as two curves, and reflexive arrows
    as loops on their group. The layout is `layered_positions`.

    Args:
        graph_or_program: The graph, or a program compiled from one.
        path: The PNG file to write; its folder must exist.
        kinds: Node kinds to use in addition to the registered ones, for the fill colours.
        title: Text above the drawing.
        dpi: Resolution of the PNG in dots per inch.

    Raises:
        GraphError: if the graph has no layout (see `layered_positions`).
    """
    figure = _render(graph_or_program, kinds, title, dpi)
    target = Path(path)
    figure.savefig(target, format="png")
    return target


def _render(
    graph_or_program: Graph | Program,
    kinds: Mapping[str, NodeKind] | None,
    title: str | None,
    dpi: int,
) -> Figure:
    """Build the matplotlib figure that `draw` saves."""
    # matplotlib is imported here so that `import mplp` does not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if isinstance(graph_or_program, Program):
        graph = graph_or_program.graph
        resolved = dict(graph_or_program.kinds)
    else:
        graph = graph_or_program
        resolved = _known_kinds(graph, kinds)

    positions = layered_positions(graph)
    multigraph = to_networkx(graph)
    columns = 1 + max(int(x) for x, _ in positions.values())
    rows = max(sum(1 for x, _ in positions.values() if x == column) for column in range(columns))

    figure = Figure(figsize=(max(6.0, 1.7 * columns), max(3.0, 1.4 * rows + 1.0)), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    node_names = [group.name for group in graph.groups]
    fill = [_family_color(resolved.get(name)) for name in node_names]
    nx.draw_networkx_nodes(
        multigraph,
        positions,
        nodelist=node_names,
        node_color=fill,
        node_size=_NODE_SIZE,
        edgecolors="#636363",
        ax=axes,
    )
    labels = {group.name: f"{group.name}\n{group.kind}\n{group.shape}" for group in graph.groups}
    nx.draw_networkx_labels(multigraph, positions, labels=labels, font_size=7, ax=axes)

    edges = [edge for edge in multigraph.edges(keys=True, data="kind") if edge[0] != edge[1]]
    if edges:
        nx.draw_networkx_edges(
            multigraph,
            positions,
            edgelist=[(source, target, key) for source, target, key, _ in edges],
            edge_color=[ARROW_COLORS[kind] for *_, kind in edges],
            connectionstyle=list(_CURVATURES),
            node_size=_NODE_SIZE,
            arrowsize=12,
            width=1.4,
            ax=axes,
        )

    loops: dict[str, int] = {}
    for arrow in graph.arrows:
        if arrow.kind == "reflexive":
            loops[arrow.source] = loops.get(arrow.source, 0) + 1
            _draw_loop(figure, axes, positions[arrow.source], loops[arrow.source])

    handles = [
        Line2D([0], [0], color=color, linewidth=2, label=f"{kind} arrow")
        for kind, color in ARROW_COLORS.items()
    ]
    axes.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    if title:
        axes.set_title(title)
    axes.margins(x=0.12, y=0.25)
    axes.set_axis_off()
    figure.tight_layout()
    return figure


def _draw_loop(figure: Figure, axes: Axes, center: tuple[float, float], number: int) -> None:
    """Draw the ``number``-th reflexive arrow of a group as a loop over its node.

    networkx sizes self-loops by the extent of the whole drawing, which hides them under large
    nodes, so the loop is drawn here in inches relative to the node's centre.
    """
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.transforms import ScaledTranslation

    radius = math.sqrt(_NODE_SIZE) / 2 / 72  # marker area in points squared, to inches
    # Coordinates in inches from the node's centre. ScaledTranslation only calls `transform` on
    # its third argument, and the linear transData of these axes supports that. The type stubs
    # of matplotlib 3.11 ask for an affine transform, hence the ignore.
    offset = ScaledTranslation(*center, axes.transData)  # type: ignore[arg-type]
    at_node = figure.dpi_scale_trans + offset
    half_width = 0.1 + 0.04 * number
    loop = FancyArrowPatch(
        (-half_width, 0.8 * radius),
        (half_width, 0.8 * radius),
        # A negative arc3 radius bends the path to the left of its direction: upwards here.
        connectionstyle=f"arc3,rad={-1.6 - 0.5 * number}",
        arrowstyle="-|>",
        mutation_scale=12,
        linewidth=1.4,
        color=ARROW_COLORS["reflexive"],
        transform=at_node,
        zorder=3,
        clip_on=False,
    )
    axes.add_patch(loop)


def _known_kinds(graph: Graph, extra: Mapping[str, NodeKind] | None) -> dict[str, NodeKind]:
    """Return the kinds of the groups whose kind is registered or in ``extra``."""
    resolved = {}
    for group in graph.groups:
        try:
            resolved[group.name] = get_kind(group.kind, extra)
        except GraphError:
            continue
    return resolved


def _parameter_count(kind: NodeKind, group: Group) -> int | None:
    """Count the parameters that ``kind`` creates for ``group``, or None if it rejects it."""
    try:
        shapes = jax.eval_shape(lambda key: kind.init_params(key, group), jax.random.key(0))
    except GraphError:
        return None
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _program_lines(program: Program) -> list[str]:
    learner = program.learner
    shapes = jax.eval_shape(program.init_learner, jax.random.key(0))
    learner_parameters = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    learning = [info.group.name for info in program.learning_groups]
    return [
        f"Learner: {learner.name}, message size {learner.message_size}, "
        f"{learner_parameters} learner parameters",
        f"Backward pass ({len(learning)} groups, in order): {', '.join(learning)}",
    ]


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: set[int] | None = None
) -> list[str]:
    """Format rows as columns padded to their widest cell, indented by two spaces."""
    right = right_aligned or set()
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def format_row(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(padded)).rstrip()

    return [format_row(headers), *(format_row(row) for row in rows)]


def _family_color(kind: NodeKind | None) -> str:
    if kind is None:
        return OTHER_FAMILY_COLOR
    return FAMILY_COLORS.get(kind.family, OTHER_FAMILY_COLOR)


def _check_endpoints(graph: Graph) -> None:
    check_unique_names(graph)
    names = {group.name for group in graph.groups}
    for arrow in graph.arrows:
        for end in (arrow.source, arrow.target):
            if end not in names:
                raise GraphError(
                    f"arrow '{arrow.name}' names '{end}', which is not a group of the graph"
                )
