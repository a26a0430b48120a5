"""Alternative implementations of parts of `mplp.learners.rules`, for side-by-side timing.

Each variant computes the same values as the library function it replaces. `patched` swaps
it in while a function is traced, so the benchmark can compile both versions in one process.
The shared-projection versions are the library's rules before they were changed to one
projection per consumer (see docs/performance.md); like the library's rules they are
rematerialised with `jax.checkpoint`, so that they differ in the projection alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mplp.learners import rules

Array = jax.Array
Params = dict[str, Any]


class Variant(NamedTuple):
    """A replacement for one attribute of `mplp.learners.rules`, with a description."""

    attribute: str
    replacement: Any
    description: str


@contextlib.contextmanager
def patched(variants: Sequence[Variant]) -> Iterator[None]:
    """Replace the named attributes of `mplp.learners.rules` inside the block.

    The rules module looks these names up when a learner is traced, so a function lowered
    inside the block uses the replacements. Compiled code keeps them after the block ends.
    JAX's tracing caches are cleared on entry and exit, because `jax.checkpoint` reuses the
    traced body of a rule from an earlier trace and would hide a replacement inside it.
    """
    saved = {variant.attribute: getattr(rules, variant.attribute) for variant in variants}
    jax.clear_caches()
    try:
        for variant in variants:
            setattr(rules, variant.attribute, variant.replacement)
        yield
    finally:
        for attribute, value in saved.items():
            setattr(rules, attribute, value)
        jax.clear_caches()


def project_concatenated(parts: Sequence[Array], weights: Array) -> Array:
    """Broadcast every part to the common shape, concatenate them, then multiply once."""
    leading = jnp.broadcast_shapes(*(part.shape[:-1] for part in parts))
    whole = jnp.concatenate(
        [jnp.broadcast_to(part, (*leading, part.shape[-1])) for part in parts], axis=-1
    )
    return whole @ weights


def broadcast_plain(values: Array, size: int) -> Array:
    """`rules.broadcast_first_axis` without its custom backward pass."""
    return jnp.broadcast_to(values, (size, *values.shape[1:]))


def stateless_shared(
    params: Params, parts: Sequence[Array], leading: tuple[int, ...], message_size: int
) -> rules.RuleOutput:
    """Evaluate the stateless rule with one first-layer projection for f and g, split
    afterwards."""
    names = [name for name in ("f", "g") if name in params]
    first = jnp.concatenate([params[name][0]["w"] for name in names], axis=1)
    bias = jnp.concatenate([params[name][0]["b"] for name in names])
    projected = rules.project_parts(parts, first) + bias
    hidden = jax.nn.relu(rules.broadcast_leading(projected, leading))

    outputs = {}
    offset = 0
    for name in names:
        width = params[name][0]["w"].shape[1]
        layer_input = hidden[..., offset : offset + width]
        outputs[name] = jnp.tanh(rules.apply_hidden(params[name][1:], layer_input, jax.nn.relu))
        offset += width

    update = outputs["f"][..., 0] if "f" in outputs else None
    messages = outputs.get("g", jnp.zeros((*leading, message_size), hidden.dtype))
    return rules.RuleOutput(update=update, messages=messages, carry=None)


def stateful_shared(
    params: Params, parts: Sequence[Array], carry: Array, message_size: int
) -> rules.RuleOutput:
    """Advance the stateful cell with one projection for both gates and MLPx's first
    layer."""
    width = carry.shape[-1]
    mlp_x = params["mlp_x"]
    first = jnp.concatenate([params["update_x"], params["reset_x"], mlp_x[0]["w"]], axis=1)
    projected = rules.broadcast_leading(rules.project_parts(parts, first), carry.shape[:-1])
    from_x_update = projected[..., :width]
    from_x_reset = projected[..., width : 2 * width]
    hidden_x = jnp.tanh(projected[..., 2 * width :] + mlp_x[0]["b"])

    gates_c = carry @ jnp.concatenate([params["update_c"], params["reset_c"]], axis=1)
    update_gate = jax.nn.sigmoid(from_x_update + gates_c[..., :width] + params["update_b"])
    reset_gate = jax.nn.sigmoid(from_x_reset + gates_c[..., width:] + params["reset_b"])

    candidate_x = rules.apply_hidden(mlp_x[1:], hidden_x, jnp.tanh)
    candidate_c = rules.apply_hidden(params["mlp_c"], reset_gate * carry, jnp.tanh)
    candidate = jnp.tanh(candidate_x + candidate_c + params["candidate_b"])
    new_carry = update_gate * carry + (1.0 - update_gate) * candidate
    return rules.RuleOutput(
        update=new_carry[..., 0], messages=new_carry[..., -message_size:], carry=new_carry
    )


apply_stateless_shared = jax.checkpoint(stateless_shared, static_argnums=(2, 3))
apply_stateful_shared = jax.checkpoint(stateful_shared, static_argnums=(3,))

CONCATENATED_INPUT = Variant(
    "project_parts",
    project_concatenated,
    "first layer on the materialised concatenation of the feature parts",
)
PLAIN_BROADCAST = Variant(
    "broadcast_first_axis",
    broadcast_plain,
    "weight-part projection broadcast with jnp.broadcast_to (XLA's own transpose)",
)
SHARED_STATELESS = Variant(
    "apply_stateless",
    apply_stateless_shared,
    "f and g share one first-layer projection",
)
SHARED_STATEFUL = Variant(
    "apply_stateful",
    apply_stateful_shared,
    "gates and MLPx share one first-layer projection",
)
STATEFUL_NOT_REMATERIALISED = Variant(
    "_rematerialised_stateful",
    rules._stateful,
    "stateful cell without jax.checkpoint (its hidden layers stored for the backward pass)",
)
STATELESS_NOT_REMATERIALISED = Variant(
    "_rematerialised_stateless",
    rules._stateless,
    "f and g without jax.checkpoint (their hidden layers stored for the backward pass)",
)
