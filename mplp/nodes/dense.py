"""Dense weight and bias groups: the two halves of an affine layer ``y = x W + b``.

A dense weight group of node shape ``(n, m)`` holds one synapse node per weight ``w_ij``. In the
forward pass synapse ``(i, j)`` computes ``w_ij x_i`` and output ``j`` sums over ``i``. In the
backward pass the message of output ``j`` reaches every synapse ``(i, j)``, and the messages of
the synapses that share input ``i`` are combined by the arrow's aggregation (MPLP eq. 5 uses the
mean).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, Group, NodeKind
from mplp.nodes.common import (
    aggregate_axis,
    check_rank,
    column,
    float_option,
    keep_messages,
    same_shape,
)

Array = jax.Array

DEFAULT_INIT_STD = 0.05
"""Standard deviation of the normal weight initialisation used in the MPLP experiments."""


def _dense_input_shape(group: Group) -> tuple[int, ...]:
    check_rank(group, 2)
    return (group.shape[0],)


def _dense_output_shape(group: Group) -> tuple[int, ...]:
    check_rank(group, 2)
    return (group.shape[1],)


def _dense_init(key: Array, group: Group) -> Fields:
    std = float_option(group, "init_std", DEFAULT_INIT_STD)
    return {"w": std * jax.random.normal(key, group.shape, jnp.float32)}


def _dense_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del target
    return x @ params["w"]


def _dense_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "weight": 1, "input": 1}


def _dense_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    """Learner inputs of synapse ``(i, j)``: ``[m_j, w_ij, x_i]``, as broadcastable parts.

    Shapes: message ``(B, 1, m, k)``, weight ``(1, n, m, 1)``, input ``(B, n, 1, 1)``.
    """
    del target
    return {
        "message": message[:, None, :, :],
        "weight": params["w"][None, :, :, None],
        "input": x[:, :, None, None],
    }


def _dense_reduce(messages: Array, aggregate: str) -> Array:
    # messages: (B, n, m, k); the synapses (i, :) share input i.
    return aggregate_axis(messages, axis=2, aggregate=aggregate)


DENSE = NodeKind(
    name="dense",
    family="weight",
    connection="dense",
    input_shape=_dense_input_shape,
    output_shape=_dense_output_shape,
    init_params=_dense_init,
    apply=_dense_apply,
    feature_sizes=_dense_feature_sizes,
    features=_dense_features,
    update_field="w",
    reduce_message=_dense_reduce,
)


def _bias_init(key: Array, group: Group) -> Fields:
    del key
    check_rank(group, 1)
    return {"b": jnp.zeros(group.shape, jnp.float32)}


def _bias_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del target
    return x + params["b"]


def _bias_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "bias": 1, "input": 1}


def _bias_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    """Learner inputs of bias node ``j``: ``[m_j, b_j, pre-bias value_j]``."""
    del target
    return {"message": message, "bias": column(params["b"])[None], "input": column(x)}


BIAS = NodeKind(
    name="bias",
    family="bias",
    connection="elementwise",
    input_shape=same_shape,
    output_shape=same_shape,
    init_params=_bias_init,
    apply=_bias_apply,
    feature_sizes=_bias_feature_sizes,
    features=_bias_features,
    update_field="b",
    reduce_message=keep_messages,
)
