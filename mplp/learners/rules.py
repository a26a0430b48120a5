"""The small networks inside learned learners: stateless f and g MLPs and the stateful cell.

Every rule reads its input as a list of feature parts that broadcast to ``(B, *node, width)``
rather than as one concatenated tensor. The first layer projects each part separately and sums
the projections (``concat(parts) @ W == sum_p part_p @ W_p``), so for a dense group the
``(B, n, m, k + 2)`` input is never built: the message part is ``(B, 1, m, k)``, the weight part
``(1, n, m, 1)`` and the input part ``(B, n, 1, 1)``.

Projections of parts without the example axis (the weight part) are broadcast over it by
`broadcast_first_axis`, whose backward pass avoids a slow reduction of XLA's CPU backend.

Both rules are rematerialised under differentiation (`jax.checkpoint`): the backward pass
keeps only a rule's inputs and recomputes its hidden layers, which are 80 and 40 values per
node and example. On a two-core CPU, storing those layers for every inner step made the
MNIST meta-step 1.3 to 1.45 times slower and took 9 to 14 times the memory.
docs/performance.md has the measurements behind these choices.

NOTE: these choices were measured on CPUs only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Any]

HIDDEN_SIZES = (80, 40)
"""Widths of the hidden layers of every MLP inside a rule, as in the MPLP paper."""

GATE_BIAS = -1.0
"""Initial bias of the update and reset gates of the stateful cell."""


class RuleOutput(NamedTuple):
    """What a rule returns for one group: the raw per-node update ``(B, *node)`` (or None for
    kinds without parameters), the per-node messages ``(B, *node, k)`` and the new carry
    ``(B, *node, C)`` (or None for stateless rules)."""

    update: Array | None
    messages: Array
    carry: Array | None


def glorot_uniform(key: Array, fan_in: int, fan_out: int) -> Array:
    """Glorot-uniform matrix ``(fan_in, fan_out)``: U(-l, l) with ``l = sqrt(6 / (in + out))``."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit)


def init_mlp(key: Array, sizes: Sequence[int], final_bias: bool = True) -> list[Params]:
    """Initialise dense layers ``sizes[0] -> ... -> sizes[-1]``: Glorot weights, zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for index, (layer_key, fan_in, fan_out) in enumerate(
        zip(keys, sizes[:-1], sizes[1:], strict=True)
    ):
        layer: Params = {"w": glorot_uniform(layer_key, fan_in, fan_out)}
        if final_bias or index < len(sizes) - 2:
            layer["b"] = jnp.zeros((fan_out,), jnp.float32)
        layers.append(layer)
    return layers


def project_parts(parts: Sequence[Array], weights: Array) -> Array:
    """Compute ``concat(parts, -1) @ weights`` without building the concatenation.

    Args:
        parts: Arrays broadcastable to ``(..., width_p)``; their widths sum to
            ``weights.shape[0]``.
        weights: ``(sum of widths, out)``.

    Returns:
        The projection, broadcast over the parts' leading axes, ``(..., out)``.
    """
    leading = jnp.broadcast_shapes(*(part.shape[:-1] for part in parts))
    total = None
    row = 0
    for part in parts:
        width = part.shape[-1]
        projected = part @ weights[row : row + width]
        if projected.ndim == len(leading) + 1 and projected.shape[0] < leading[0]:
            projected = broadcast_first_axis(projected, leading[0])
        total = projected if total is None else total + projected
        row += width
    assert total is not None and row == weights.shape[0], "feature widths do not match"
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_first_axis(values: Array, size: int) -> Array:
    """Repeat ``values`` of shape ``(1, ...)`` ``size`` times along its first axis.

    The result equals ``jnp.broadcast_to``'s; only the backward pass differs. It sums the
    cotangent over the first axis by adding contiguous halves, because XLA's CPU backend
    (jaxlib 0.10.2) reduces a short outermost axis with a large inner extent about 40 times
    slower than those additions. With XLA's reduction, the MNIST meta-step took 1.29 times
    as long.

    NOTE: as a `jax.custom_vjp` function it supports reverse-mode differentiation only;
    `jax.jvp` through a rule raises.
    """
    return jnp.broadcast_to(values, (size, *values.shape[1:]))


def _broadcast_first_axis_forward(values: Array, size: int) -> tuple[Array, None]:
    return broadcast_first_axis(values, size), None


def _broadcast_first_axis_backward(size: int, residual: None, cotangent: Array) -> tuple[Array]:
    del size, residual
    return (sum_first_axis(cotangent)[None],)


broadcast_first_axis.defvjp(_broadcast_first_axis_forward, _broadcast_first_axis_backward)


def sum_first_axis(values: Array) -> Array:
    """Sum ``values`` over its first axis by repeatedly adding its two halves.

    Each step adds two contiguous blocks; an odd leftover row is carried to the next step.
    """
    while values.shape[0] > 1:
        half = values.shape[0] // 2
        summed = values[:half] + values[half : 2 * half]
        values = jnp.concatenate([summed, values[2 * half :]]) if values.shape[0] % 2 else summed
    return values[0]


def apply_hidden(layers: Sequence[Params], hidden: Array, activation: Any) -> Array:
    """Apply dense layers after the first one: activation between layers, none at the end."""
    for index, layer in enumerate(layers):
        hidden = hidden @ layer["w"]
        if "b" in layer:
            hidden = hidden + layer["b"]
        if index < len(layers) - 1:
            hidden = activation(hidden)
    return hidden


# Stateless rule: f and g are separate MLPs 80-40 with relu and a tanh output.


def init_stateless(
    key: Array, input_size: int, message_size: int, has_update: bool, has_message: bool = True
) -> Params:
    """Initialise f (update, one output) when ``has_update`` and g (message, k outputs) when
    ``has_message``; a group whose message has no receiver needs no g."""
    if not (has_update or has_message):
        raise ValueError("a stateless rule needs an update output, a message output, or both")
    f_key, g_key = jax.random.split(key)
    params: Params = {}
    if has_message:
        params["g"] = init_mlp(g_key, (input_size, *HIDDEN_SIZES, message_size))
    if has_update:
        params["f"] = init_mlp(f_key, (input_size, *HIDDEN_SIZES, 1))
    return params


def apply_stateless(
    params: Params, parts: Sequence[Array], leading: tuple[int, ...], message_size: int
) -> RuleOutput:
    """Evaluate f and g on every node; ``leading`` is ``(B, *node)``.

    Without g (a group whose message has no receiver) the messages are zeros.

    f and g project the input parts separately. One projection shared by both, split after
    the first layer, was slower in the backward pass (docs/performance.md).
    """
    return _rematerialised_stateless(params, tuple(parts), leading, message_size)


def _stateless(
    params: Params, parts: Sequence[Array], leading: tuple[int, ...], message_size: int
) -> RuleOutput:
    outputs = {}
    for name in ("f", "g"):
        if name not in params:
            continue
        first = params[name][0]
        projected = project_parts(parts, first["w"]) + first["b"]
        hidden = jax.nn.relu(broadcast_leading(projected, leading))
        outputs[name] = jnp.tanh(apply_hidden(params[name][1:], hidden, jax.nn.relu))

    update = outputs["f"][..., 0] if "f" in outputs else None
    if "g" in outputs:
        messages = outputs["g"]
    else:
        messages = jnp.zeros((*leading, message_size), outputs["f"].dtype)
    return RuleOutput(update=update, messages=messages, carry=None)


_rematerialised_stateless = jax.checkpoint(_stateless, static_argnums=(2, 3))


# Stateful rule: the GRU-like cell of MPLP eq. 6-8.


def carry_size(hidden_size: int, message_size: int) -> int:
    """Carry width ``1 + hidden + k``: channel 0 is the update, the last k the message."""
    return 1 + hidden_size + message_size


def init_stateful(key: Array, input_size: int, carry: int) -> Params:
    """Initialise the cell: gate matrices, gate biases at -1, and MLPx and MLPc.

    MLPx maps the input and MLPc the reset carry through tanh layers of 80 and 40 units to the
    carry width, with no bias on their last layer.
    """
    keys = jax.random.split(key, 6)
    return {
        "update_x": glorot_uniform(keys[0], input_size, carry),
        "update_c": glorot_uniform(keys[1], carry, carry),
        "update_b": jnp.full((carry,), GATE_BIAS, jnp.float32),
        "reset_x": glorot_uniform(keys[2], input_size, carry),
        "reset_c": glorot_uniform(keys[3], carry, carry),
        "reset_b": jnp.full((carry,), GATE_BIAS, jnp.float32),
        "mlp_x": init_mlp(keys[4], (input_size, *HIDDEN_SIZES, carry), final_bias=False),
        "mlp_c": init_mlp(keys[5], (carry, *HIDDEN_SIZES, carry), final_bias=False),
        "candidate_b": jnp.zeros((carry,), jnp.float32),
    }


def apply_stateful(
    params: Params, parts: Sequence[Array], carry: Array, message_size: int
) -> RuleOutput:
    """Advance the carry of every node by one step of MPLP eq. 6-8.

    ``u = sigmoid(x Wux + c Wuc + bu)``, ``r = sigmoid(x Wrx + c Wrc + br)``,
    ``c' = u * c + (1 - u) * tanh(MLPx(x) + MLPc(r * c) + bn)``. The two gates and MLPx's
    first layer project the input parts separately: each projection stays unbroadcast until
    its consumer, so no ``(B, *node, 2C + 80)`` array is built, whereas one shared projection
    was slower in the backward pass (docs/performance.md).

    Args:
        params: From `init_stateful`.
        parts: Standardised input parts, broadcastable to ``(B, *node, width)``.
        carry: ``(B, *node, C)``.
        message_size: ``k``; the message is read from the last k carry channels.
    """
    return _rematerialised_stateful(params, tuple(parts), carry, message_size)


def _stateful(
    params: Params, parts: Sequence[Array], carry: Array, message_size: int
) -> RuleOutput:
    width = carry.shape[-1]
    leading = carry.shape[:-1]
    mlp_x = params["mlp_x"]

    def project(weights: Array) -> Array:
        return broadcast_leading(project_parts(parts, weights), leading)

    hidden_x = jnp.tanh(project(mlp_x[0]["w"]) + mlp_x[0]["b"])
    gates_c = carry @ jnp.concatenate([params["update_c"], params["reset_c"]], axis=1)
    update_gate = jax.nn.sigmoid(
        project(params["update_x"]) + gates_c[..., :width] + params["update_b"]
    )
    reset_gate = jax.nn.sigmoid(
        project(params["reset_x"]) + gates_c[..., width:] + params["reset_b"]
    )

    candidate_x = apply_hidden(mlp_x[1:], hidden_x, jnp.tanh)
    mlp_c = params["mlp_c"]
    candidate_c = apply_hidden(mlp_c, reset_gate * carry, jnp.tanh)
    candidate = jnp.tanh(candidate_x + candidate_c + params["candidate_b"])
    new_carry = update_gate * carry + (1.0 - update_gate) * candidate

    return RuleOutput(
        update=new_carry[..., 0], messages=new_carry[..., -message_size:], carry=new_carry
    )


_rematerialised_stateful = jax.checkpoint(_stateful, static_argnums=(3,))


def broadcast_leading(values: Array, leading: tuple[int, ...]) -> Array:
    """Broadcast ``values (..., width)`` to ``(*leading, width)``."""
    return jnp.broadcast_to(values, (*leading, values.shape[-1]))
