"""The meta-trainer: calibration, the jitted meta-step, checkpoints, metrics and resumption.

A run folder holds ``config.json`` (the experiment), ``metrics.jsonl`` (one JSON object per
meta-step), ``checkpoint.npz`` (the latest state, written atomically) and
``checkpoint.prev.npz`` (the one before). Randomness is derived from the seed and the step
number alone, so a resumed run computes exactly what an uninterrupted one would on the same
devices (see `train` for runs that resume on another device count).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import Mesh

from mplp import learners
from mplp.meta import distributed
from mplp.meta.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
    snapshot_checkpoint,
    snapshot_name,
    snapshot_steps,
)
from mplp.meta.config import ConfigError, ExperimentConfig, parse_config
from mplp.meta.objective import mean_metrics, task_loss
from mplp.meta.optim import SkippedUpdateCounter, guarded_update, meta_optimizer
from mplp.meta.setup import Experiment, build_experiment, select

Array = jax.Array
logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
RESUME_ADJUSTABLE = (
    "meta_steps",
    "remat",
    "checkpoint_every",
    "keep_every",
    "log_every",
    "evaluation_runs",
)
"""Settings a resumed run may change: none of them alters the computed metrics."""


class MetaState(NamedTuple):
    """Everything that changes during meta-training.

    ``trainable`` holds ``learner`` (when the rule is meta-trained), ``prior`` (when the
    network prior is learned) and ``maml_prior`` (with the MAML baseline). ``frozen`` holds
    learner parameters that are not meta-trained (the MAML baseline's gradient learner).
    """

    trainable: dict[str, Any]
    frozen: dict[str, Any]
    opt_state: Any


class RunKeys(NamedTuple):
    """The independent random streams of a run, all derived from its seed."""

    init: Array
    pool: Array
    calibration: Array
    train: Array


def run_keys(seed: int) -> RunKeys:
    """Split the run's seed into its random streams."""
    return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def initial_meta_state(experiment: Experiment, keys: RunKeys, calibrate: bool) -> MetaState:
    """Initialise learner, prior and optimizer state; calibrate the learner if asked."""
    config = experiment.config
    learner_key, prior_key, maml_key = jax.random.split(keys.init, 3)
    learner_params = experiment.program.init_learner(learner_key)
    if calibrate and config.learner.kind != "gradient":
        learner_params = calibrate_learner(experiment, learner_params, keys)

    trainable: dict[str, Any] = {}
    frozen: dict[str, Any] = {}
    if config.train_learner:
        trainable["learner"] = learner_params
    else:
        frozen["learner"] = learner_params
    if config.learn_prior:
        trainable["prior"] = experiment.initial_prior(prior_key)
    if experiment.maml_program is not None:
        trainable["maml_prior"] = experiment.initial_prior(maml_key)
        frozen["maml_learner"] = experiment.maml_program.init_learner(maml_key)

    optimizer = meta_optimizer(config.meta_learning_rate)
    return MetaState(trainable, frozen, optimizer.init(trainable))


def calibrate_learner(experiment: Experiment, learner_params: Any, keys: RunKeys) -> Any:
    """Set the learner's standardisation statistics from fresh networks on real minibatches.

    Round r uses ``calibration_runs`` new networks from the initial distribution and one
    episode each; rounds after the first blend their values 50/50 into the running ones.
    """
    config = experiment.config
    program = experiment.program
    for round_index in range(config.calibration_rounds):
        round_key = jax.random.fold_in(keys.calibration, round_index)
        network_key, episode_key = jax.random.split(round_key)
        runs = config.calibration_runs
        states = jax.vmap(lambda k: program.init(k, config.inner_batch))(
            jax.random.split(network_key, runs)
        )
        episodes = jax.vmap(lambda k: experiment.family.sample_episode(k, experiment.family.data))(
            jax.random.split(episode_key, runs)
        )
        blend = None if round_index == 0 else 0.5
        learner_params = learners.calibrate(
            program, learner_params, states, episodes.train_x, episodes.train_y, blend=blend
        )
    return learner_params


def make_meta_loss(
    experiment: Experiment, mesh: Mesh | None = None
) -> Callable[..., tuple[Array, dict[str, Array]]]:
    """Build ``loss(trainable, frozen, pool, data, key) -> (meta_loss, metrics)``.

    The loss is the mean over an outer batch of tasks (a `jax.vmap`) of each task's
    meta-loss; with the MAML baseline, its independent meta-loss is added. With ``mesh``, the
    per-task keys are sharded along its ``"tasks"`` axis, so each device runs its share of
    the tasks.
    """
    config = experiment.config
    program, family, template = experiment.program, experiment.family, experiment.template
    maml_program = experiment.maml_program

    def one_task(trainable: dict, frozen: dict, pool: Any, data: Any, key: Array) -> Any:
        episode_key, pool_key = jax.random.split(key)
        episode = family.sample_episode(episode_key, data)
        if config.learn_prior:
            initial = trainable["prior"]
        else:
            index = jax.random.randint(pool_key, (), 0, config.pool_size)
            initial = select(pool, index)
        learner_params = trainable["learner"] if config.train_learner else frozen["learner"]
        state = program.replace_parameters(template, initial)
        loss, metrics = task_loss(
            program, learner_params, state, episode, config.hint_ratio, config.remat
        )

        if maml_program is not None:
            maml_state = maml_program.replace_parameters(template, trainable["maml_prior"])
            maml_loss, maml_metrics = task_loss(
                maml_program,
                frozen["maml_learner"],
                maml_state,
                episode,
                config.hint_ratio,
                config.remat,
            )
            loss = loss + maml_loss
            metrics.update({f"maml_{name}": value for name, value in maml_metrics.items()})
        return loss, metrics

    def meta_loss(
        trainable: dict, frozen: dict, pool: Any, data: Any, key: Array
    ) -> tuple[Array, dict[str, Array]]:
        keys = jax.random.split(key, config.outer_batch)
        if mesh is not None:
            keys = distributed.shard_task_keys(keys, mesh)
        losses, metrics = jax.vmap(one_task, in_axes=(None, None, None, None, 0))(
            trainable, frozen, pool, data, keys
        )
        return losses.mean(), mean_metrics(metrics)

    return meta_loss


def make_meta_step(experiment: Experiment, mesh: Mesh | None = None) -> Callable[..., Any]:
    """Build the jitted meta-step.

    ``step(meta_state, pool, data, key) -> (meta_state, applied, metrics)``: the meta-gradient
    through the whole unroll, each tensor normalised to unit norm, then Adam; skipped (state
    unchanged, ``applied`` False) when the loss or a gradient is not finite.

    With ``mesh`` (see `mplp.meta.distributed.task_mesh`), the outer batch of tasks is split
    across the mesh's devices. Every argument and result is replicated on all of them, and
    the meta-gradient is the mean over all tasks, as without a mesh.

    Raises:
        ConfigError: ``mesh`` is not a 1-D ``"tasks"`` mesh, or its device count does not
            divide ``outer_batch``.
    """
    if mesh is not None:
        distributed.check_task_mesh(mesh, experiment.config.outer_batch)
    meta_loss = make_meta_loss(experiment, mesh)
    optimizer = meta_optimizer(experiment.config.meta_learning_rate)
    gradient_fn = jax.value_and_grad(meta_loss, has_aux=True)

    def step(meta_state: MetaState, pool: Any, data: Any, key: Array) -> Any:
        (loss, metrics), grads = gradient_fn(
            meta_state.trainable, meta_state.frozen, pool, data, key
        )
        trainable, opt_state, applied = guarded_update(
            optimizer, grads, meta_state.opt_state, meta_state.trainable, loss
        )
        metrics["gradient_norm"] = optax.tree.norm(grads)
        return MetaState(trainable, meta_state.frozen, opt_state), applied, metrics

    if mesh is None:
        return jax.jit(step)
    replicated = distributed.replicated_sharding(mesh)
    return jax.jit(step, in_shardings=replicated, out_shardings=replicated)


@functools.lru_cache(maxsize=8)
def _cached_meta_step(experiment: Experiment, mesh: Mesh | None) -> Callable[..., Any]:
    # One jitted meta-step per experiment, so a resumed run in the same process (or a test
    # that trains twice) does not compile again.
    return make_meta_step(experiment, mesh)


def train(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: str | Path | None = None,
    meta_step_fn: Callable[..., Any] | None = None,
    devices: int | None = None,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Meta-train ``config`` into the run folder ``out_dir``.

    Args:
        config: The experiment; ``config.meta_steps`` is the total number of meta-steps.
        out_dir: Run folder. A new run needs an empty or missing folder; ``resume`` continues
            the run found there (its ``config.json`` must match ``config`` except for
            ``meta_steps``).
        resume: Continue from the last checkpoint.
        data_dir: Folder with the MNIST files, for MNIST experiments.
        meta_step_fn: Replaces the jitted meta-step (tests use it to inject failures).
        devices: Split the outer batch across the first ``devices`` of ``jax.devices()``.
        mesh: Split the outer batch across this 1-D mesh with the axis ``"tasks"``, for
            example `mplp.meta.distributed.global_mesh` in a multi-host run. Pass at most
            one of ``devices`` and ``mesh``. Without either, the run uses the default
            device. A run may resume with another device count. The device count changes
            the float rounding of the meta-gradient, which Adam can enlarge to a fraction of
            ``meta_learning_rate`` in parameters whose gradient is near zero, so such runs
            match to that level rather than bit for bit.

    Returns:
        A summary: the final step, the last metrics and the number of skipped updates.

    Raises:
        ConfigError: for a folder that holds another run, a resume without a checkpoint, more
            devices than available, or a device count that does not divide ``outer_batch``.
        NonFiniteUpdateError: after ``config.max_nonfinite`` skipped updates in a row.
    """
    out = Path(out_dir)
    task_mesh = distributed.resolve_mesh(devices, mesh)
    if task_mesh is not None:
        distributed.check_task_mesh(task_mesh, config.outer_batch)
    experiment = build_experiment(config, data_dir)
    keys = run_keys(config.seed)
    pool = experiment.initial_pool(keys.pool) if not config.learn_prior else {}

    if resume:
        start, meta_state = _resume(out, experiment, keys)
    else:
        # In a multi-process run, only process 0 writes the run folder.
        if distributed.is_main_process():
            _prepare_new_run(out, config)
        meta_state = initial_meta_state(experiment, keys, calibrate=True)
        start = 0
        _save(out, 0, meta_state, config)

    data = experiment.family.data
    if task_mesh is not None:
        meta_state, pool, data = distributed.replicate((meta_state, pool, data), task_mesh)
    step_fn = meta_step_fn or _cached_meta_step(experiment, task_mesh)
    counter = SkippedUpdateCounter(config.max_nonfinite)
    metrics: dict[str, float] = {}
    started = time.perf_counter()
    # Processes other than process 0 write their metric lines to the null device.
    metrics_path = out / METRICS_NAME if distributed.is_main_process() else Path(os.devnull)
    with metrics_path.open("a") as metrics_file:
        for step in range(start, config.meta_steps):
            key = jax.random.fold_in(keys.train, step)
            candidate, applied, raw_metrics = step_fn(meta_state, pool, data, key)
            metrics = {name: float(value) for name, value in raw_metrics.items()}
            applied_flag = bool(applied)
            if applied_flag:
                meta_state = candidate
            else:
                logger.warning(
                    "meta-step %d: non-finite loss or gradient (meta_loss=%s); update skipped",
                    step + 1,
                    metrics.get("meta_loss"),
                )
            record = {"step": step + 1, "applied": applied_flag, **metrics}
            metrics_file.write(json.dumps(record) + "\n")
            counter.record(applied_flag, step + 1)

            done = step + 1
            keep = config.keep_every is not None and done % config.keep_every == 0
            if done % config.checkpoint_every == 0 or done == config.meta_steps or keep:
                metrics_file.flush()
                if distributed.is_main_process():
                    # fsync of the null device fails with EINVAL.
                    os.fsync(metrics_file.fileno())
                _save(out, done, meta_state, config)
            if keep:
                snapshot_checkpoint(out, done)
            if done % config.log_every == 0 or done == config.meta_steps:
                _log_progress(done, start, config.meta_steps, started, metrics)

    return {
        "step": config.meta_steps,
        "metrics": metrics,
        "skipped_updates": counter.total,
        "out_dir": str(out),
    }


def load_run(
    out_dir: str | Path, data_dir: str | Path | None = None, step: int | None = None
) -> tuple[ExperimentConfig, int, MetaState]:
    """Read a run folder's configuration and a checkpoint (no calibration).

    Building the experiment loads the MNIST files of an MNIST run from ``data_dir``
    (``MPLP_DATA_DIR`` or the download cache when None).

    Args:
        out_dir: The run folder.
        data_dir: Folder with the MNIST files, for MNIST runs.
        step: Read the copy kept at this meta-step (``checkpoint-STEP.npz``, see
            ``keep_every``) instead of the latest checkpoint.

    Raises:
        ConfigError: when the folder is missing or is not a run folder. Also when no copy
            was kept at ``step``, with the kept steps in the message.
    """
    out = Path(out_dir)
    config = read_run_config(out)
    source: Path = out
    if step is not None:
        source = out / snapshot_name(step)
        if not source.is_file():
            kept_steps = ", ".join(str(kept) for kept in snapshot_steps(out)) or "none"
            raise ConfigError(
                f"{out} has no checkpoint kept at meta-step {step}; kept steps: {kept_steps} "
                "(set keep_every in the experiment to keep them)"
            )
    experiment = build_experiment(config, data_dir)
    like = initial_meta_state(experiment, run_keys(config.seed), calibrate=False)
    step, tree, _ = load_checkpoint(source, like=_checkpoint_tree(like))
    return config, step, MetaState(tree["trainable"], tree["frozen"], tree["opt_state"])


def read_run_config(out: Path) -> ExperimentConfig:
    """Read ``config.json`` of a run folder, with a one-line error when it is missing."""
    path = out / CONFIG_NAME
    if not out.is_dir():
        raise ConfigError(f"run folder {out} does not exist: pass the --out folder of a run")
    if not path.is_file():
        raise ConfigError(f"{out} is not a run folder: {CONFIG_NAME} is missing")
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    return parse_config(document, source=str(path))


def _prepare_new_run(out: Path, config: ExperimentConfig) -> None:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"run folder {out} is not empty: pass --resume to continue that run, "
            "or choose a new --out folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(config.model_dump_json(indent=2) + "\n")
    (out / METRICS_NAME).write_text("")


def _resume(out: Path, experiment: Experiment, keys: RunKeys) -> tuple[int, MetaState]:
    stored = read_run_config(out)
    config = experiment.config
    adjustable = {name: getattr(config, name) for name in RESUME_ADJUSTABLE}
    if stored.model_copy(update=adjustable) != config:
        raise ConfigError(
            f"{out} holds a run of another configuration: resume it with the same "
            f"experiment and seed (only {', '.join(RESUME_ADJUSTABLE)} may change)"
        )
    if not (out / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"no checkpoint in {out}: start the run without --resume")
    writer = distributed.is_main_process()
    if writer and config != stored:
        (out / CONFIG_NAME).write_text(config.model_dump_json(indent=2) + "\n")

    like = initial_meta_state(experiment, keys, calibrate=False)
    step, tree, _ = load_checkpoint(out, like=_checkpoint_tree(like))
    if writer:
        _truncate_metrics(out / METRICS_NAME, step)
    logger.info("resuming %s from meta-step %d", out, step)
    return step, MetaState(tree["trainable"], tree["frozen"], tree["opt_state"])


def _checkpoint_tree(meta_state: MetaState) -> dict[str, Any]:
    return {
        "trainable": meta_state.trainable,
        "frozen": meta_state.frozen,
        "opt_state": meta_state.opt_state,
    }


def _save(out: Path, step: int, meta_state: MetaState, config: ExperimentConfig) -> None:
    # The state is replicated on every device of a mesh, so copying it to the host gathers
    # nothing, and the checkpoint loads on any device count.
    tree = distributed.fetch_to_host(_checkpoint_tree(meta_state))
    save_checkpoint(out, step, tree, {"config": config.model_dump(mode="json")})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint, so a resumed run rewrites them."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if line.strip() and json.loads(line)["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def _log_progress(
    done: int, start: int, total: int, started: float, metrics: dict[str, float]
) -> None:
    elapsed = time.perf_counter() - started
    rate = (done - start) / elapsed if elapsed > 0 else math.nan
    remaining = (total - done) / rate if rate > 0 else math.nan
    logger.info(
        "meta-step %d/%d  meta_loss %.4f  cv_loss %.4f  %.2f steps/s  ETA %s",
        done,
        total,
        metrics.get("meta_loss", math.nan),
        metrics.get("cv_loss", math.nan),
        rate,
        _format_duration(remaining),
    )


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
