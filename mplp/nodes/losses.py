"""Loss kinds. Each returns the per-element loss, shape ``(B, *node)``.

The per-example loss is the sum over a group's nodes, and training minimises its mean over the
batch. The backward pass of a loss group is seeded with its own per-element loss as a one-value
message (MPLP eq. 2).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, NodeKind
from mplp.nodes.common import column, keep_messages, no_params, one_hot_check, same_shape

Array = jax.Array

PROBABILITY_CLIP = 1e-7
"""Probabilities are clipped to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]`` before the log."""


def l2_loss(prediction: Array, target: Array) -> Array:
    """Per-element squared error ``(prediction - target)**2 / 2``."""
    return 0.5 * jnp.square(prediction - target)


def cross_entropy_loss(probability: Array, target: Array) -> Array:
    """Per-element cross-entropy ``-target * log(clip(probability))``."""
    clipped = jnp.clip(probability, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -target * jnp.log(clipped)


def _loss_feature_sizes(message_size: int) -> dict[str, int]:
    del message_size  # the seed message of a loss node is the one-value loss itself
    return {"message": 1, "prediction": 1, "target": 1, "extra": 1}


def _l2_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del params
    return l2_loss(x, one_hot_check(target))


def _l2_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    """Learner inputs: ``[loss, prediction, target, prediction - target]``."""
    del params
    target = one_hot_check(target)
    return {
        "message": message,
        "prediction": column(x),
        "target": column(target),
        "extra": column(x - target),
    }


def _cross_entropy_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del params
    return cross_entropy_loss(x, one_hot_check(target))


def _cross_entropy_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    """Learner inputs: ``[loss, probability, target, log(clipped probability)]``."""
    del params
    target = one_hot_check(target)
    log_probability = jnp.log(jnp.clip(x, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP))
    return {
        "message": message,
        "prediction": column(x),
        "target": column(target),
        "extra": column(log_probability),
    }


def _loss_kind(
    name: str,
    apply: Callable[[Fields, Array, Array | None], Array],
    features: Callable[[Fields, Array, Array | None, Array], dict[str, Array]],
) -> NodeKind:
    return NodeKind(
        name=name,
        family="loss",
        connection="elementwise",
        input_shape=same_shape,
        output_shape=same_shape,
        init_params=no_params,
        apply=apply,
        feature_sizes=_loss_feature_sizes,
        features=features,
        reduce_message=keep_messages,
        is_loss=True,
        target_shape=same_shape,
    )


L2 = _loss_kind("l2", _l2_apply, _l2_features)
CROSS_ENTROPY = _loss_kind("cross_entropy", _cross_entropy_apply, _cross_entropy_features)
