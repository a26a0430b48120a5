"""Helpers shared by the built-in node kinds."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, GraphError, Group

Array = jax.Array


def same_shape(group: Group) -> tuple[int, ...]:
    """Per-example shape of a kind whose nodes map one to one onto its input and output."""
    return group.shape


def no_params(key: Array, group: Group) -> Fields:
    """``init_params`` of kinds without parameters."""
    del key, group
    return {}


def keep_messages(messages: Array, aggregate: str) -> Array:
    """``reduce_message`` of elementwise kinds: each node has exactly one upstream node."""
    del aggregate
    return messages


def column(values: Array) -> Array:
    """Append a feature axis of width one: ``(B, *node) -> (B, *node, 1)``."""
    return values[..., None]


def float_option(group: Group, name: str, default: float) -> float:
    """Read a positive float option of ``group``, with a clear error for a bad value."""
    value = group.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise GraphError(
            f"group '{group.name}' option '{name}' = {value!r} is invalid: "
            "pass a non-negative number"
        )
    return float(value)


def check_rank(group: Group, rank: int) -> None:
    """Raise `GraphError` unless the group's node shape has ``rank`` axes."""
    if len(group.shape) != rank:
        raise GraphError(
            f"group '{group.name}' of kind '{group.kind}' needs a node shape with {rank} "
            f"axes, got {group.shape}"
        )


def aggregate_axis(messages: Array, axis: int, aggregate: str) -> Array:
    """Combine messages over the fan-out ``axis`` by ``mean`` or ``sum``."""
    if aggregate == "sum":
        return messages.sum(axis=axis)
    if aggregate == "mean":
        return messages.mean(axis=axis)
    raise GraphError(f"aggregate '{aggregate}' is invalid: use 'mean' or 'sum'")


def one_hot_check(target: Array | None) -> Array:
    """Return ``target`` as float32, raising if a loss kind was called without one."""
    if target is None:
        raise GraphError("a loss kind was applied without a target")
    return jnp.asarray(target, jnp.float32)
