"""Meta-optimizer pieces for MPLP meta-training, built on optax.

Meta-gradients through an unrolled inner training loop can change by orders of magnitude
from one meta-step to the next. ``meta_optimizer`` scales every meta-gradient tensor to
unit L2 norm before Adam, so that one step with an exploding meta-gradient does not
dominate Adam's moment estimates for the following steps. ``guarded_update`` skips
meta-updates whose loss or gradients are NaN or inf, and ``SkippedUpdateCounter`` stops a
run after too many skipped updates in a row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def _normalize_tensor(gradient: jax.Array, epsilon: float) -> jax.Array:
    """Divide ``gradient`` by its L2 norm plus ``epsilon``, keeping its dtype."""
    gradient = jnp.asarray(gradient)
    if gradient.size == 0:
        return gradient

    values = gradient.astype(jnp.promote_types(gradient.dtype, jnp.float32))

    # Dividing by the largest magnitude first keeps the sum of squares from overflowing
    # for very large finite gradients. A NaN or inf element still makes the result NaN.
    scale = jnp.max(jnp.abs(values))
    safe_scale = jnp.where(scale > 0, scale, 1.0)
    norm = safe_scale * jnp.sqrt(jnp.sum(jnp.square(jnp.abs(values / safe_scale))))

    return (values / (norm + epsilon)).astype(gradient.dtype)


def normalize_per_tensor(epsilon: float = 1e-8) -> optax.GradientTransformation:
    """Create a transformation that scales every update leaf to unit L2 norm.

    Each leaf ``g`` becomes ``g / (||g||_2 + epsilon)``, where the norm is taken over all
    elements of that leaf. So the output norm is slightly below 1, for example 0.5 when
    ``||g||_2 == epsilon``, and an all-zero leaf stays zero. A leaf with a NaN or inf
    element becomes all NaN, so the non-finite value is not hidden. Norms are computed
    in at least float32, and each output leaf has the dtype of its input leaf.

    The transformation has no state (``optax.EmptyState``), works on any pytree (None
    leaves stay None) and can be used under ``jax.jit``.

    Args:
        epsilon: Positive constant added to each norm.

    Returns:
        The ``optax.GradientTransformation``.

    Raises:
        ValueError: ``epsilon`` is not a positive finite number.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.EmptyState]:
        del params
        normalized = jax.tree.map(functools.partial(_normalize_tensor, epsilon=epsilon), updates)
        return normalized, state

    return optax.GradientTransformation(init_fn, update_fn)


def meta_optimizer(
    learning_rate: optax.ScalarOrSchedule, epsilon: float = 1e-8
) -> optax.GradientTransformation:
    """Create the MPLP meta-optimizer: per-tensor normalisation followed by Adam.

    This is ``optax.chain(normalize_per_tensor(epsilon), optax.adam(learning_rate))``.
    Adam's first step is about ``learning_rate`` per element whatever the gradient scale.
    The normalisation makes later steps independent of how the gradient scale of each
    tensor changes over time.

    Args:
        learning_rate: Positive Adam learning rate, or an optax schedule.
        epsilon: Constant added to each tensor norm by ``normalize_per_tensor``. This is
            not Adam's epsilon, which keeps the optax default.

    Returns:
        The chained ``optax.GradientTransformation``.

    Raises:
        ValueError: ``learning_rate`` is a number that is not positive and finite, or
            ``epsilon`` is invalid.
    """
    if not callable(learning_rate):
        value = float(learning_rate)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"learning_rate must be a positive finite number, got {learning_rate!r}"
            )

    return optax.chain(normalize_per_tensor(epsilon), optax.adam(learning_rate))


def _is_inexact(leaf: Any) -> bool:
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def all_finite(tree: PyTree) -> jax.Array:
    """Check that every floating-point or complex leaf of ``tree`` is free of NaN and inf.

    Integer, bool and PRNG key leaves are ignored, and a tree without inexact leaves
    counts as finite. Safe to call under ``jax.jit``.

    Args:
        tree: Any pytree of arrays and scalars.

    Returns:
        A scalar bool array.
    """
    finite = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        if _is_inexact(leaf):
            finite = jnp.logical_and(finite, jnp.all(jnp.isfinite(leaf)))
    return finite


def guarded_update(
    optimizer: optax.GradientTransformation,
    grads: PyTree,
    opt_state: optax.OptState,
    params: PyTree,
    loss: PyTree,
) -> tuple[PyTree, optax.OptState, jax.Array]:
    """Apply one optimizer step unless the loss or a gradient is NaN or inf.

    When every inexact leaf of ``loss`` and ``grads`` is finite, this returns
    ``optax.apply_updates(params, updates)`` and the new optimizer state. Otherwise it
    returns ``params`` and ``opt_state`` unchanged, so Adam's moments and step count do
    not see the bad step. The choice is made with ``jax.lax.cond``, so the function can be
    used under ``jax.jit``.

    This does not build on ``optax.apply_if_finite`` (checked against optax 0.2.8)
    because that wrapper only checks the gradients and not the loss, and it applies the
    non-finite update once ``max_consecutive_errors`` is exceeded, which would write NaN
    into the learning-rule parameters. It also wraps the optimizer state in
    ``ApplyIfFiniteState``, which changes the state tree stored in checkpoints, and keeps
    its counters on the device. Here the caller gets ``applied`` and counts skipped steps
    in Python with ``SkippedUpdateCounter``, which raises after N in a row.

    Args:
        optimizer: The optax transformation, for example ``meta_optimizer(1e-3)``.
        grads: Gradients with the structure of ``params``.
        opt_state: Current state of ``optimizer``.
        params: Current parameters.
        loss: Loss value, or any pytree of values that must be finite for the update
            to be applied.

    Returns:
        The tuple ``(new_params, new_opt_state, applied)``, where ``applied`` is a scalar
        bool array that is False when the step was skipped.
    """
    applied = jnp.logical_and(all_finite(loss), all_finite(grads))

    def apply_step(operands: tuple[PyTree, PyTree, PyTree]) -> tuple[PyTree, PyTree]:
        step_grads, step_state, step_params = operands
        updates, new_state = optimizer.update(step_grads, step_state, step_params)
        return optax.apply_updates(step_params, updates), new_state

    def skip_step(operands: tuple[PyTree, PyTree, PyTree]) -> tuple[PyTree, PyTree]:
        _, step_state, step_params = operands
        return step_params, step_state

    new_params, new_state = jax.lax.cond(applied, apply_step, skip_step, (grads, opt_state, params))
    return new_params, new_state, applied


class NonFiniteUpdateError(RuntimeError):
    """Error raised when too many meta-updates in a row had a NaN or inf loss or gradient."""


@dataclasses.dataclass
class SkippedUpdateCounter:
    """Python-side count of the updates that ``guarded_update`` skipped.

    Attributes:
        max_consecutive: Number of skipped updates in a row at which ``record`` raises.
        consecutive: Skipped updates since the last applied one.
        total: Skipped updates since this counter was created.
    """

    max_consecutive: int
    consecutive: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        if self.max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {self.max_consecutive}")

    def record(self, applied: bool | jax.Array, step: int | None = None) -> int:
        """Count one update and raise once ``max_consecutive`` were skipped in a row.

        Converting ``applied`` to a Python bool waits for the device to finish the step.

        Args:
            applied: The flag returned by ``guarded_update``.
            step: Optional training step, used in the error message.

        Returns:
            The number of skipped updates in a row, 0 after an applied update.

        Raises:
            NonFiniteUpdateError: ``max_consecutive`` updates in a row were skipped.
        """
        if bool(applied):
            self.consecutive = 0
            return 0

        self.consecutive += 1
        self.total += 1

        if self.consecutive >= self.max_consecutive:
            at_step = "" if step is None else f" (last at step {step})"
            raise NonFiniteUpdateError(
                f"{self.consecutive} meta-updates in a row were skipped{at_step} because the "
                "meta-loss or a meta-gradient was NaN or inf. Lower the meta learning rate "
                "or the unroll length, or resume from the last checkpoint."
            )
        return self.consecutive
