"""Lower a multilayer perceptron into vectorised node groups.

``mlp([n0, n1, ..., nL])`` builds, for each layer ``l``, a dense weight group ``dense{l}`` of node
shape ``(n_l, n_{l+1})`` and a bias group ``bias{l}``, with an activation group ``act{l}`` after
every hidden layer. Classification with cross-entropy adds a ``softmax`` group before the loss.
Every forward arrow gets a backward arrow in the opposite direction, except the one from the input
group: the first layer's outgoing message has no receiver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import jax

from mplp.graphcore import (
    Arrow,
    Graph,
    GraphError,
    Group,
    Learner,
    Program,
    State,
    compile_graph,
    connect,
    registered_kinds,
)
from mplp.graphcore.schema import Aggregate
from mplp.nodes import ACTIVATION_FUNCTIONS, DEFAULT_INIT_STD, LOSSES

Array = jax.Array
INPUT_GROUP = "input"
LOSS_GROUP = "loss"


def mlp_graph(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    loss: str = "l2",
    aggregate: str = "mean",
    init_std: float = DEFAULT_INIT_STD,
    output_activation: str | None = None,
) -> Graph:
    """Build the graph of an MLP with layer sizes ``sizes`` (input first, output last).

    Args:
        sizes: At least two positive layer widths.
        activation: Hidden activation kind: sigmoid, relu, tanh, step, identity or any
            registered kind of family ``activation`` (see `activation_kind_names`).
        loss: ``l2`` (regression) or ``cross_entropy`` (adds a softmax group before the loss).
        aggregate: How backward messages are combined over a node's fan-out.
        init_std: Standard deviation of the normal weight initialisation (biases start at 0).
        output_activation: Optional activation kind after the last layer, before the loss
            (and before the softmax, for cross-entropy).
    """
    _check_sizes(sizes)
    for name, value in (("activation", activation), ("output_activation", output_activation)):
        if value is not None and value not in activation_kind_names():
            known = ", ".join(activation_kind_names())
            raise GraphError(
                f"{name} '{value}' is unknown; choose one of: {known}, or register a kind "
                "of family 'activation' with mplp.register_kind"
            )
    if loss not in LOSSES:
        raise GraphError(f"loss '{loss}' is unknown; choose one of: {', '.join(LOSSES)}")
    if aggregate not in ("mean", "sum"):
        raise GraphError(f"aggregate '{aggregate}' is invalid: use 'mean' or 'sum'")

    groups = [Group(name=INPUT_GROUP, kind="input", shape=(sizes[0],))]
    chain = [INPUT_GROUP]
    num_layers = len(sizes) - 1
    for layer in range(num_layers):
        width_in, width_out = sizes[layer], sizes[layer + 1]
        groups.append(
            Group(
                name=f"dense{layer}",
                kind="dense",
                shape=(width_in, width_out),
                options={"init_std": init_std},
            )
        )
        groups.append(Group(name=f"bias{layer}", kind="bias", shape=(width_out,)))
        chain += [f"dense{layer}", f"bias{layer}"]

        is_hidden = layer < num_layers - 1
        layer_activation = activation if is_hidden else output_activation
        if layer_activation is not None:
            groups.append(Group(name=f"act{layer}", kind=layer_activation, shape=(width_out,)))
            chain.append(f"act{layer}")

    if loss == "cross_entropy":
        groups.append(Group(name="softmax", kind="softmax", shape=(sizes[-1],)))
        chain.append("softmax")
    groups.append(Group(name=LOSS_GROUP, kind=loss, shape=(sizes[-1],)))
    chain.append(LOSS_GROUP)

    # The check at the top rejects any aggregate other than 'mean' or 'sum'.
    backward_aggregate = cast(Aggregate, aggregate)
    arrows: list[Arrow] = []
    for source, target in zip(chain[:-1], chain[1:], strict=True):
        arrows += connect(
            source,
            target,
            connection="dense" if target.startswith("dense") else "elementwise",
            aggregate=backward_aggregate,
            backward=source != INPUT_GROUP,
        )
    return Graph(groups=tuple(groups), arrows=tuple(arrows))


def activation_kind_names() -> tuple[str, ...]:
    """Return the names of the registered activation kinds: the built-in ones first, then
    those of family ``activation`` that a user registered (e.g. with
    `mplp.nodes.activation_kind` and `mplp.register_kind`)."""
    registered = [
        name
        for name, kind in registered_kinds().items()
        if kind.family == "activation" and name not in ACTIVATION_FUNCTIONS
    ]
    return (*ACTIVATION_FUNCTIONS, *sorted(registered))


def mlp(
    sizes: Sequence[int],
    *,
    learner: Learner,
    activation: str = "relu",
    loss: str = "l2",
    aggregate: str | None = None,
    init_std: float = DEFAULT_INIT_STD,
    output_activation: str | None = None,
) -> Program:
    """Build and compile an MLP trained by ``learner``.

    ``aggregate`` defaults to the learner's own choice: ``sum`` for the gradient learner, so
    that its messages are exact gradients, and ``mean`` (MPLP eq. 5) for learned rules. The
    other arguments are those of `mlp_graph`.
    """
    graph = mlp_graph(
        sizes,
        activation=activation,
        loss=loss,
        aggregate=aggregate or learner.default_aggregate,
        init_std=init_std,
        output_activation=output_activation,
    )
    return compile_graph(graph, learner)


def dense_layers(program: Program, state: State) -> list[tuple[Array, Array]]:
    """Read an MLP's parameters as ``[(W, b), ...]``, with ``W`` of shape ``(in, out)``.

    The layout matches a plain JAX MLP ``x @ W + b``, so a network built here can be compared
    with (or initialised from) one written directly in JAX.
    """
    layers = []
    for layer in range(_num_layers(program)):
        layers.append((state[f"dense{layer}"]["w"], state[f"bias{layer}"]["b"]))
    return layers


def replace_dense_layers(
    program: Program, state: State, layers: Sequence[tuple[Array, Array]]
) -> State:
    """Return ``state`` with the MLP's parameters replaced by ``layers`` (``[(W, b), ...]``)."""
    expected = _num_layers(program)
    if len(layers) != expected:
        raise GraphError(f"the network has {expected} layers but {len(layers)} were given")
    parameters = {}
    for layer, (weights, biases) in enumerate(layers):
        parameters[f"dense{layer}"] = {"w": weights}
        parameters[f"bias{layer}"] = {"b": biases}
    return program.replace_parameters(state, parameters)


def _num_layers(program: Program) -> int:
    count = sum(1 for group in program.graph.groups if group.kind == "dense")
    if count == 0:
        raise GraphError("the program has no dense groups: it was not built by mlp()")
    return count


def _check_sizes(sizes: Sequence[int]) -> None:
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
        raise GraphError(f"sizes {sizes!r} is invalid: pass a list of layer widths")
    if len(sizes) < 2:
        raise GraphError(
            f"sizes {list(sizes)} is invalid: give at least an input and an output width"
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise GraphError(
                f"sizes {list(sizes)} is invalid: every width must be a positive integer"
            )
