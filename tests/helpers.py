"""Shared test utilities: a plain-JAX reference MLP trained with optax, data makers, and small
hand-built graphs.

The reference functions use no part of `mplp`, so comparing a compiled program with them checks
the framework against an independent implementation of the same network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp import Arrow, Graph, Group, connect

Array = jax.Array
Layers = list[tuple[Array, Array]]

# Tolerances for float32 results of the same computation done in a different order.
RTOL = 1e-5
ATOL = 1e-6

PROBABILITY_CLIP = 1e-7


def _step(x: Array) -> Array:
    return jnp.where(x > 0, 1.0, 0.0).astype(x.dtype)


REFERENCE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
    "step": _step,
}


@partial(jax.jit, static_argnames=("activation", "loss"))
def reference_forward(layers: Layers, x: Array, activation: str, loss: str) -> Array:
    """Compute the MLP output ``x @ W + b`` layer by layer, the hidden activation after every
    layer but the last, and a softmax at the end for ``cross_entropy``."""
    hidden = x
    for index, (weights, biases) in enumerate(layers):
        hidden = hidden @ weights + biases
        if index < len(layers) - 1:
            hidden = REFERENCE_ACTIVATIONS[activation](hidden)
    if loss == "cross_entropy":
        return jax.nn.softmax(hidden, axis=-1)
    return hidden


def reference_per_example_loss(prediction: Array, target: Array, loss: str) -> Array:
    """Return the loss of each example, shape ``(B,)``."""
    if loss == "cross_entropy":
        clipped = jnp.clip(prediction, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
        return -jnp.sum(target * jnp.log(clipped), axis=-1)
    if loss == "l2":
        return jnp.sum(0.5 * (prediction - target) ** 2, axis=-1)
    raise ValueError(f"loss {loss!r} is invalid: use 'l2' or 'cross_entropy'")


@partial(jax.jit, static_argnames=("activation", "loss"))
def reference_loss(layers: Layers, x: Array, target: Array, activation: str, loss: str) -> Array:
    """Return the mean over the batch of the per-example loss."""
    prediction = reference_forward(layers, x, activation, loss)
    return reference_per_example_loss(prediction, target, loss).mean()


@partial(jax.jit, static_argnames=("activation", "loss"))
def reference_sgd_step(
    layers: Layers,
    x: Array,
    target: Array,
    learning_rate: float,
    activation: str,
    loss: str,
) -> tuple[Layers, Array]:
    """Apply one step of ``optax.sgd(learning_rate)`` to the mean loss of one minibatch.

    Returns the new layers and the mean loss before the step.
    """
    optimizer = optax.sgd(learning_rate)
    value, gradients = jax.value_and_grad(reference_loss)(layers, x, target, activation, loss)
    updates, _ = optimizer.update(gradients, optimizer.init(layers), layers)
    return optax.apply_updates(layers, updates), value


def reference_sgd_run(
    layers: Layers,
    xs: Array,
    targets: Array,
    learning_rate: float,
    activation: str,
    loss: str,
) -> tuple[Layers, list[Array]]:
    """Apply one SGD step per minibatch ``xs[t], targets[t]``, in order.

    Returns the final layers and the mean loss of each minibatch before its step.
    """
    losses = []
    for x, target in zip(xs, targets, strict=True):
        layers, value = reference_sgd_step(layers, x, target, learning_rate, activation, loss)
        losses.append(value)
    return layers, losses


def random_batch(
    seed: int, shape: Sequence[int], width_in: int, width_out: int, loss: str
) -> tuple[np.ndarray, np.ndarray]:
    """Make float32 inputs of shape ``(*shape, width_in)`` and matching targets.

    Targets are one-hot rows for ``cross_entropy`` and normal values for ``l2``. The data come
    from NumPy so that making them compiles nothing.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*shape, width_in)).astype(np.float32)
    if loss == "cross_entropy":
        labels = rng.integers(0, width_out, size=tuple(shape))
        target = np.eye(width_out, dtype=np.float32)[labels]
    else:
        target = rng.normal(size=(*shape, width_out)).astype(np.float32)
    return x, target


def assert_layers_close(
    actual: Layers, expected: Layers, rtol: float = RTOL, atol: float = ATOL
) -> None:
    """Assert that two ``[(W, b), ...]`` lists match, naming the first array that differs."""
    assert len(actual) == len(expected), "the two networks have different numbers of layers"
    for index, ((weights, biases), (expected_weights, expected_biases)) in enumerate(
        zip(actual, expected, strict=True)
    ):
        np.testing.assert_allclose(
            weights, expected_weights, rtol=rtol, atol=atol, err_msg=f"W of layer {index}"
        )
        np.testing.assert_allclose(
            biases, expected_biases, rtol=rtol, atol=atol, err_msg=f"b of layer {index}"
        )


def max_change(before: Layers, after: Layers) -> float:
    """Return the largest absolute difference between two parameter lists (computed in NumPy,
    so no JAX operation is compiled)."""
    differences = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), before, after
    )
    return max(jax.tree.leaves(differences))


def forward_arrow(
    source: str, target: str, connection: str = "elementwise", name: str = ""
) -> Arrow:
    """Return a forward arrow named ``source->target`` unless ``name`` is given."""
    return Arrow(
        name=name or f"{source}->{target}",
        kind="forward",
        source=source,
        target=target,
        connection=connection,
    )


def backward_arrow(source: str, target: str, aggregate: str = "sum", name: str = "") -> Arrow:
    """Return a backward arrow named ``source->target`` unless ``name`` is given."""
    return Arrow(
        name=name or f"{source}->{target}",
        kind="backward",
        source=source,
        target=target,
        aggregate=aggregate,
    )


def chain_arrows(
    pairs: Sequence[tuple[str, str]], aggregate: str = "sum", input_group: str = "input"
) -> list[Arrow]:
    """Return a forward arrow per ``(source, target)`` pair and the mirroring backward arrow,
    except towards ``input_group``. Arrows into a group named ``dense*`` use the dense
    connection."""
    arrows: list[Arrow] = []
    for source, target in pairs:
        arrows += connect(
            source,
            target,
            connection="dense" if target.startswith("dense") else "elementwise",
            aggregate=aggregate,
            backward=source != input_group,
        )
    return arrows


def residual_graph(width_in: int = 2, width: int = 3, activation: str = "tanh") -> Graph:
    """Build ``input -> dense0 -> bias0 -> act0 -> dense1 -> bias1`` where ``act0`` and ``bias1``
    both feed an identity group ``sum`` (a skip connection) that feeds an l2 loss."""
    groups = (
        Group(name="input", kind="input", shape=(width_in,)),
        Group(name="dense0", kind="dense", shape=(width_in, width)),
        Group(name="bias0", kind="bias", shape=(width,)),
        Group(name="act0", kind=activation, shape=(width,)),
        Group(name="dense1", kind="dense", shape=(width, width)),
        Group(name="bias1", kind="bias", shape=(width,)),
        Group(name="sum", kind="identity", shape=(width,)),
        Group(name="loss", kind="l2", shape=(width,)),
    )
    pairs = [
        ("input", "dense0"),
        ("dense0", "bias0"),
        ("bias0", "act0"),
        ("act0", "dense1"),
        ("dense1", "bias1"),
        ("act0", "sum"),
        ("bias1", "sum"),
        ("sum", "loss"),
    ]
    return Graph(groups=groups, arrows=tuple(chain_arrows(pairs)))
