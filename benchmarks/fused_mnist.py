"""A hand-written MNIST meta-step with the stateful learner, to time the framework against.

It computes what `mplp.meta.trainer.make_meta_step` computes for the ``mnist`` experiment:
a sigmoid MLP, softmax and cross-entropy clipped at 1e-7, the stateful learner with rules
shared by node family and standardisers and output scales per group, mean message
aggregation, and the meta-loss ``h * mean_t(hint_t) + (1 - h) * cv``. But it works directly
on arrays. The forward pass, the backward pass of every group and the updates are written
out for this one network, inside one `jax.lax.scan` over the inner steps. It builds no
graph, no schedule and no per-group state dicts. The library does not use this module.

The pieces it shares with the library are not part of the graph machinery: the learner
parameter layout (so both read the same parameters), the episode sampler of the task family,
the meta-optimizer, and `mplp.learners.rules.broadcast_first_axis`, the helper that keeps a
slow reduction of XLA's CPU backend out of the backward pass. It makes the library's other
implementation choices too: each feature part is projected on its own shape, and the cell is
rematerialised under differentiation.

`check_against_framework` compares its meta-loss and meta-gradient with the framework's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp import builders, learners
from mplp.learners.rules import broadcast_first_axis
from mplp.meta.objective import task_loss as framework_task_loss
from mplp.meta.optim import guarded_update, meta_optimizer
from mplp.meta.setup import Episode, Experiment, select
from mplp.meta.trainer import MetaState

Array = jax.Array
Params = dict[str, Any]

PROBABILITY_CLIP = 1e-7


class Layers(NamedTuple):
    """The network parameters as plain lists, layer by layer."""

    weights: list[Array]
    biases: list[Array]


class Forward(NamedTuple):
    """Every value a group's learner reads, from one forward pass.

    ``dense_inputs[l]`` feeds dense layer l, ``bias_inputs[l]`` is its output before the bias
    and ``pre_activations[l]`` the bias output (the last one is the logits).
    """

    dense_inputs: list[Array]
    bias_inputs: list[Array]
    pre_activations: list[Array]
    probabilities: Array


def check_supported(experiment: Experiment) -> None:
    """Raise ValueError unless ``experiment`` is a configuration this module reproduces."""
    config = experiment.config
    learner = config.learner
    problems = []
    if config.task.name != "mnist" or config.network.loss != "cross_entropy":
        problems.append("the task must be mnist with the cross_entropy loss")
    if config.network.activation != "sigmoid":
        problems.append("the hidden activation must be sigmoid")
    if learner.kind != "stateful" or learner.sharing != "kind" or learner.pass_gradient:
        problems.append("the learner must be stateful, sharing='kind', without pass_gradient")
    if not config.train_learner or config.learn_prior or config.maml_baseline:
        problems.append("only the learner may be meta-trained, without the MAML baseline")
    if problems:
        reasons = "; ".join(problems)
        raise ValueError(f"the fused MNIST meta-step cannot run '{config.name}': {reasons}")


def forward(layers: Layers, x: Array) -> Forward:
    """Run the MLP: ``x W + b`` per layer, sigmoid between layers, softmax at the end."""
    dense_inputs, bias_inputs, pre_activations = [], [], []
    hidden = x
    last = len(layers.weights) - 1
    for index, (weights, biases) in enumerate(zip(*layers, strict=True)):
        dense_inputs.append(hidden)
        projected = hidden @ weights
        bias_inputs.append(projected)
        pre_activation = projected + biases
        pre_activations.append(pre_activation)
        if index < last:
            hidden = jax.nn.sigmoid(pre_activation)
    probabilities = jax.nn.softmax(pre_activations[-1], axis=-1)
    return Forward(dense_inputs, bias_inputs, pre_activations, probabilities)


def cross_entropy(probabilities: Array, target: Array) -> Array:
    """Per-element loss ``-target * log(clip(p))``, shape ``(B, classes)``."""
    clipped = jnp.clip(probabilities, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -target * jnp.log(clipped)


def mean_loss(layers: Layers, x: Array, target: Array) -> Array:
    """Mean over examples of the summed per-class cross-entropy."""
    elementwise = cross_entropy(forward(layers, x).probabilities, target)
    return elementwise.sum(axis=-1).mean()


def cell(rule: Params, parts: Sequence[Array], carry: Array) -> Array:
    """Advance the carry of every node by one step of the stateful cell, with 2-D matrix
    products over rows.

    ``parts`` broadcast to ``carry.shape[:-1]``. Each first-layer product runs per part on
    the part's own shape and is broadcast only when added, as ``concat(parts) @ W`` equals
    the sum of the per-part products. Like the library's rule, the cell is rematerialised
    under differentiation (see `rematerialised_cell`).
    """
    leading = carry.shape[:-1]
    width = carry.shape[-1]
    rows = int(np.prod(leading))

    def first_layer(weights: Array) -> Array:
        total = None
        row = 0
        for part in parts:
            term = part @ weights[row : row + part.shape[-1]]
            row += part.shape[-1]
            if term.shape[0] < leading[0]:
                term = broadcast_first_axis(term, leading[0])
            total = term if total is None else total + term
        assert total is not None
        return jnp.broadcast_to(total, (*leading, weights.shape[1])).reshape(rows, -1)

    state = carry.reshape(rows, width)
    mlp_x, mlp_c = rule["mlp_x"], rule["mlp_c"]
    gates = state @ jnp.concatenate([rule["update_c"], rule["reset_c"]], axis=1)
    update = jax.nn.sigmoid(first_layer(rule["update_x"]) + gates[:, :width] + rule["update_b"])
    reset = jax.nn.sigmoid(first_layer(rule["reset_x"]) + gates[:, width:] + rule["reset_b"])

    from_x = jnp.tanh(first_layer(mlp_x[0]["w"]) + mlp_x[0]["b"])
    from_x = jnp.tanh(from_x @ mlp_x[1]["w"] + mlp_x[1]["b"]) @ mlp_x[2]["w"]
    from_c = jnp.tanh((reset * state) @ mlp_c[0]["w"] + mlp_c[0]["b"])
    from_c = jnp.tanh(from_c @ mlp_c[1]["w"] + mlp_c[1]["b"]) @ mlp_c[2]["w"]
    candidate = jnp.tanh(from_x + from_c + rule["candidate_b"])
    new_state = update * state + (1.0 - update) * candidate
    return new_state.reshape(carry.shape)


rematerialised_cell = jax.checkpoint(cell)
"""`cell` under `jax.checkpoint`: the backward pass recomputes its hidden layers."""


def standardise(parts: dict[str, Array], statistics: Params) -> list[Array]:
    """Apply the frozen per-part shift and scale, keeping the order of ``parts``.

    The order matters because it selects the rows of each first-layer matrix. The keys of
    ``statistics`` come back sorted from any `jax.tree.map`, so they cannot give it.
    """
    frozen = jax.lax.stop_gradient(statistics)
    return [(part - frozen[name]["shift"]) / frozen[name]["scale"] for name, part in parts.items()]


def parameter_change(update: Array, scaling: Params) -> Array:
    """Batch mean of the centred and scaled update channel."""
    centred = update - jax.lax.stop_gradient(scaling["mean"])
    return (centred * scaling["scale"]).mean(axis=0)


def init_carries(layers: Layers, batch: int, carry_width: int) -> dict[str, Array]:
    """Zero carries of every learning group, keyed by group name."""
    classes = layers.weights[-1].shape[1]
    carries = {
        "loss": jnp.zeros((batch, classes, carry_width)),
        "softmax": jnp.zeros((batch, classes, carry_width)),
    }
    for index, weights in enumerate(layers.weights):
        fan_in, fan_out = weights.shape
        carries[f"dense{index}"] = jnp.zeros((batch, fan_in, fan_out, carry_width))
        carries[f"bias{index}"] = jnp.zeros((batch, fan_out, carry_width))
        if index < len(layers.weights) - 1:
            carries[f"act{index}"] = jnp.zeros((batch, fan_out, carry_width))
    return carries


def learning_step(
    learner: Params,
    layers: Layers,
    carries: dict[str, Array],
    x: Array,
    target: Array,
    message_size: int,
) -> tuple[Layers, dict[str, Array], Array]:
    """Run one inner step: forward, every group's learner in backward order, the updates.

    Returns the new layers, the new carries and the minibatch loss before the update.
    """
    rules, statistics, scalings = learner["rules"], learner["standardisers"], learner["outputs"]
    values = forward(layers, x)
    elementwise = cross_entropy(values.probabilities, target)
    new_carries = {}

    def run(group: str, rule: str, parts: dict[str, Array]) -> Array:
        inputs = standardise(parts, statistics[group])
        new_carries[group] = rematerialised_cell(rules[rule], inputs, carries[group])
        return new_carries[group]

    # The loss nodes are seeded with their own per-element loss.
    probabilities = values.probabilities
    clipped = jnp.clip(probabilities, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    loss_parts = {
        "message": elementwise[..., None],
        "prediction": probabilities[..., None],
        "target": target[..., None],
        "extra": jnp.log(clipped)[..., None],
    }
    message = run("loss", "loss", loss_parts)[..., -message_size:]

    logits = values.pre_activations[-1]
    log_norm = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    shifted = logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    softmax_parts = {
        "message": message,
        "logit": logits[..., None],
        "shifted": shifted[..., None],
        "probability": jnp.exp(logits - log_norm)[..., None],
        "log_norm": log_norm[..., None],
    }
    message = run("softmax", "softmax", softmax_parts)[..., -message_size:]

    weights, biases = list(layers.weights), list(layers.biases)
    for index in reversed(range(len(weights))):
        bias_name, dense_name = f"bias{index}", f"dense{index}"
        bias_parts = {
            "message": message,
            "bias": biases[index][None, :, None],
            "input": values.bias_inputs[index][..., None],
        }
        bias_carry = run(bias_name, "bias", bias_parts)
        biases[index] = biases[index] + parameter_change(bias_carry[..., 0], scalings[bias_name])
        message = bias_carry[..., -message_size:]

        dense_parts = {
            "message": message[:, None],
            "weight": weights[index][None, :, :, None],
            "input": values.dense_inputs[index][:, :, None, None],
        }
        dense_carry = run(dense_name, "weight", dense_parts)
        change = parameter_change(dense_carry[..., 0], scalings[dense_name])
        weights[index] = weights[index] + change
        if index == 0:
            break  # the first layer's message has no receiver
        message = dense_carry[..., -message_size:].mean(axis=2)

        act_name = f"act{index - 1}"
        act_parts = {"message": message, "input": values.pre_activations[index - 1][..., None]}
        message = run(act_name, "activation", act_parts)[..., -message_size:]

    loss = elementwise.sum(axis=-1).mean()
    return Layers(weights, biases), new_carries, loss


def task_loss(
    learner: Params,
    network: Params,
    episode: Episode,
    hint_ratio: float,
    message_size: int,
    carry_width: int,
) -> tuple[Array, dict[str, Array]]:
    """Meta-loss of one task from the network parameters ``{"dense0": {"w"}, ...}``."""
    count = len([name for name in network if name.startswith("dense")])
    layers = Layers(
        [network[f"dense{index}"]["w"] for index in range(count)],
        [network[f"bias{index}"]["b"] for index in range(count)],
    )
    batch = episode.train_x.shape[1]
    carries = init_carries(layers, batch, carry_width)

    def body(carried: tuple[Layers, dict[str, Array]], batch_data: tuple[Array, Array]) -> Any:
        x, target = batch_data
        new_layers, new_carries, train_loss = learning_step(
            learner, carried[0], carried[1], x, target, message_size
        )
        hint = mean_loss(new_layers, x, target)
        return (new_layers, new_carries), {"train_loss": train_loss, "hint_loss": hint}

    (final, _), losses = jax.lax.scan(body, (layers, carries), (episode.train_x, episode.train_y))
    cv_loss = mean_loss(final, episode.validation_x, episode.validation_y)
    hint_loss = losses["hint_loss"].mean()
    total = hint_ratio * hint_loss + (1.0 - hint_ratio) * cv_loss
    metrics = {
        "meta_loss": total,
        "cv_loss": cv_loss,
        "hint_loss": hint_loss,
        "final_train_loss": losses["train_loss"][-1],
    }
    return total, metrics


def make_meta_step(experiment: Experiment) -> Callable[..., Any]:
    """Build the jitted hand-written meta-step, with the signature of the framework's.

    ``step(meta_state, pool, data, key) -> (meta_state, applied, metrics)``. Tasks, episodes
    and pool entries are drawn from ``key`` as `mplp.meta.trainer.make_meta_loss` draws them
    at the time of writing; the benchmark reports whether both meta-losses agree.
    """
    check_supported(experiment)
    config = experiment.config
    message_size = config.learner.message_size
    carry_width = 1 + config.learner.hidden_size + message_size
    family = experiment.family
    optimizer = meta_optimizer(config.meta_learning_rate)

    def one_task(learner: Params, pool: Any, data: Any, key: Array) -> Any:
        episode_key, pool_key = jax.random.split(key)
        episode = family.sample_episode(episode_key, data)
        network = select(pool, jax.random.randint(pool_key, (), 0, config.pool_size))
        return task_loss(learner, network, episode, config.hint_ratio, message_size, carry_width)

    def meta_loss(learner: Params, pool: Any, data: Any, key: Array) -> Any:
        keys = jax.random.split(key, config.outer_batch)
        losses, metrics = jax.vmap(one_task, in_axes=(None, None, None, 0))(
            learner, pool, data, keys
        )
        return losses.mean(), {name: value.mean() for name, value in metrics.items()}

    gradient_fn = jax.value_and_grad(meta_loss, has_aux=True)

    def step(meta_state: MetaState, pool: Any, data: Any, key: Array) -> Any:
        (loss, metrics), learner_grads = gradient_fn(
            meta_state.trainable["learner"], pool, data, key
        )
        grads = {"learner": learner_grads}
        trainable, opt_state, applied = guarded_update(
            optimizer, grads, meta_state.opt_state, meta_state.trainable, loss
        )
        metrics["gradient_norm"] = optax.tree.norm(grads)
        return MetaState(trainable, meta_state.frozen, opt_state), applied, metrics

    return jax.jit(step)


def check_against_framework(
    sizes: Sequence[int] = (12, 6, 3),
    steps: int = 3,
    batch: int = 4,
    validation: int = 5,
    message_size: int = 4,
    hidden_size: int = 7,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the meta-loss and its gradient both ways for random learner parameters and data.

    Every learner parameter, standardiser and output scale is drawn at random, so a term
    missing on either side changes the result. Returns the two losses, the fused loss with
    all output scales at zero (no parameter changes, to show how much the updates move the
    loss) and the two gradients with respect to the learner parameters.
    """
    hint_ratio = 0.7
    learner = learners.stateful(message_size, hidden_size, sharing="kind")
    program = builders.mlp(sizes, learner=learner, activation="sigmoid", loss="cross_entropy")
    rng = np.random.default_rng(seed)

    init = jax.jit(program.init_learner)(jax.random.key(seed))
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), init)
    params["rules"] = jax.tree.map(
        lambda leaf: (0.5 * rng.normal(size=leaf.shape)).astype(np.float32), params["rules"]
    )
    params["standardisers"] = jax.tree.map(
        lambda leaf: np.float32(rng.uniform(0.5, 1.5)), params["standardisers"]
    )
    params["outputs"] = jax.tree.map(
        lambda leaf: np.float32(rng.uniform(0.5, 1.0)), params["outputs"]
    )

    # Weights of unit scale make the loss depend on the updates to first order.
    state = jax.jit(program.init, static_argnums=1)(jax.random.key(seed + 1), batch)
    network = jax.tree.map(
        lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), program.parameters(state)
    )
    state = program.replace_parameters(state, network)
    classes = sizes[-1]
    episode = Episode(
        train_x=rng.normal(size=(steps, batch, sizes[0])).astype(np.float32),
        train_y=np.eye(classes, dtype=np.float32)[rng.integers(0, classes, (steps, batch))],
        validation_x=rng.normal(size=(validation, sizes[0])).astype(np.float32),
        validation_y=np.eye(classes, dtype=np.float32)[rng.integers(0, classes, validation)],
    )
    carry_width = 1 + hidden_size + message_size

    def framework(learner_params: Params) -> Array:
        return framework_task_loss(program, learner_params, state, episode, hint_ratio)[0]

    def fused(learner_params: Params) -> Array:
        return task_loss(learner_params, network, episode, hint_ratio, message_size, carry_width)[0]

    framework_loss, framework_grad = jax.jit(jax.value_and_grad(framework))(params)
    fused_value_and_grad = jax.jit(jax.value_and_grad(fused))
    fused_loss, fused_grad = fused_value_and_grad(params)
    frozen = dict(params, outputs=jax.tree.map(np.zeros_like, params["outputs"]))
    frozen_loss, _ = fused_value_and_grad(frozen)
    return {
        "framework_loss": float(framework_loss),
        "fused_loss": float(fused_loss),
        "no_update_loss": float(frozen_loss),
        "framework_grad": framework_grad,
        "fused_grad": fused_grad,
    }
