"""Softmax over the last axis of a group, with the intermediates its learner reads."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, NodeKind
from mplp.nodes.common import column, keep_messages, no_params, same_shape

Array = jax.Array


def _softmax_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del params, target
    return jax.nn.softmax(x, axis=-1)


def _softmax_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "logit": 1, "shifted": 1, "probability": 1, "log_norm": 1}


def _softmax_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    """Learner inputs of class node ``i``: the message and four stored intermediates.

    The intermediates are the logit ``x_i``, the shifted logit ``x_i - max(x)``, the
    probability ``p_i`` and the log-normaliser ``logsumexp(x)``, shared by the example's nodes
    (shape ``(B, 1, 1)``).
    """
    del params, target
    shifted = x - jax.lax.stop_gradient(x.max(axis=-1, keepdims=True))
    log_norm = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    return {
        "message": message,
        "logit": column(x),
        "shifted": column(shifted),
        "probability": column(jnp.exp(x - log_norm)),
        "log_norm": column(log_norm),
    }


SOFTMAX = NodeKind(
    name="softmax",
    family="softmax",
    connection="elementwise",
    input_shape=same_shape,
    output_shape=same_shape,
    init_params=no_params,
    apply=_softmax_apply,
    feature_sizes=_softmax_feature_sizes,
    features=_softmax_features,
    reduce_message=keep_messages,
)
