"""The gradient learner: backpropagation written as a message passing rule.

Messages are exact gradients of the per-example loss, and the update of a parameter is
``-learning_rate`` times the batch mean of its per-example gradients, so one learning step is
one step of SGD on the mean loss. Any node kind with a differentiable ``apply`` works with it,
because the local gradients come from `jax.vjp` of that function.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import jax
import jax.numpy as jnp

from mplp.graphcore import Fields, GraphError, GroupInfo, Learner, LearnerParams

Array = jax.Array


def gradient(learning_rate: float = 0.1) -> Learner:
    """Build the gradient learner.

    Args:
        learning_rate: SGD step size. It is stored as a learner parameter (a float32 scalar
            ``{"learning_rate": lr}``), so runs with other rates reuse the compiled program.

    Returns:
        A `Learner` with message size 1 that requires ``sum`` aggregation on backward arrows.
    """
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float):
        raise GraphError(f"learning_rate {learning_rate!r} is invalid: pass a number")
    if not learning_rate > 0:
        raise GraphError(f"learning_rate {learning_rate} is invalid: pass a positive number")

    def init(key: Array, groups: Sequence[GroupInfo]) -> LearnerParams:
        del key, groups
        return {"learning_rate": jnp.asarray(learning_rate, jnp.float32)}

    def init_carry(info: GroupInfo, batch_size: int) -> None:
        del info, batch_size

    def backward(
        params: LearnerParams, info: GroupInfo, fields: Fields, message: Array, aggregate: str
    ) -> tuple[Fields, Array, dict[str, Array]]:
        del aggregate  # exact gradients always add up; compile_graph checks for 'sum'
        kind = info.kind
        x = fields["input"]
        target = fields.get("target")
        weights = {name: fields[name] for name in info.parameters}

        def forward(weights: Fields, x: Array) -> Array:
            return kind.apply(weights, x, target)

        outputs, pullback = jax.vjp(forward, weights, x)
        # The seed message of a loss group is the loss itself, whose derivative with respect to
        # itself is 1.
        cotangent = jnp.ones_like(outputs) if kind.is_loss else message[..., 0]
        weight_sums, input_gradient = pullback(cotangent)

        batch = x.shape[0]
        new_fields = dict(fields)
        for name, summed in weight_sums.items():
            new_fields[name] = fields[name] - params["learning_rate"] * summed / batch
        return new_fields, input_gradient[..., None], {}

    return Learner(
        name="gradient",
        message_size=1,
        init=init,
        init_carry=init_carry,
        backward=backward,
        default_aggregate="sum",
        exact_gradient=True,
        options=MappingProxyType({"learning_rate": learning_rate}),
    )
