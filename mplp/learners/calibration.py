"""Input standardisation and output centring of learned learners, measured before training.

The procedure, following the MPLP paper's normalisation section:

1. Run the learner on a few inner training runs (fresh networks, real minibatches) with its
   current statistics, and record, for every standardiser slot and feature part, the mean and
   mean square of the raw (unstandardised) part over all nodes, examples and steps, and the mean
   of the raw update output.
2. Set ``shift = mean`` and ``scale = std`` for each part (``scale = 1`` where
   ``std < 1e-5``), and ``outputs.mean`` to the mean raw update, so the initial updates are
   centred at zero. Groups that share a slot contribute equally.
3. Optionally repeat with fresh networks, blending the new values into the old ones
   (``blend = 0.5`` averages them). The sinusoid experiment uses one round, MNIST five rounds
   of 20 minibatches.

The statistics are then frozen: `stateless` and `stateful` read them through
`jax.lax.stop_gradient`, so meta-training never changes them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mplp.graphcore import GraphError, LearnerParams, Program, State
from mplp.learners.learned import STD_FLOOR, standardiser_slot

Array = jax.Array


def measure_statistics(
    program: Program, learner_params: LearnerParams, states: State, xs: Array, targets: Array
) -> dict[str, dict[str, Array]]:
    """Run inner loops and return the raw statistics per standardiser slot.

    Args:
        program: A program compiled with a learned learner.
        learner_params: Its current parameters.
        states: Network states with a leading axis of R runs (e.g. ``jax.vmap(program.init)``).
        xs: ``(R, T, B, *in)`` minibatches; targets ``(R, T, B, *target)``.

    Returns:
        ``{slot: {"part/mean": value, "part/mean_square": value, "update/mean": value}}``.
    """
    sharing = _sharing_of(program, learner_params)
    per_group = _statistics_runner(program)(learner_params, states, xs, targets)

    collected: dict[str, dict[str, list[Array]]] = {}
    for info in program.learning_groups:
        name = info.group.name
        if name not in per_group:
            continue
        slot = standardiser_slot(info, sharing)
        for key, values in per_group[name].items():
            collected.setdefault(slot, {}).setdefault(key, []).append(jnp.mean(values))
    return {
        slot: {key: jnp.mean(jnp.stack(values)) for key, values in entries.items()}
        for slot, entries in collected.items()
    }


def calibrate(
    program: Program,
    learner_params: LearnerParams,
    states: State,
    xs: Array,
    targets: Array,
    blend: float | None = None,
) -> LearnerParams:
    """Measure statistics (see `measure_statistics`) and store them in the learner parameters.

    Args:
        blend: None replaces the stored values; a number in [0, 1] keeps that fraction of the
            stored values and takes the rest from the new measurement.

    Returns:
        New learner parameters; the rules and output scales are unchanged.
    """
    if blend is not None and not 0.0 <= blend <= 1.0:
        raise GraphError(f"blend {blend} is invalid: pass None or a number in [0, 1]")
    measured = measure_statistics(program, learner_params, states, xs, targets)

    standardisers = jax.tree.map(lambda value: value, learner_params["standardisers"])
    outputs = jax.tree.map(lambda value: value, learner_params["outputs"])
    for slot, statistics in measured.items():
        for part, entry in standardisers[slot].items():
            mean = statistics[f"{part}/mean"]
            variance = jnp.maximum(statistics[f"{part}/mean_square"] - mean**2, 0.0)
            std = jnp.sqrt(variance)
            scale = jnp.where(std < STD_FLOOR, 1.0, std)
            entry["shift"] = _blend(entry["shift"], mean, blend)
            entry["scale"] = _blend(entry["scale"], scale, blend)
        if slot in outputs and "update/mean" in statistics:
            outputs[slot]["mean"] = _blend(outputs[slot]["mean"], statistics["update/mean"], blend)

    return {**learner_params, "standardisers": standardisers, "outputs": outputs}


@functools.lru_cache(maxsize=16)
def _statistics_runner(program: Program) -> Callable[..., Any]:
    """The jitted, vmapped inner loop that returns the learner's diagnostics, one per program,
    so repeated calibration rounds reuse one compilation."""

    def run_one(learner_params: LearnerParams, state: State, x: Array, target: Array) -> Any:
        _, metrics = program.run(learner_params, state, x, target)
        return metrics["learner"]

    return jax.jit(jax.vmap(run_one, in_axes=(None, 0, 0, 0)))


def _blend(old: Array, new: Array, blend: float | None) -> Array:
    if blend is None:
        return jnp.asarray(new, jnp.float32)
    return jnp.asarray(blend * old + (1.0 - blend) * new, jnp.float32)


def _sharing_of(program: Program, learner_params: LearnerParams) -> str:
    sharing = program.learner.options.get("sharing")
    if sharing is None or not isinstance(learner_params, dict):
        raise GraphError(
            "calibrate needs a learned learner (stateless or stateful); "
            f"the program uses '{program.learner.name}'"
        )
    return str(sharing)
