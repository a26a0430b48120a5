"""Elementwise activation kinds and the input kind.

Activation nodes have no parameters. Their learner input is ``[message, pre-activation]``: the
learner never sees the activation's output or derivative, so a rule trained on a sigmoid also
runs on a step function, whose derivative is zero almost everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, NodeKind
from mplp.nodes.common import column, keep_messages, no_params, same_shape

Array = jax.Array


def _step(x: Array) -> Array:
    # Heaviside step with step(0) = 0; its gradient is zero everywhere.
    return jnp.where(x > 0, 1.0, 0.0).astype(x.dtype)


def _identity(x: Array) -> Array:
    return x


ACTIVATION_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "step": _step,
    "identity": _identity,
}


def _activation_feature_sizes(message_size: int) -> dict[str, int]:
    return {"message": message_size, "input": 1}


def _activation_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    del params, target
    return {"message": message, "input": column(x)}


def activation_kind(name: str, function: Callable[[Array], Array]) -> NodeKind:
    """Build an elementwise activation kind from a scalar function ``function``.

    Use it to add an activation of your own, then register it with `mplp.register_kind`.
    """

    def apply(params: Fields, x: Array, target: Array | None) -> Array:
        del params, target
        return function(x)

    return NodeKind(
        name=name,
        family="activation",
        connection="elementwise",
        input_shape=same_shape,
        output_shape=same_shape,
        init_params=no_params,
        apply=apply,
        feature_sizes=_activation_feature_sizes,
        features=_activation_features,
        reduce_message=keep_messages,
    )


ACTIVATIONS = {name: activation_kind(name, fn) for name, fn in ACTIVATION_FUNCTIONS.items()}


def _input_apply(params: Fields, x: Array, target: Array | None) -> Array:
    del params, target
    return x


def _no_feature_sizes(message_size: int) -> dict[str, int]:
    del message_size
    return {}


def _no_features(
    params: Fields, x: Array, target: Array | None, message: Array
) -> dict[str, Array]:
    del params, x, target, message
    return {}


INPUT = NodeKind(
    name="input",
    family="input",
    connection="elementwise",
    input_shape=same_shape,
    output_shape=same_shape,
    init_params=no_params,
    apply=_input_apply,
    feature_sizes=_no_feature_sizes,
    features=_no_features,
    is_input=True,
)
