"""Graph validation, the builder's argument checks, JSON round trips, the networkx view and the
static schedule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import mplp
from helpers import backward_arrow as backward
from helpers import forward_arrow as forward
from helpers import residual_graph
from mplp import Arrow, Graph, Group
from mplp.graphcore import build_schedule, to_networkx, validate_graph

GRADIENT = mplp.learners.gradient(0.1)


def base_groups() -> list[Group]:
    """Groups of a valid one-layer network: input(3) -> dense(3, 4) -> bias(4) -> l2 loss."""
    return [
        Group(name="input", kind="input", shape=(3,)),
        Group(name="dense", kind="dense", shape=(3, 4)),
        Group(name="bias", kind="bias", shape=(4,)),
        Group(name="loss", kind="l2", shape=(4,)),
    ]


def base_arrows() -> list[Arrow]:
    return [
        forward("input", "dense", "dense"),
        forward("dense", "bias"),
        forward("bias", "loss"),
        backward("loss", "bias"),
        backward("bias", "dense"),
    ]


def compile_with(groups: list[Group], arrows: list[Arrow]) -> mplp.Program:
    return mplp.compile_graph(Graph(groups=tuple(groups), arrows=tuple(arrows)), GRADIENT)


def assert_graph_error(groups: list[Group], arrows: list[Arrow], message: str) -> None:
    with pytest.raises(mplp.GraphError, match=message) as raised:
        compile_with(groups, arrows)
    # A pydantic ValidationError is also a ValueError, so check the exact type.
    assert type(raised.value) is mplp.GraphError


def test_base_graph_compiles() -> None:
    program = compile_with(base_groups(), base_arrows())

    assert program.schedule.input_group == "input"
    assert program.schedule.loss_group == "loss"
    assert program.schedule.output_group == "bias"


# Names and endpoints.


def test_unknown_group_in_arrow() -> None:
    arrows = [*base_arrows(), forward("bias", "ghost", name="to-ghost")]

    assert_graph_error(base_groups(), arrows, "arrow 'to-ghost' has target 'ghost' which is not")


def test_unknown_source_group() -> None:
    arrows = [*base_arrows(), backward("ghost", "bias", name="from-ghost")]

    assert_graph_error(base_groups(), arrows, "arrow 'from-ghost' has source 'ghost'")


def test_duplicate_group_name() -> None:
    groups = [*base_groups(), Group(name="bias", kind="relu", shape=(4,))]

    assert_graph_error(groups, base_arrows(), "duplicate group name 'bias'")


def test_duplicate_arrow_name() -> None:
    arrows = [*base_arrows(), backward("bias", "dense", name="loss->bias")]

    assert_graph_error(base_groups(), arrows, "duplicate arrow name 'loss->bias'")


def test_unknown_node_kind() -> None:
    groups = [*base_groups(), Group(name="mystery", kind="no_such_kind", shape=(4,))]

    assert_graph_error(groups, base_arrows(), "group 'mystery': unknown node kind 'no_such_kind'")


# Arrow kinds.


def test_reflexive_between_two_groups() -> None:
    arrows = [
        *base_arrows(),
        Arrow(name="loop", kind="reflexive", source="dense", target="bias"),
    ]

    assert_graph_error(base_groups(), arrows, "reflexive arrow 'loop' goes from 'dense' to 'bias'")


def test_reflexive_without_function() -> None:
    arrows = [*base_arrows(), Arrow(name="loop", kind="reflexive", source="bias", target="bias")]

    assert_graph_error(base_groups(), arrows, "'loop' is on group 'bias' whose kind 'bias'")


def test_forward_arrow_to_itself() -> None:
    arrows = [*base_arrows(), forward("bias", "bias", name="self")]

    assert_graph_error(base_groups(), arrows, "forward arrow 'self' starts and ends at 'bias'")


def test_backward_arrow_to_itself() -> None:
    arrows = [*base_arrows(), backward("bias", "bias", name="self")]

    assert_graph_error(base_groups(), arrows, "backward arrow 'self' starts and ends at 'bias'")


def test_backward_without_forward() -> None:
    arrows = [*base_arrows(), backward("loss", "dense", name="skip")]

    assert_graph_error(base_groups(), arrows, "backward arrow 'skip' from 'loss' to 'dense'")


def test_backward_into_input_group() -> None:
    arrows = [*base_arrows(), backward("dense", "input", name="to-input")]

    assert_graph_error(base_groups(), arrows, "backward arrow 'to-input' ends at input group")


def test_forward_into_input_group() -> None:
    arrows = [*base_arrows(), forward("bias", "input", name="to-input")]

    assert_graph_error(base_groups(), arrows, "forward arrow 'to-input' ends at input group")


def test_two_arrows_into_loss() -> None:
    arrows = [*base_arrows(), forward("dense", "loss", name="second-into-loss")]

    assert_graph_error(base_groups(), arrows, "loss group 'loss' must have exactly one incoming")


def test_mixed_backward_aggregations() -> None:
    groups = [*base_groups(), Group(name="side", kind="relu", shape=(4,))]
    arrows = [
        forward("input", "dense", "dense"),
        forward("dense", "bias"),
        forward("bias", "loss"),
        forward("bias", "side"),
        backward("loss", "bias", "sum"),
        backward("side", "bias", "mean"),
    ]
    graph = Graph(groups=tuple(groups), arrows=tuple(arrows))

    with pytest.raises(mplp.GraphError, match="incoming backward arrows of group 'bias' mix"):
        mplp.compile_graph(graph, any_aggregate_learner())


def any_aggregate_learner() -> mplp.Learner:
    # The gradient learner rejects 'mean' outright, so the mixed case needs a learner that
    # accepts both aggregations.
    return GRADIENT._replace(name="any-aggregate", exact_gradient=False)


# Arrow pairs from connect.


def test_connect_arrow_fields() -> None:
    forward_arrow, backward_arrow = mplp.connect("dense", "bias", aggregate="sum")

    assert forward_arrow == Arrow(
        name="dense->bias", kind="forward", source="dense", target="bias", connection="elementwise"
    )
    assert backward_arrow == Arrow(
        name="bias->dense", kind="backward", source="bias", target="dense", aggregate="sum"
    )


def test_connect_default_aggregate() -> None:
    _, backward_arrow = mplp.connect("dense", "bias")

    assert backward_arrow.aggregate == "mean"


def test_connect_without_backward() -> None:
    arrows = mplp.connect("input", "dense", backward=False)

    assert len(arrows) == 1
    assert arrows[0].name == "input->dense"
    assert arrows[0].kind == "forward"


def test_connect_dense_only_forward() -> None:
    forward_arrow, backward_arrow = mplp.connect("act", "dense", connection="dense")

    assert forward_arrow.connection == "dense"
    assert backward_arrow.connection == "elementwise"


def test_connect_pairs_pass_validation() -> None:
    arrows = (
        *mplp.connect("input", "dense", connection="dense", backward=False),
        *mplp.connect("dense", "bias", aggregate="sum"),
        *mplp.connect("bias", "loss", aggregate="sum"),
    )
    graph = Graph(groups=tuple(base_groups()), arrows=arrows)

    kinds = validate_graph(graph)

    assert set(kinds) == {"input", "dense", "bias", "loss"}
    assert [arrow.name for arrow in arrows] == [
        "input->dense",
        "dense->bias",
        "bias->dense",
        "bias->loss",
        "loss->bias",
    ]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param("bad name", "bias", id="space-in-forward-name"),
        pytest.param("dense", "9bias", id="backward-name-starts-with-digit"),
    ],
)
def test_connect_invalid_name(source: str, target: str) -> None:
    with pytest.raises(ValidationError, match="String should match pattern"):
        mplp.connect(source, target)


def test_connect_invalid_aggregate() -> None:
    with pytest.raises(ValidationError, match="aggregate"):
        mplp.connect("dense", "bias", aggregate="max")


# Shapes and connections.


def test_shape_mismatch() -> None:
    groups = base_groups()
    groups[2] = Group(name="bias", kind="bias", shape=(5,))

    assert_graph_error(groups, base_arrows(), "shape mismatch on forward arrow 'dense->bias'")


def test_wrong_connection() -> None:
    arrows = base_arrows()
    arrows[0] = forward("input", "dense", "elementwise")

    assert_graph_error(
        base_groups(), arrows, "'input->dense' has connection 'elementwise' but its target 'dense'"
    )


def test_dense_needs_two_axes() -> None:
    groups = base_groups()
    groups[1] = Group(name="dense", kind="dense", shape=(3,))

    assert_graph_error(groups, base_arrows(), "group 'dense' of kind 'dense' needs a node shape")


def test_invalid_init_option() -> None:
    groups = base_groups()
    groups[1] = Group(name="dense", kind="dense", shape=(3, 4), options={"init_std": -1.0})

    assert_graph_error(groups, base_arrows(), "group 'dense' option 'init_std' = -1.0")


def test_forward_cycle() -> None:
    groups = [
        Group(name="input", kind="input", shape=(3,)),
        Group(name="a", kind="identity", shape=(3,)),
        Group(name="b", kind="identity", shape=(3,)),
        Group(name="loss", kind="l2", shape=(3,)),
    ]
    arrows = [forward("input", "a"), forward("a", "b"), forward("b", "a"), forward("b", "loss")]

    assert_graph_error(groups, arrows, "forward arrows form a cycle a -> b -> a")


# Special groups.


@pytest.mark.parametrize("count", [0, 2])
def test_loss_count(count: int) -> None:
    groups = base_groups()[:3]
    arrows = base_arrows()[:2]
    for index in range(count):
        groups.append(Group(name=f"loss{index}", kind="l2", shape=(4,)))
        arrows.append(forward("bias", f"loss{index}"))

    assert_graph_error(groups, arrows, f"exactly one loss group, found {count}")


@pytest.mark.parametrize("count", [0, 2])
def test_input_count(count: int) -> None:
    groups = base_groups()[1:]
    arrows = base_arrows()[1:]
    for index in range(count):
        groups.append(Group(name=f"input{index}", kind="input", shape=(3,)))
        arrows.append(forward(f"input{index}", "dense", "dense"))

    assert_graph_error(groups, arrows, f"exactly one input group, found {count}")


def test_group_without_input() -> None:
    groups = [*base_groups(), Group(name="lonely", kind="relu", shape=(4,))]

    assert_graph_error(groups, base_arrows(), "group 'lonely' has no incoming forward arrow")


def test_forward_out_of_loss() -> None:
    groups = [*base_groups(), Group(name="after", kind="relu", shape=(4,))]
    arrows = [*base_arrows(), forward("loss", "after")]

    assert_graph_error(groups, arrows, r"loss group 'loss' ends the forward pass .*'loss->after'")


# Learner compatibility.


def test_gradient_rejects_mean_aggregate() -> None:
    arrows = base_arrows()
    arrows[3] = backward("loss", "bias", "mean")

    assert_graph_error(base_groups(), arrows, "backward arrow 'loss->bias' aggregates with 'mean'")


def test_gradient_rejects_mean_mlp() -> None:
    with pytest.raises(mplp.GraphError, match="aggregates with 'mean': set aggregate='sum'"):
        mplp.builders.mlp([2, 3], learner=GRADIENT, aggregate="mean")


# Builder arguments.


@pytest.mark.parametrize(
    "sizes",
    [[], [3], [3, 0], [3, -2], [3, 2.0], [3, "4"], "34", [3, True], 3],
    ids=["empty", "one", "zero", "negative", "float", "string-entry", "string", "bool", "int"],
)
def test_mlp_rejects_bad_sizes(sizes: object) -> None:
    with pytest.raises(mplp.GraphError, match="sizes .* is invalid") as raised:
        mplp.builders.mlp(sizes, learner=GRADIENT)  # type: ignore[arg-type]
    assert type(raised.value) is mplp.GraphError


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"activation": "swish"}, "activation 'swish' is unknown; choose one of: sigmoid"),
        ({"output_activation": "gelu"}, "output_activation 'gelu' is unknown"),
        ({"loss": "hinge"}, "loss 'hinge' is unknown; choose one of: l2, cross_entropy"),
        ({"aggregate": "max"}, "aggregate 'max' is invalid: use 'mean' or 'sum'"),
    ],
    ids=["activation", "output-activation", "loss", "aggregate"],
)
def test_mlp_rejects_unknown_names(arguments: dict, message: str) -> None:
    with pytest.raises(mplp.GraphError, match=message):
        mplp.builders.mlp_graph([2, 3], **arguments)


def test_mlp_graph_layout() -> None:
    graph = mplp.builders.mlp_graph([2, 5, 3], activation="sigmoid", loss="cross_entropy")

    names = [group.name for group in graph.groups]
    assert names == ["input", "dense0", "bias0", "act0", "dense1", "bias1", "softmax", "loss"]
    assert graph.group("act0").kind == "sigmoid"
    assert graph.group("dense1").shape == (5, 3)
    assert graph.group("loss").kind == "cross_entropy"
    assert not any(arrow.target == "input" for arrow in graph.arrows)
    forward_count = sum(arrow.kind == "forward" for arrow in graph.arrows)
    backward_count = sum(arrow.kind == "backward" for arrow in graph.arrows)
    assert forward_count == 7
    assert backward_count == 6


def test_graph_group_lookup() -> None:
    graph = Graph(groups=tuple(base_groups()), arrows=tuple(base_arrows()))

    assert graph.group("dense").shape == (3, 4)
    with pytest.raises(mplp.GraphError, match="unknown group 'ghost'; known groups: input"):
        graph.group("ghost")


# JSON.


def test_json_round_trip() -> None:
    graph = mplp.builders.mlp_graph([2, 3, 2], loss="cross_entropy", aggregate="sum")

    loaded = Graph.from_json(graph.to_json())

    assert loaded == graph
    assert Graph.from_json(graph.to_json(indent=None)) == graph


def test_json_keeps_option_types() -> None:
    options = {"flag": True, "count": 3, "scale": 0.5, "whole": 1.0, "label": "x"}
    graph = Graph(groups=(Group(name="g", kind="dense", shape=(2, 3), options=options),), arrows=())

    loaded = Graph.from_json(graph.to_json())

    assert loaded == graph
    loaded_options = loaded.groups[0].options
    for name, value in options.items():
        assert type(loaded_options[name]) is type(value), name


def test_round_trip_compiles_same() -> None:
    graph = mplp.builders.mlp_graph([2, 3, 2], aggregate="sum")

    original = mplp.compile_graph(graph, GRADIENT)
    loaded = mplp.compile_graph(Graph.from_json(graph.to_json()), GRADIENT)

    assert loaded.schedule == original.schedule
    assert loaded.state_fields(2) == original.state_fields(2)


# The networkx view.


def test_networkx_one_edge_per_arrow() -> None:
    graph = mplp.builders.mlp_graph([2, 3, 2], aggregate="sum")

    multigraph = to_networkx(graph)

    assert multigraph.number_of_nodes() == len(graph.groups)
    assert multigraph.number_of_edges() == len(graph.arrows)
    keys = {key for _, _, key in multigraph.edges(keys=True)}
    assert keys == {arrow.name for arrow in graph.arrows}


def test_networkx_parallel_edges() -> None:
    graph = mplp.builders.mlp_graph([2, 3, 2], aggregate="sum")

    multigraph = to_networkx(graph)

    assert multigraph.has_edge("dense0", "bias0", key="dense0->bias0")
    assert multigraph.has_edge("bias0", "dense0", key="bias0->dense0")
    assert multigraph.edges["dense0", "bias0", "dense0->bias0"]["kind"] == "forward"
    assert multigraph.edges["bias0", "dense0", "bias0->dense0"]["kind"] == "backward"
    assert multigraph.edges["input", "dense0", "input->dense0"]["connection"] == "dense"
    assert multigraph.edges["bias0", "dense0", "bias0->dense0"]["aggregate"] == "sum"
    assert multigraph.nodes["dense0"]["shape"] == (2, 3)
    assert multigraph.nodes["dense0"]["kind"] == "dense"


def test_networkx_two_arrows_same_direction() -> None:
    groups = [
        Group(name="input", kind="input", shape=(3,)),
        Group(name="a", kind="identity", shape=(3,)),
        Group(name="loss", kind="l2", shape=(3,)),
    ]
    arrows = [
        forward("input", "a", name="first"),
        forward("input", "a", name="second"),
        forward("a", "loss"),
    ]

    multigraph = to_networkx(Graph(groups=tuple(groups), arrows=tuple(arrows)))

    assert multigraph.number_of_edges("input", "a") == 2
    assert set(multigraph["input"]["a"]) == {"first", "second"}


# The schedule.


@pytest.mark.parametrize(
    "graph",
    [residual_graph(), mplp.builders.mlp_graph([2, 4, 3, 2], loss="cross_entropy")],
    ids=["residual", "mlp"],
)
def test_schedule_forward_topological(graph: Graph) -> None:
    schedule = build_schedule(graph, validate_graph(graph))

    order = [step.group for step in schedule.forward]
    assert schedule.input_group not in order
    assert order[-1] == schedule.loss_group
    assert sorted(order) == sorted(group.name for group in graph.groups if group.name != "input")
    for arrow in graph.arrows:
        if arrow.kind == "forward" and arrow.source != schedule.input_group:
            assert order.index(arrow.source) < order.index(arrow.target), arrow.name


def test_schedule_forward_sources() -> None:
    graph = residual_graph()

    schedule = build_schedule(graph, validate_graph(graph))

    sources = {step.group: step.sources for step in schedule.forward}
    assert sources["sum"] == ("act0", "bias1")
    assert sources["dense0"] == ("input",)
    assert schedule.output_group == "sum"


@pytest.mark.parametrize(
    "graph",
    [residual_graph(), mplp.builders.mlp_graph([2, 4, 3, 2], loss="cross_entropy")],
    ids=["residual", "mlp"],
)
def test_schedule_backward_reverses_forward(graph: Graph) -> None:
    schedule = build_schedule(graph, validate_graph(graph))

    with_messages = {step.group for step in schedule.backward}
    forward_order = [step.group for step in schedule.forward if step.group in with_messages]
    assert [step.group for step in schedule.backward] == forward_order[::-1]
    assert schedule.backward[0].group == schedule.loss_group


def test_schedule_backward_fan_in() -> None:
    graph = residual_graph()

    schedule = build_schedule(graph, validate_graph(graph))

    steps = {step.group: step for step in schedule.backward}
    assert set(steps["act0"].senders) == {"dense1", "sum"}
    assert set(steps["sum"].receivers) == {"act0", "bias1"}
    assert steps["act0"].aggregate_in == "sum"
    assert steps["loss"].senders == ()
    assert steps["dense0"].receivers == ()


def test_schedule_skips_silent_groups() -> None:
    # Only the last layer has backward arrows, so the first layer gets no backward step.
    graph = mplp.builders.mlp_graph([2, 3, 2], aggregate="sum")
    last_layer_arrows = [
        arrow
        for arrow in graph.arrows
        if arrow.kind == "forward" or arrow.target in {"bias1", "dense1"}
    ]
    graph = Graph(groups=graph.groups, arrows=tuple(last_layer_arrows))

    schedule = build_schedule(graph, validate_graph(graph))

    assert [step.group for step in schedule.backward] == ["loss", "bias1", "dense1"]


def test_schedule_is_hashable() -> None:
    graph = mplp.builders.mlp_graph([2, 3, 2], aggregate="sum")

    first = build_schedule(graph, validate_graph(graph))
    second = build_schedule(Graph.from_json(graph.to_json()), validate_graph(graph))

    assert hash(first) == hash(second)
    assert first == second
    assert {first: "cached"}[second] == "cached"
    assert isinstance(first.forward, tuple)
    assert isinstance(first.backward, tuple)
