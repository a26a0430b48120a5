"""A residual MLP trained by backpropagation as message passing, then by a learned MPLP rule.

The network regresses a sinusoid y = A sin(x + p)::

    input(1) -> dense0 -> bias0 -> act0 (tanh) -> dense1 -> bias1 -> add -> dense2 -> bias2 -> loss
                                   act0 -------------------------------> add

``add`` is an identity group with fan-in from two groups: its forward input is the sum of the
outputs of ``act0`` (the skip connection) and ``bias1``, and in the backward pass ``act0``
receives the messages of both ``dense1`` and ``add``.

Part 1 trains the network with the gradient learner and with ``jax.grad`` + ``optax.sgd`` from
the same initial parameters on the same minibatches, and prints the largest parameter
difference. Part 2 meta-trains a stateless MPLP learner on the same graph for ``--steps``
meta-steps with `mplp.meta.task_loss` and the MPLP meta-optimizer, and prints the meta-loss on
held-out tasks before and after.

Run it with ``python examples/residual_mlp.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mplp
from mplp import Graph, Group, connect
from mplp.meta import Episode, meta_optimizer, task_loss
from mplp.tasks import sinusoid

Array = jax.Array
Parameters = dict[str, dict[str, Array]]

HIDDEN = 16
BATCH = 10
SGD_STEPS = 20
SGD_LEARNING_RATE = 0.05
INNER_STEPS = 4
VALIDATION = 20
OUTER_BATCH = 2
EVALUATION_TASKS = 16
META_LEARNING_RATE = 1e-3

FORWARD_PAIRS = (
    ("input", "dense0"),
    ("dense0", "bias0"),
    ("bias0", "act0"),
    ("act0", "dense1"),
    ("dense1", "bias1"),
    ("act0", "add"),
    ("bias1", "add"),
    ("add", "dense2"),
    ("dense2", "bias2"),
    ("bias2", "loss"),
)


def residual_graph(hidden: int, aggregate: str, init_std: float = 0.05) -> Graph:
    """Build the residual MLP above with ``hidden`` units per hidden group.

    Every forward arrow but the one from the input gets a backward arrow in the other
    direction that aggregates with ``aggregate``.
    """
    weight_options = {"init_std": init_std}
    groups = (
        Group(name="input", kind="input", shape=(1,)),
        Group(name="dense0", kind="dense", shape=(1, hidden), options=weight_options),
        Group(name="bias0", kind="bias", shape=(hidden,)),
        Group(name="act0", kind="tanh", shape=(hidden,)),
        Group(name="dense1", kind="dense", shape=(hidden, hidden), options=weight_options),
        Group(name="bias1", kind="bias", shape=(hidden,)),
        Group(name="add", kind="identity", shape=(hidden,)),
        Group(name="dense2", kind="dense", shape=(hidden, 1), options=weight_options),
        Group(name="bias2", kind="bias", shape=(1,)),
        Group(name="loss", kind="l2", shape=(1,)),
    )
    arrows = []
    for source, target in FORWARD_PAIRS:
        arrows += connect(
            source,
            target,
            connection="dense" if target.startswith("dense") else "elementwise",
            aggregate=aggregate,
            backward=source != "input",
        )
    return Graph(groups=groups, arrows=tuple(arrows))


def reference_loss(parameters: Parameters, x: Array, y: Array) -> Array:
    """Compute the same network's loss directly in JAX: the mean over examples of the summed
    l2 loss."""
    hidden = jnp.tanh(x @ parameters["dense0"]["w"] + parameters["bias0"]["b"])
    added = hidden + (hidden @ parameters["dense1"]["w"] + parameters["bias1"]["b"])
    output = added @ parameters["dense2"]["w"] + parameters["bias2"]["b"]
    return jnp.mean(jnp.sum(0.5 * (output - y) ** 2, axis=-1))


def sample_episode(key: Array, steps: int, validation: int) -> Episode:
    """Sample one sinusoid task: ``steps`` minibatches of ``BATCH`` examples and a held-out
    set."""
    episode = sinusoid.sample_episode(key, steps, BATCH, validation)
    return Episode(episode.train_x, episode.train_y, episode.validation_x, episode.validation_y)


def compare_with_sgd() -> None:
    """Train with the gradient learner and with jax.grad + SGD, and print the difference."""
    program = mplp.compile_graph(
        residual_graph(HIDDEN, "sum", init_std=0.3), mplp.learners.gradient(SGD_LEARNING_RATE)
    )
    state = program.init(jax.random.key(0), BATCH)
    episode = sample_episode(jax.random.key(1), SGD_STEPS, VALIDATION)

    final_state, metrics = jax.jit(program.run)(
        program.init_learner(jax.random.key(2)), state, episode.train_x, episode.train_y
    )

    optimizer = optax.sgd(SGD_LEARNING_RATE)

    @jax.jit
    def sgd_step(parameters: Parameters, x: Array, y: Array) -> tuple[Parameters, Array]:
        loss, gradients = jax.value_and_grad(reference_loss)(parameters, x, y)
        updates, _ = optimizer.update(gradients, optimizer.init(parameters), parameters)
        return optax.apply_updates(parameters, updates), loss

    initial = program.parameters(state)
    parameters = initial
    reference_losses = []
    for x, y in zip(episode.train_x, episode.train_y, strict=True):
        parameters, loss = sgd_step(parameters, x, y)
        reference_losses.append(float(loss))

    learned = program.parameters(final_state)
    difference = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(learned), jax.tree.leaves(parameters), strict=True)
    )
    moved = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(learned), jax.tree.leaves(initial), strict=True)
    )
    losses = np.asarray(metrics["loss"])
    print(f"Part 1: gradient learner vs jax.grad + optax.sgd, {SGD_STEPS} steps")
    print(f"  loss, gradient learner: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"  loss, jax.grad + sgd:   {reference_losses[0]:.4f} -> {reference_losses[-1]:.4f}")
    print(f"  largest parameter change: {moved:.4f}")
    print(f"  max parameter difference: {difference:.3e}")


def meta_train(meta_steps: int) -> None:
    """Meta-train a stateless MPLP learner on the residual graph and print its meta-loss."""
    learner = mplp.learners.stateless(message_size=4)
    program = mplp.compile_graph(residual_graph(HIDDEN, learner.default_aggregate), learner)

    def meta_loss(learner_params: mplp.LearnerParams, key: Array, tasks: int) -> Array:
        def one_task(task_key: Array) -> Array:
            network_key, episode_key = jax.random.split(task_key)
            state = program.init(network_key, BATCH)
            episode = sample_episode(episode_key, INNER_STEPS, VALIDATION)
            loss, _ = task_loss(program, learner_params, state, episode, hint_ratio=0.5)
            return loss

        return jax.vmap(one_task)(jax.random.split(key, tasks)).mean()

    optimizer = meta_optimizer(META_LEARNING_RATE)

    @jax.jit
    def meta_step(
        learner_params: mplp.LearnerParams, optimizer_state: optax.OptState, key: Array
    ) -> tuple[mplp.LearnerParams, optax.OptState, Array]:
        loss, gradients = jax.value_and_grad(meta_loss)(learner_params, key, OUTER_BATCH)
        updates, optimizer_state = optimizer.update(gradients, optimizer_state, learner_params)
        return optax.apply_updates(learner_params, updates), optimizer_state, loss

    evaluate = jax.jit(lambda params, key: meta_loss(params, key, EVALUATION_TASKS))
    evaluation_key = jax.random.key(100)

    learner_params = program.init_learner(jax.random.key(3))
    before = float(evaluate(learner_params, evaluation_key))
    optimizer_state = optimizer.init(learner_params)
    print(f"Part 2: stateless MPLP learner, {meta_steps} meta-steps")
    started = time.perf_counter()
    for step in range(meta_steps):
        learner_params, optimizer_state, loss = meta_step(
            learner_params, optimizer_state, jax.random.fold_in(jax.random.key(4), step)
        )
        print(f"  meta-step {step + 1}: meta-loss {float(loss):.4f}")
    elapsed = time.perf_counter() - started
    after = float(evaluate(learner_params, evaluation_key))
    print(f"  meta-training took {elapsed:.1f} s, including compilation")
    print(f"  held-out meta-loss ({EVALUATION_TASKS} tasks): {before:.4f} -> {after:.4f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run both parts; ``--steps`` sets the number of meta-steps of part 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="meta-steps of part 2")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")

    print(mplp.summary(residual_graph(HIDDEN, "sum")))
    print()
    compare_with_sgd()
    meta_train(args.steps)


if __name__ == "__main__":
    main()
