"""Few-shot sinusoid regression tasks for meta-learning.

A task is the function y(x) = A sin(x + p). By default the amplitude A is drawn from
U(0.1, 0.5), the phase p from U(0, pi) and the inputs x from U(-5, 5). These are the
ranges of the reference implementation of MPLP (Randazzo et al., 2020, "MPLP: Learning
a Message Passing Learning Protocol", file mplp/sinusoidals.py in the GitHub repository
google-research/self-organising-systems). MAML's sinusoid benchmark draws amplitudes
from the wider range [0.1, 5.0].

Every function is pure JAX and keyed by a `jax.random` key, so it can run under `jax.jit`
and `jax.vmap` over keys. Sizes and ranges are Python values that fix array shapes, so
they must stay static under `jax.jit`.
"""

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_AMPLITUDE_RANGE = (0.1, 0.5)
DEFAULT_PHASE_RANGE = (0.0, math.pi)
DEFAULT_X_RANGE = (-5.0, 5.0)


class SinusoidTask(NamedTuple):
    """Parameters of one sinusoid y(x) = amplitude * sin(x + phase).

    Attributes:
        amplitude: float32 array of shape (), or (T,) for a batch of T tasks.
        phase: float32 array in radians, with the same shape as `amplitude`.
    """

    amplitude: jax.Array
    phase: jax.Array


class Episode(NamedTuple):
    """Data for one inner training run on one task.

    Attributes:
        train_x: inputs of the inner training minibatches, shape (num_steps, batch_size, 1).
        train_y: targets for `train_x`, shape (num_steps, batch_size, 1).
        validation_x: held-out inputs drawn independently from the same task,
            shape (validation_size, 1).
        validation_y: targets for `validation_x`, shape (validation_size, 1).
        task: the sampled task.
    """

    train_x: jax.Array
    train_y: jax.Array
    validation_x: jax.Array
    validation_y: jax.Array
    task: SinusoidTask


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}: pass a value of 1 or more")


def _check_range(name: str, value_range: tuple[float, float]) -> tuple[float, float]:
    if len(value_range) != 2:
        raise ValueError(
            f"{name} must be a pair (low, high), got {value_range!r}: pass two numbers"
        )

    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must contain finite numbers, got {value_range!r}")
    if not low < high:
        raise ValueError(
            f"{name} must satisfy low < high, got {value_range!r}: swap or widen the bounds"
        )
    return low, high


def _uniform(key: jax.Array, shape: tuple[int, ...], value_range: tuple[float, float]) -> jax.Array:
    low, high = value_range
    return jax.random.uniform(key, shape, dtype=jnp.float32, minval=low, maxval=high)


def sample_task(
    key: jax.Array,
    amplitude_range: tuple[float, float] = DEFAULT_AMPLITUDE_RANGE,
    phase_range: tuple[float, float] = DEFAULT_PHASE_RANGE,
) -> SinusoidTask:
    """Sample a task with amplitude and phase drawn uniformly from their ranges.

    Args:
        key: PRNG key.
        amplitude_range: (low, high) of the amplitude, with low < high.
        phase_range: (low, high) of the phase in radians, with low < high.

    Returns:
        A task whose fields are float32 arrays of shape ().

    Raises:
        ValueError: if a range is not a finite pair with low < high.
    """
    amplitude_range = _check_range("amplitude_range", amplitude_range)
    phase_range = _check_range("phase_range", phase_range)

    amplitude_key, phase_key = jax.random.split(key)
    amplitude = _uniform(amplitude_key, (), amplitude_range)
    phase = _uniform(phase_key, (), phase_range)
    return SinusoidTask(amplitude=amplitude, phase=phase)


def evaluate_task(task: SinusoidTask, x: jax.Array) -> jax.Array:
    """Compute y = amplitude * sin(x + phase).

    Args:
        task: a task with scalar fields.
        x: inputs of any shape, usually (N, 1).

    Returns:
        Targets with the shape of `x`.
    """
    return task.amplitude * jnp.sin(x + task.phase)


def sample_inputs(
    key: jax.Array,
    shape: tuple[int, ...],
    x_range: tuple[float, float] = DEFAULT_X_RANGE,
) -> jax.Array:
    """Draw float32 inputs uniformly from `x_range`.

    Args:
        key: PRNG key.
        shape: output shape, for example (N, 1).
        x_range: (low, high) of the inputs, with low < high.

    Returns:
        float32 array of the given shape.

    Raises:
        ValueError: if `x_range` is not a finite pair with low < high.
    """
    x_range = _check_range("x_range", x_range)
    return _uniform(key, shape, x_range)


def sample_batches(
    key: jax.Array,
    task: SinusoidTask,
    num_batches: int,
    batch_size: int,
    x_range: tuple[float, float] = DEFAULT_X_RANGE,
) -> tuple[jax.Array, jax.Array]:
    """Sample independent minibatches from one task, one for each inner training step.

    Args:
        key: PRNG key.
        task: the task that produces the targets.
        num_batches: number of minibatches, a positive int.
        batch_size: examples per minibatch, a positive int.
        x_range: (low, high) of the inputs, with low < high.

    Returns:
        (xs, ys), both float32 arrays of shape (num_batches, batch_size, 1).

    Raises:
        ValueError: if a size is not a positive int or `x_range` is invalid.
    """
    _check_positive("num_batches", num_batches)
    _check_positive("batch_size", batch_size)

    xs = sample_inputs(key, (num_batches, batch_size, 1), x_range)
    ys = evaluate_task(task, xs)
    return xs, ys


def sample_episode(
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    validation_size: int | None = None,
    *,
    amplitude_range: tuple[float, float] = DEFAULT_AMPLITUDE_RANGE,
    phase_range: tuple[float, float] = DEFAULT_PHASE_RANGE,
    x_range: tuple[float, float] = DEFAULT_X_RANGE,
) -> Episode:
    """Sample a task, its inner training minibatches and a held-out validation set.

    The task, the training inputs and the validation inputs each use their own key
    split from `key`, so the validation set is independent of the training batches.
    Use `jax.vmap(lambda k: sample_episode(k, ...))(keys)` for an outer batch of tasks.

    Args:
        key: PRNG key.
        num_steps: number of inner training steps, one minibatch each.
        batch_size: examples per inner minibatch.
        validation_size: examples in the validation set. Defaults to `batch_size`.
        amplitude_range: (low, high) of the amplitude.
        phase_range: (low, high) of the phase in radians.
        x_range: (low, high) of all inputs.

    Returns:
        An Episode with training arrays of shape (num_steps, batch_size, 1) and
        validation arrays of shape (validation_size, 1).

    Raises:
        ValueError: if a size is not a positive int or a range is invalid.
    """
    _check_positive("num_steps", num_steps)
    _check_positive("batch_size", batch_size)
    if validation_size is None:
        validation_size = batch_size
    _check_positive("validation_size", validation_size)

    task_key, train_key, validation_key = jax.random.split(key, 3)
    task = sample_task(task_key, amplitude_range, phase_range)

    train_x, train_y = sample_batches(train_key, task, num_steps, batch_size, x_range)

    validation_x = sample_inputs(validation_key, (validation_size, 1), x_range)
    validation_y = evaluate_task(task, validation_x)

    return Episode(
        train_x=train_x,
        train_y=train_y,
        validation_x=validation_x,
        validation_y=validation_y,
        task=task,
    )


def evaluation_grid(
    num_points: int = 100,
    x_range: tuple[float, float] = DEFAULT_X_RANGE,
) -> jax.Array:
    """Return evenly spaced inputs for the evaluation loss, both ends included.

    The MPLP sinusoid evaluation takes the L2 loss over 100 evenly spaced points
    on [-5, 5], which are the defaults.

    Args:
        num_points: number of points, a positive int.
        x_range: (low, high) of the grid, with low < high.

    Returns:
        float32 array of shape (num_points, 1).

    Raises:
        ValueError: if `num_points` is not a positive int or `x_range` is invalid.
    """
    _check_positive("num_points", num_points)
    low, high = _check_range("x_range", x_range)

    grid = jnp.linspace(low, high, num_points, dtype=jnp.float32)
    return grid[:, None]
