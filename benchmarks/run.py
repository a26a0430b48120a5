"""Measure mplp's meta-step, inner step, evaluation, FLOP rate and memory on this machine.

Run it from the repository root:

    python benchmarks/run.py [--quick] [--json OUT] [--repeats N] [--data-dir DIR] [--rss]

It prints tables and, with ``--json``, writes every number with its raw samples. Timed calls
of the variants being compared are interleaved (A, B, A, B, ...) and summarised by their
median, so a change in the machine's load during the run affects both sides alike. Compare
ratios from one run rather than absolute times across runs. docs/performance.md explains
each number and records a run.

``--quick`` times the sinusoid and MNIST experiments with the stateful learner only, with 10
instead of 100 evaluation runs, and skips the memory sweep and the side-by-side comparisons.
It took about 2 minutes on the two-core machine of docs/performance.md.
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

# The repository root goes on the import path first, so `python benchmarks/run.py` imports
# this checkout's mplp without installing it; hence the file-wide E402 exemption above.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import fused_mnist
import jax
import jax.numpy as jnp
import numpy as np
import variants

from mplp.graphcore import GroupInfo, Program
from mplp.learners import rule_slot
from mplp.meta.config import EXPERIMENTS, ExperimentConfig
from mplp.meta.setup import Experiment, build_experiment, select
from mplp.meta.trainer import MetaState, initial_meta_state, make_meta_step, run_keys
from mplp.tasks import mnist_io

GIB = 1024**3
MEMORY_LIMIT_GIB = 8.0
EVALUATION_RUNS = 100
QUICK_EVALUATION_RUNS = 10
MATMUL_SIZE = 2048
BACKWARD_FACTOR = 3
"""A meta-step costs about this many forward passes per inner step: the forward pass and a
backward pass of about twice its cost. Rematerialisation adds one more forward pass."""


class Timing(NamedTuple):
    """Per-call wall-clock and process CPU seconds of one timed function."""

    wall: list[float]
    cpu: list[float]

    @property
    def median_wall(self) -> float:
        return float(np.median(self.wall))

    @property
    def median_cpu(self) -> float:
        return float(np.median(self.cpu))


class Setup(NamedTuple):
    """One experiment ready to run: its objects and the arguments of every timed call."""

    label: str
    config: ExperimentConfig
    experiment: Experiment
    meta_state: MetaState
    pool: Any
    key: jax.Array


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run, see the module help")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed calls per function after one warm-up call (default 3, or 2 with --quick)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST .gz files "
        "(default: MPLP_DATA_DIR, else ../shared/data/mnist next to the repository)",
    )
    parser.add_argument(
        "--rss",
        action="store_true",
        help="also measure the peak resident memory of one MNIST "
        "meta-step per memory setting, each in its own subprocess (several minutes)",
    )
    parser.add_argument("--child-rss", nargs=2, metavar=("STEPS", "REMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} is invalid: pass at least 1")
    return args


def mnist_data_dir(requested: Path | None) -> Path:
    """Return the MNIST folder, raising SystemExit when a file is missing (no download)."""
    if requested is not None:
        directory = requested
    elif os.environ.get(mnist_io.DATA_DIR_ENV):
        directory = Path(os.environ[mnist_io.DATA_DIR_ENV])
    else:
        directory = REPO_ROOT.parent / "shared" / "data" / "mnist"
    missing = [name for name in mnist_io.MNIST_FILES if not (directory / name).is_file()]
    if missing:
        raise SystemExit(
            f"MNIST files not found in {directory}: {', '.join(missing)}. Pass --data-dir or "
            f"set {mnist_io.DATA_DIR_ENV}; the benchmark does not download them."
        )
    return directory


def environment(argv: list[str]) -> dict[str, Any]:
    """Describe the code and machine: commit, uncommitted files, CPU, versions, load."""

    def git(*command: str) -> str:
        result = subprocess.run(
            ["git", *command], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout

    # Porcelain lines are "XY path": two status letters and a space before the path.
    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    cpu_model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "command": " ".join(["python", "benchmarks/run.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_files": changed,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(device) for device in jax.devices()],
    }


# Timing.


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Call every function once to warm up, then ``repeats`` rounds of one call each.

    Every round calls the functions in the same order, so slow phases of a shared machine
    hit all of them. Each call waits for its results (`jax.block_until_ready`). Returns the
    timings and the result of each warm-up call.
    """
    outputs = {name: jax.block_until_ready(call()) for name, call in calls.items()}
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            jax.block_until_ready(call())
            samples[name][0].append(time.perf_counter() - wall_start)
            samples[name][1].append(time.process_time() - cpu_start)
    return {name: Timing(*values) for name, values in samples.items()}, outputs


def compile_timed(function: Any, *args: Any) -> tuple[Any, float]:
    """Lower and compile a jitted function for ``args``; return it and the wall seconds."""
    start = time.perf_counter()
    compiled = function.lower(*args).compile()
    return compiled, time.perf_counter() - start


def measure_peak(repeats: int) -> dict[str, Any]:
    """Best rate of a jitted float32 2048 x 2048 @ 2048 x 2048 matrix product, in GFLOP/s."""
    size = MATMUL_SIZE
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    timing = time_interleaved({"matmul": lambda: matmul(a, a)}, repeats)[0]["matmul"]
    best = min(timing.wall)
    return {"gflops": 2 * size**3 / best / 1e9, "best_s": best, "wall_s": timing.wall}


# Experiments.


def make_config(name: str, kind: str, **changes: Any) -> ExperimentConfig:
    """Return the built-in experiment ``name`` with learner kind ``kind`` and other changes."""
    base = EXPERIMENTS[name]
    learner = base.learner.model_copy(update={"kind": kind})
    return base.model_copy(update={"learner": learner, **changes})


def prepare(label: str, config: ExperimentConfig, data_dir: Path) -> Setup:
    """Build an experiment and an uncalibrated meta-state and pool (compiled, not eager)."""
    experiment = build_experiment(config, data_dir)
    keys = run_keys(config.seed)
    meta_state = jax.jit(lambda k: initial_meta_state(experiment, k, calibrate=False))(keys)
    pool = jax.jit(experiment.initial_pool)(keys.pool)
    return Setup(label, config, experiment, meta_state, pool, keys.train)


def meta_step_call(setup: Setup, step: Any) -> Callable[[], Any]:
    """Bind a compiled meta-step to the setup's arguments."""
    data = setup.experiment.family.data
    return functools.partial(step, setup.meta_state, setup.pool, data, setup.key)


def compile_meta_step(
    setup: Setup, replacements: tuple[variants.Variant, ...] = ()
) -> tuple[Any, float]:
    """Compile the library's meta-step for ``setup``, optionally with rules replaced."""
    data = setup.experiment.family.data
    with variants.patched(replacements):
        return compile_timed(
            make_meta_step(setup.experiment), setup.meta_state, setup.pool, data, setup.key
        )


def learner_params(setup: Setup) -> Any:
    return setup.meta_state.trainable["learner"]


def one_network(setup: Setup) -> Any:
    """Return the first pool entry in a fresh state for the experiment's minibatch size."""
    program = setup.experiment.program
    return program.replace_parameters(setup.experiment.template, select(setup.pool, 0))


def episodes(setup: Setup, count: int) -> Any:
    family = setup.experiment.family
    keys = jax.random.split(jax.random.fold_in(setup.key, 1), count)
    return jax.jit(jax.vmap(lambda key: family.sample_episode(key, family.data)))(keys)


# FLOP counts.


def rule_macs_per_node(rule_params: Any, info: GroupInfo) -> int:
    """Multiply-adds of one rule evaluation on one node of ``info``'s group: one per entry
    of every weight matrix whose output the group uses.

    A stateless rule's f (update) counts only on groups with parameters and its g (message)
    only on groups that send messages, since XLA drops the other's unused evaluation. The
    first layer is counted in full, as a concatenated input would need. Projecting each
    feature part on its own unbroadcast shape does less work (see docs/performance.md).
    """
    if "f" in rule_params or "g" in rule_params:
        used = []
        if "f" in rule_params and info.kind.update_field is not None:
            used.append(rule_params["f"])
        if "g" in rule_params and info.sends_messages:
            used.append(rule_params["g"])
        rule_params = used
    return sum(int(leaf.size) for leaf in jax.tree.leaves(rule_params) if leaf.ndim == 2)


def network_macs(program: Program) -> int:
    """Multiply-adds of one example's forward pass: one per dense synapse."""
    return sum(math.prod(g.shape) for g in program.graph.groups if g.kind == "dense")


def step_flops(program: Program, params: Any, batch: int) -> int:
    """Forward FLOPs of one learning step: the network's forward pass and every rule."""
    sharing = program.learner.options["sharing"]
    macs = network_macs(program)
    for info in program.learning_groups:
        rule = params["rules"][rule_slot(info, sharing)]
        macs += math.prod(info.group.shape) * rule_macs_per_node(rule, info)
    return 2 * batch * macs


def meta_step_flops(setup: Setup) -> dict[str, int]:
    """Estimated FLOPs of one meta-step and of its parts (see `BACKWARD_FACTOR`)."""
    config = setup.config
    program = setup.experiment.program
    step = step_flops(program, learner_params(setup), config.inner_batch)
    hint = 2 * config.inner_batch * network_macs(program)
    validation = 2 * config.validation_size * network_macs(program)
    passes = BACKWARD_FACTOR + (1 if config.remat else 0)
    per_task = config.inner_steps * (passes * step + hint) + validation
    return {"step_forward": step, "meta_step": config.outer_batch * per_task}


def xla_flops(compiled: Any) -> float:
    """XLA's own FLOP count; it counts the body of a loop (the inner-step scan) once."""
    return float(compiled.cost_analysis()["flops"])


def memory_of(compiled: Any) -> dict[str, float]:
    """Buffer sizes from XLA's buffer assignment, in bytes, and their total in GiB."""
    stats = compiled.memory_analysis()
    sizes = {
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
    }
    total = sizes["argument_bytes"] + sizes["output_bytes"] - sizes["alias_bytes"]
    total += sizes["temp_bytes"]
    return {**sizes, "total_gib": total / GIB}


# Sections of the report.


def compile_configuration(
    setup: Setup, runs: int
) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    """Compile the meta-step, inner step and evaluation of ``setup`` and count their FLOPs.

    Returns the results so far and a ready call per timed function: ``meta_step``,
    ``inner_step`` (one learning step), ``one_run`` (T learning steps of one network) and
    ``evaluation`` (T steps of ``runs`` networks at once, one `jax.vmap`).
    """
    program = setup.experiment.program
    config = setup.config
    entry: dict[str, Any] = {
        "experiment": config.name,
        "learner": config.learner.kind,
        "inner_steps": config.inner_steps,
        "inner_batch": config.inner_batch,
        "outer_batch": config.outer_batch,
        "evaluation_runs": runs,
        "compile_s": {},
        "flops": meta_step_flops(setup),
    }
    calls: dict[str, Callable[[], Any]] = {}

    meta_step, entry["compile_s"]["meta_step"] = compile_meta_step(setup)
    entry["xla_flops"] = {"meta_step": xla_flops(meta_step)}
    entry["memory"] = memory_of(meta_step)
    calls["meta_step"] = meta_step_call(setup, meta_step)

    params = learner_params(setup)
    sampled = episodes(setup, runs)
    x, target = sampled.train_x[0, 0], sampled.train_y[0, 0]
    inner_step, entry["compile_s"]["inner_step"] = compile_timed(
        jax.jit(program.step), params, one_network(setup), x, target
    )
    entry["xla_flops"]["inner_step"] = xla_flops(inner_step)
    calls["inner_step"] = functools.partial(inner_step, params, one_network(setup), x, target)

    one_run, entry["compile_s"]["one_run"] = compile_timed(
        jax.jit(program.run), params, one_network(setup), sampled.train_x[0], sampled.train_y[0]
    )
    calls["one_run"] = functools.partial(
        one_run, params, one_network(setup), sampled.train_x[0], sampled.train_y[0]
    )

    init = functools.partial(program.init, batch_size=config.inner_batch)
    states = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(1), runs))
    evaluate = jax.jit(jax.vmap(program.run, in_axes=(None, 0, 0, 0)))
    arguments = (params, states, sampled.train_x, sampled.train_y)
    evaluation, entry["compile_s"]["evaluation"] = compile_timed(evaluate, *arguments)
    calls["evaluation"] = functools.partial(evaluation, *arguments)
    entry["flops"]["evaluation"] = runs * config.inner_steps * entry["flops"]["step_forward"]
    return entry, calls


def benchmark_configurations(
    setups: list[Setup], repeats: int, runs: int
) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    """Compile and time the meta-step, inner step and evaluation of each setup.

    Each kind of function is timed for all setups interleaved. The evaluation of ``runs``
    networks is the slowest call, so it gets at most two timed rounds. Returns the results
    and the call of each setup's compiled meta-step, by setup label.
    """
    results: dict[str, Any] = {}
    calls_by_kind: dict[str, dict[str, Callable[[], Any]]] = {}
    for setup in setups:
        print(f"compiling {setup.label} ...", flush=True)
        results[setup.label], calls = compile_configuration(setup, runs)
        for kind, call in calls.items():
            calls_by_kind.setdefault(kind, {})[setup.label] = call

    print("timing meta-steps, inner steps and evaluation runs ...", flush=True)
    for kind, calls in calls_by_kind.items():
        rounds = min(repeats, 2) if kind == "evaluation" else repeats
        for label, timing in time_interleaved(calls, rounds)[0].items():
            results[label][f"{kind}_s"] = timing.median_wall
            results[label][f"{kind}_cpu_s"] = timing.median_cpu
            results[label][f"{kind}_samples"] = timing._asdict()

    for entry in results.values():
        flops = entry["flops"]
        entry["evaluation_steps_per_s"] = (
            entry["evaluation_runs"] * entry["inner_steps"] / entry["evaluation_s"]
        )
        entry["gflops_per_s"] = {
            "meta_step": flops["meta_step"] / entry["meta_step_s"] / 1e9,
            "inner_step": flops["step_forward"] / entry["inner_step_s"] / 1e9,
            "evaluation": flops["evaluation"] / entry["evaluation_s"] / 1e9,
        }
    return results, calls_by_kind["meta_step"]


class Comparison(NamedTuple):
    """One side-by-side timing: a variant against the library's meta-step."""

    name: str
    baseline: str
    description: str
    call: Callable[[], Any]
    memory: dict[str, float]


def benchmark_comparisons(
    stateful: Setup,
    stateless: Setup,
    remat: Setup,
    meta_steps: dict[str, Callable[[], Any]],
    repeats: int,
) -> tuple[dict[str, Any], Any]:
    """Time rule variants, rematerialisation and the hand-written meta-step against the
    library's MNIST meta-steps (``meta_steps``, by setup label), all calls interleaved.

    Returns the results and the buffer sizes of the meta-step with rematerialisation.
    """
    baselines = {setup.label: meta_steps[setup.label] for setup in (stateful, stateless)}
    comparisons: list[Comparison] = []
    compile_s: dict[str, float] = {}

    print("compiling the variants ...", flush=True)

    replacements = (
        ("concatenated_input", stateful, variants.CONCATENATED_INPUT),
        ("shared_projection", stateful, variants.SHARED_STATEFUL),
        ("plain_broadcast", stateful, variants.PLAIN_BROADCAST),
        ("rule_not_rematerialised", stateful, variants.STATEFUL_NOT_REMATERIALISED),
        ("shared_projection_fg", stateless, variants.SHARED_STATELESS),
        ("rule_not_rematerialised_fg", stateless, variants.STATELESS_NOT_REMATERIALISED),
    )
    for name, setup, variant in replacements:
        compiled, compile_s[name] = compile_meta_step(setup, (variant,))
        if compiled.as_text() == baselines[setup.label].func.as_text():
            raise RuntimeError(
                f"variant {name} compiled to the library's program: the replacement of "
                f"rules.{variant.attribute} did not take effect"
            )
        call = meta_step_call(setup, compiled)
        comparisons.append(
            Comparison(name, setup.label, variant.description, call, memory_of(compiled))
        )

    remat_step, compile_s["remat"] = compile_meta_step(remat)
    comparisons.append(
        Comparison(
            "remat",
            stateful.label,
            "remat=True (jax.checkpoint per inner step)",
            meta_step_call(remat, remat_step),
            memory_of(remat_step),
        )
    )

    fused_step, compile_s["fused"] = compile_timed(
        fused_mnist.make_meta_step(stateful.experiment),
        stateful.meta_state,
        stateful.pool,
        stateful.experiment.family.data,
        stateful.key,
    )
    comparisons.append(
        Comparison(
            "fused",
            stateful.label,
            "hand-written fused meta-step (benchmarks/fused_mnist.py)",
            meta_step_call(stateful, fused_step),
            memory_of(fused_step),
        )
    )

    print("timing the comparisons ...", flush=True)
    calls = dict(baselines)
    calls.update({comparison.name: comparison.call for comparison in comparisons})
    timings, outputs = time_interleaved(calls, repeats)
    losses = {name: float(output[2]["meta_loss"]) for name, output in outputs.items()}

    results: dict[str, Any] = {"compile_s": compile_s, "baselines": {}, "variants": {}}
    for label in baselines:
        results["baselines"][label] = {
            "meta_step_s": timings[label].median_wall,
            "meta_step_cpu_s": timings[label].median_cpu,
            "samples": timings[label]._asdict(),
            "meta_loss": losses[label],
        }
    for comparison in comparisons:
        timing, base = timings[comparison.name], timings[comparison.baseline]
        results["variants"][comparison.name] = {
            "baseline": comparison.baseline,
            "description": comparison.description,
            "meta_step_s": timing.median_wall,
            "meta_step_cpu_s": timing.median_cpu,
            "ratio_wall": timing.median_wall / base.median_wall,
            "ratio_cpu": timing.median_cpu / base.median_cpu,
            "meta_loss_difference": losses[comparison.name] - losses[comparison.baseline],
            "memory_total_gib": comparison.memory["total_gib"],
            "samples": timing._asdict(),
        }
    return results, memory_of(remat_step)


def benchmark_memory(
    data_dir: Path, known: dict[tuple[int, bool], dict[str, float]], rss: bool
) -> list[dict[str, Any]]:
    """Buffer sizes of the MNIST stateful meta-step for T = 20 and 100, with and without
    rematerialisation, compiling the settings missing from ``known``; with ``rss``, also
    the peak RSS of a subprocess that runs one meta-step per setting."""
    results = []
    for steps in (20, 100):
        for remat in (False, True):
            memory = known.get((steps, remat))
            if memory is None:
                print(
                    f"compiling the MNIST meta-step for T = {steps}, remat={remat} ...", flush=True
                )
                config = make_config("mnist", "stateful", inner_steps=steps, remat=remat)
                compiled, _ = compile_meta_step(prepare("memory", config, data_dir))
                memory = memory_of(compiled)
            entry: dict[str, Any] = {"inner_steps": steps, "remat": remat, **memory}
            entry["fits_8_gib"] = entry["total_gib"] < MEMORY_LIMIT_GIB
            if rss:
                entry["peak_rss_gib"] = child_peak_rss(data_dir, steps, remat)
            results.append(entry)
    return results


def child_peak_rss(data_dir: Path, steps: int, remat: bool) -> float:
    """Run one meta-step in a fresh process and return its peak resident memory in GiB."""
    print(f"measuring the peak RSS for T = {steps}, remat={remat} ...", flush=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--data-dir",
        str(data_dir),
        "--child-rss",
        str(steps),
        str(int(remat)),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_rss_gib"])


def run_child_rss(data_dir: Path, steps: int, remat: bool) -> None:
    """Child process of `child_peak_rss`: one compiled meta-step, then print the peak RSS.

    The peak is the VmHWM line of /proc/self/status, the high-water mark of this process's
    own memory. ``getrusage``'s ``ru_maxrss`` would not do: Linux carries the parent's peak
    over into a child that it forks and executes, and the parent keeps many compiled
    programs in memory.
    """
    status = Path("/proc/self/status")
    if not status.is_file():
        raise SystemExit("--rss reads /proc/self/status, which exists on Linux only")
    config = make_config("mnist", "stateful", inner_steps=steps, remat=remat)
    setup = prepare("rss", config, data_dir)
    compiled, _ = compile_meta_step(setup)
    jax.block_until_ready(meta_step_call(setup, compiled)())
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            kibibytes = int(line.split()[1])
            print(json.dumps({"peak_rss_gib": kibibytes * 1024 / GIB}))
            return
    raise SystemExit("/proc/self/status has no VmHWM line")


# Output.


def print_report(report: dict[str, Any]) -> None:
    peak = report["peak"]["gflops"]
    start, end = report["peak"]["start"]["gflops"], report["peak"]["end"]["gflops"]
    print()
    print(
        f"float32 {MATMUL_SIZE} x {MATMUL_SIZE} matmul peak: {peak:.1f} GFLOP/s "
        f"(best of {len(report['peak']['start']['wall_s'])} at the start: {start:.1f}, "
        f"at the end: {end:.1f})"
    )
    print()
    print(
        f"{'configuration':18s} {'compile s':>9s} {'meta-step s':>11s} {'cpu s':>6s} "
        f"{'step ms':>8s} {'run s':>6s} {'eval steps/s':>12s}"
    )
    for label, entry in report["configurations"].items():
        print(
            f"{label:18s} {entry['compile_s']['meta_step']:9.1f} {entry['meta_step_s']:11.3f} "
            f"{entry['meta_step_cpu_s']:6.2f} {entry['inner_step_s'] * 1e3:8.1f} "
            f"{entry['one_run_s']:6.3f} {entry['evaluation_steps_per_s']:12.1f}"
        )
    print()
    print(
        f"{'configuration':18s} {'meta GFLOP':>10s} {'XLA GFLOP':>9s} {'meta GFLOP/s':>12s} "
        f"{'% peak':>6s} {'eval GFLOP/s':>12s} {'% peak':>6s}"
    )
    for label, entry in report["configurations"].items():
        rates = entry["gflops_per_s"]
        print(
            f"{label:18s} {entry['flops']['meta_step'] / 1e9:10.2f} "
            f"{entry['xla_flops']['meta_step'] / 1e9:9.2f} {rates['meta_step']:12.1f} "
            f"{100 * rates['meta_step'] / peak:6.1f} {rates['evaluation']:12.1f} "
            f"{100 * rates['evaluation'] / peak:6.1f}"
        )

    if report.get("comparisons"):
        print()
        print(
            f"{'variant':27s} {'baseline':16s} {'s':>7s} {'ratio':>6s} {'cpu ratio':>9s} "
            f"{'GiB':>6s} {'d meta-loss':>11s}  description"
        )
        results = report["comparisons"]
        for label, entry in results["baselines"].items():
            memory = report["configurations"][label]["memory"]["total_gib"]
            print(
                f"{label:27s} {'-':16s} {entry['meta_step_s']:7.2f} {1.0:6.3f} {1.0:9.3f} "
                f"{memory:6.2f} {0.0:11.2e}  the library"
            )
        for name, entry in results["variants"].items():
            print(
                f"{name:27s} {entry['baseline']:16s} {entry['meta_step_s']:7.2f} "
                f"{entry['ratio_wall']:6.3f} {entry['ratio_cpu']:9.3f} "
                f"{entry['memory_total_gib']:6.2f} {entry['meta_loss_difference']:11.2e}  "
                f"{entry['description']}"
            )

    print()
    print(
        f"{'MNIST stateful meta-step':26s} {'temp GiB':>8s} {'args GiB':>8s} {'total GiB':>9s} "
        f"{'RSS GiB':>8s}  fits {MEMORY_LIMIT_GIB:g} GiB"
    )
    for entry in report["memory"]:
        rss = f"{entry['peak_rss_gib']:8.2f}" if "peak_rss_gib" in entry else f"{'-':>8s}"
        label = f"T = {entry['inner_steps']}, remat={entry['remat']}"
        print(
            f"{label:26s} {entry['temp_bytes'] / GIB:8.2f} {entry['argument_bytes'] / GIB:8.2f} "
            f"{entry['total_gib']:9.2f} {rss}  {entry['fits_8_gib']}"
        )
    print()
    sections = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["section_s"].items())
    print(
        f"total benchmark time {report['total_s']:.0f} s ({sections}); load average at start "
        f"{report['environment']['load_average_at_start'][0]:.1f}, at end "
        f"{report['load_average_at_end'][0]:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    data_dir = mnist_data_dir(args.data_dir)
    if args.child_rss:
        run_child_rss(data_dir, int(args.child_rss[0]), bool(int(args.child_rss[1])))
        return 0

    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment(argv),
        "quick": args.quick,
        "repeats": args.repeats,
    }
    peak_repeats = 3 if args.quick else 5
    report["peak"] = {"start": measure_peak(peak_repeats)}

    if args.quick:
        kinds = [("sinusoid", "stateful"), ("mnist", "stateful")]
    else:
        kinds = [("sinusoid", "stateless"), ("sinusoid", "stateful")]
        kinds += [("mnist", "stateless"), ("mnist", "stateful")]
    setups = {
        f"{name}-{kind}": prepare(f"{name}-{kind}", make_config(name, kind), data_dir)
        for name, kind in kinds
    }
    runs = QUICK_EVALUATION_RUNS if args.quick else EVALUATION_RUNS
    sections: dict[str, float] = {}
    section_start = time.perf_counter()
    report["configurations"], meta_steps = benchmark_configurations(
        list(setups.values()), args.repeats, runs
    )
    sections["configurations"] = time.perf_counter() - section_start

    known = {(20, False): report["configurations"]["mnist-stateful"]["memory"]}
    if args.quick:
        entry: dict[str, Any] = {"inner_steps": 20, "remat": False, **known[(20, False)]}
        entry["fits_8_gib"] = entry["total_gib"] < MEMORY_LIMIT_GIB
        report["memory"] = [entry]
    else:
        section_start = time.perf_counter()
        remat = prepare(
            "mnist-stateful-remat", make_config("mnist", "stateful", remat=True), data_dir
        )
        report["comparisons"], known[(20, True)] = benchmark_comparisons(
            setups["mnist-stateful"], setups["mnist-stateless"], remat, meta_steps, args.repeats
        )
        sections["comparisons"] = time.perf_counter() - section_start
        section_start = time.perf_counter()
        report["memory"] = benchmark_memory(data_dir, known, args.rss)
        sections["memory"] = time.perf_counter() - section_start
    report["section_s"] = sections

    report["peak"]["end"] = measure_peak(peak_repeats)
    report["peak"]["gflops"] = max(
        report["peak"]["start"]["gflops"], report["peak"]["end"]["gflops"]
    )
    report["load_average_at_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - started
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
