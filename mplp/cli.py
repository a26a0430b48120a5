"""The ``mplp`` command: meta-train, evaluate, list the experiments, draw a graph.

Usage::

    mplp train sinusoid --out runs/sinusoid [--steps N] [--seed S] [--resume] [--data-dir D]
    mplp evaluate runs/sinusoid [--runs N] [--seed S] [--data-dir D] [--transfer step]
    mplp evaluate --pretrained sinusoid [--out DIR] [--baseline adam=0.01]
    mplp sweep mnist [--optimizer sgd] [--rates 0.01 0.1 1] [--runs N] [--out sweep.json]
    mplp curve runs/mnist [--out curve.png] [--window 50]
    mplp experiments
    mplp graph show sinusoid --out graph.png [--summary]

Invalid arguments and unusable run folders end the command with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mplp.graphcore import Graph, GraphError, Program, draw, load_graph, summary
from mplp.meta.checkpoint import CheckpointError
from mplp.meta.config import (
    EXPERIMENTS,
    BaselineConfig,
    ConfigError,
    ExperimentConfig,
    get_experiment,
)
from mplp.meta.evaluation import (
    TRANSFERS,
    EvaluationResult,
    evaluate,
    format_table,
    sweep_learning_rates,
    transfer_overrides,
)
from mplp.meta.figures import plot_evaluation, plot_meta_training
from mplp.meta.optim import NonFiniteUpdateError
from mplp.meta.setup import build_experiment, build_learner, build_program
from mplp.meta.trainer import CONFIG_NAME, METRICS_NAME, load_run, read_run_config, train
from mplp.pretrained import pretrained_dir
from mplp.tasks.mnist_io import MnistDataError

PROGRAM = "mplp"
EVALUATION_JSON = "evaluation.json"
EVALUATION_PNG = "evaluation.png"
CURVE_PNG = "meta-training.png"
EXIT_USAGE = 2
EXIT_FAILURE = 1
# The shell convention for a process ended by SIGINT: 128 + 2.
EXIT_INTERRUPTED = 130
SWEEP_OPTIMIZERS = ("sgd", "adam")
# Half-decade steps from 1e-3 to 3. On the mnist experiment the best rates (SGD 1, Adam 0.03)
# lie inside this range.
DEFAULT_SWEEP_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_SWEEP_RUNS = 100

logger = logging.getLogger(PROGRAM)

# Errors that come from the user's input or files: reported as one line, exit status 2.
_USAGE_ERRORS = (ConfigError, CheckpointError, MnistDataError, GraphError, FileNotFoundError)


class _UsageError(Exception):
    """Invalid command-line arguments, reported like an argparse error."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports errors as one line, without the usage text."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _configure_logging()
        return int(args.handler(args))
    except _UsageError as error:
        return _fail(str(error), EXIT_USAGE)
    except _USAGE_ERRORS as error:
        return _fail(_describe(error), EXIT_USAGE)
    except NonFiniteUpdateError as error:
        return _fail(f"training stopped: {error}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the ``mplp`` command and its subcommands."""
    parser = _Parser(
        prog=PROGRAM,
        description="Meta-learn learning rules with the Message Passing Learning Protocol.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train_parser = commands.add_parser(
        "train",
        help="meta-train an experiment into a run folder",
        description="Meta-train an experiment. Progress is logged to stderr, and the run "
        "folder receives config.json, metrics.jsonl and checkpoints.",
    )
    train_parser.add_argument(
        "experiment",
        help="built-in experiment name (see 'mplp experiments') or a .json path; with "
        "--resume, the run's stored config.json is used and EXPERIMENT must have its name",
    )
    train_parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    train_parser.add_argument(
        "--steps", type=_positive_int, help="total meta-steps (overrides meta_steps)"
    )
    train_parser.add_argument("--seed", type=int, help="random seed (overrides seed)")
    train_parser.add_argument(
        "--keep-every",
        type=_positive_int,
        metavar="N",
        help="also keep checkpoint-STEP.npz every N meta-steps (overrides keep_every)",
    )
    train_parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint; --steps may extend it",
    )
    train_parser.add_argument("--data-dir", type=Path, help="folder with the MNIST .gz files")
    train_parser.add_argument(
        "--devices",
        type=_positive_int,
        metavar="N",
        help="split each meta-step's outer batch of tasks across the first N devices of "
        "jax.devices(); N must divide outer_batch (default: one device)",
    )
    train_parser.set_defaults(handler=run_train)

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="evaluate a trained learner against the baselines",
        description="Train fresh networks with the learned rule and the baselines, print the "
        f"table of the last step and write {EVALUATION_JSON} and {EVALUATION_PNG}.",
    )
    evaluate_parser.add_argument(
        "run_dir", nargs="?", type=Path, help="run folder of 'mplp train' (omit with --pretrained)"
    )
    evaluate_parser.add_argument(
        "--runs", type=_positive_int, help="evaluation runs (default: evaluation_runs of the run)"
    )
    evaluate_parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    evaluate_parser.add_argument(
        "--step",
        type=_positive_int,
        help="evaluate the checkpoint kept at this meta-step (see --keep-every) instead of "
        "the latest",
    )
    evaluate_parser.add_argument("--data-dir", type=Path, help="folder with the MNIST .gz files")
    evaluate_parser.add_argument(
        "--pretrained", metavar="NAME", help="evaluate a pretrained learner shipped with mplp"
    )
    evaluate_parser.add_argument(
        "--out",
        type=Path,
        help="folder for the results (default: the run folder, or the current folder with "
        "--pretrained)",
    )
    evaluate_parser.add_argument(
        "--transfer",
        action="append",
        choices=TRANSFERS,
        default=[],
        help="MNIST only: also evaluate on a step-activation network (step) or a 784-100-10 "
        "network on 28x28 images (784); repeat to run both",
    )
    evaluate_parser.add_argument(
        "--baseline",
        action="append",
        type=_baseline,
        default=[],
        metavar="OPTIMIZER=RATE",
        help="compare against this optimizer (sgd or adam) at this learning rate instead of "
        "the run's baselines, e.g. adam=0.01; repeat for several (see 'mplp sweep')",
    )
    evaluate_parser.set_defaults(handler=run_evaluate)

    sweep_parser = commands.add_parser(
        "sweep",
        help="choose the learning rates of the SGD and Adam baselines",
        description="Train fresh networks of an experiment with SGD and Adam at several "
        "learning rates, on training data only, and print the mean final training loss of "
        "each rate. The lowest loss marks the rate to pass to 'mplp evaluate --baseline'.",
    )
    sweep_parser.add_argument(
        "source",
        metavar="EXPERIMENT_OR_RUN",
        help="built-in experiment name, a .json configuration or a run folder of 'mplp train'",
    )
    sweep_parser.add_argument(
        "--optimizer",
        action="append",
        choices=SWEEP_OPTIMIZERS,
        default=[],
        help="optimizer to sweep; repeat for several (default: sgd and adam)",
    )
    sweep_parser.add_argument(
        "--rates",
        nargs="+",
        type=_positive_float,
        default=list(DEFAULT_SWEEP_RATES),
        metavar="RATE",
        help="learning rates to try (default: %(default)s)",
    )
    sweep_parser.add_argument(
        "--runs",
        type=_positive_int,
        default=DEFAULT_SWEEP_RUNS,
        help="runs per rate, each a fresh network and task (default: %(default)s)",
    )
    sweep_parser.add_argument("--seed", type=int, default=0, help="sweep seed")
    sweep_parser.add_argument("--data-dir", type=Path, help="folder with the MNIST .gz files")
    sweep_parser.add_argument("--out", type=Path, help="also write the losses to this JSON file")
    sweep_parser.set_defaults(handler=run_sweep)

    curve_parser = commands.add_parser(
        "curve",
        help="plot the meta-training losses of a run",
        description=f"Plot the meta-loss, cross-validation loss and hint loss per meta-step "
        f"from a run folder's {METRICS_NAME}, with their moving averages. Works while the "
        "run is still training.",
    )
    curve_parser.add_argument("run_dir", type=Path, help="run folder of 'mplp train'")
    curve_parser.add_argument(
        "--out", type=Path, help=f"PNG file to write (default: {CURVE_PNG} in the run folder)"
    )
    curve_parser.add_argument(
        "--window",
        type=_positive_int,
        default=50,
        help="meta-steps per moving average (default: %(default)s)",
    )
    curve_parser.set_defaults(handler=run_curve)

    experiments_parser = commands.add_parser(
        "experiments",
        help="list the built-in experiments",
        description="List built-in experiments with their description.",
    )
    experiments_parser.set_defaults(handler=run_experiments)

    graph_parser = commands.add_parser(
        "graph",
        help="inspect the graph of an experiment or of a JSON graph file",
        description="Inspect a graph of node groups and arrows.",
    )
    graph_commands = graph_parser.add_subparsers(
        dest="graph_command", metavar="COMMAND", parser_class=_Parser
    )
    graph_commands.required = True
    show_parser = graph_commands.add_parser(
        "show",
        help="draw a graph as a PNG file",
        description="Draw the network of a built-in experiment, or a graph file written by "
        "mplp.save_graph, as a PNG file: groups left to right, arrows coloured by kind.",
    )
    show_parser.add_argument(
        "source",
        metavar="EXPERIMENT_OR_JSON",
        help="built-in experiment name (see 'mplp experiments') or the path of a .json graph",
    )
    show_parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    show_parser.add_argument(
        "--summary",
        action="store_true",
        help="also print the groups, arrows and parameter counts as text",
    )
    show_parser.set_defaults(handler=run_graph_show)
    return parser


# Subcommands.


def run_train(args: argparse.Namespace) -> int:
    """Meta-train the experiment of ``args`` into ``args.out``."""
    if args.resume:
        config = _resume_config(args)
    else:
        config = get_experiment(args.experiment)
        config = _with_overrides(config, steps=args.steps, seed=args.seed)
    if args.keep_every is not None:
        config = config.model_copy(update={"keep_every": args.keep_every})

    action = "resuming" if args.resume else "training"
    logger.info(
        "%s %s in %s: %d meta-steps, seed %d",
        action,
        config.name,
        args.out,
        config.meta_steps,
        config.seed,
    )
    summary = train(
        config, args.out, resume=args.resume, data_dir=args.data_dir, devices=args.devices
    )
    logger.info(
        "done: meta-step %d, %d skipped updates, run folder %s",
        summary["step"],
        summary["skipped_updates"],
        summary["out_dir"],
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a run folder or a pretrained learner and write the results."""
    source, out_dir = _evaluation_folders(args)
    config, step, meta_state = load_run(source, data_dir=args.data_dir, step=args.step)
    if args.baseline:
        config = config.model_copy(update={"baselines": tuple(args.baseline)})
    # Checked before the first evaluation, so an invalid transfer fails at once.
    transfers = {name: transfer_overrides(config, name) for name in args.transfer}
    runs = args.runs or config.evaluation_runs
    logger.info("evaluating %s at meta-step %d: %d runs, seed %d", source, step, runs, args.seed)

    experiment = build_experiment(config, args.data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(experiment, meta_state, runs=runs, seed=args.seed, data_dir=args.data_dir)
    _report(result, out_dir, "evaluation")

    for name, (network, task) in transfers.items():
        logger.info("evaluating the %s transfer", name)
        transferred = evaluate(
            experiment,
            meta_state,
            runs=runs,
            seed=args.seed,
            network=network,
            task=task,
            data_dir=args.data_dir,
            transfer=name,
        )
        _report(transferred, out_dir, f"evaluation-transfer-{name}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Sweep the learning rates of SGD and Adam on an experiment and print the losses."""
    source = Path(args.source)
    config = read_run_config(source) if source.is_dir() else get_experiment(args.source)
    optimizers = tuple(dict.fromkeys(args.optimizer)) or SWEEP_OPTIMIZERS
    rates = sorted(set(args.rates))
    logger.info(
        "sweeping %s on %s: %d rates, %d runs each, seed %d",
        " and ".join(optimizers),
        config.name,
        len(rates),
        args.runs,
        args.seed,
    )

    experiment = build_experiment(config, args.data_dir)
    losses = {
        optimizer: sweep_learning_rates(experiment, optimizer, rates, args.runs, args.seed)
        for optimizer in optimizers
    }
    best = {optimizer: _best_rate(losses[optimizer]) for optimizer in optimizers}
    print(format_sweep(config.name, args.runs, losses, best))

    if args.out is not None:
        document = {
            "experiment": config.name,
            "runs": args.runs,
            "seed": args.seed,
            "score": "mean final loss on the T x B inner training examples",
            "losses": {
                optimizer: {f"{rate:g}": _json_number(loss) for rate, loss in table.items()}
                for optimizer, table in losses.items()
            },
            "best": best,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        logger.info("wrote %s", args.out)
    return 0


def format_sweep(
    experiment: str,
    runs: int,
    losses: dict[str, dict[float, float]],
    best: dict[str, float | None],
) -> str:
    """Format sweep losses as a Markdown table: one row per rate, one column per optimizer.

    The lowest finite loss of each optimizer is marked with ``*``; a diverged rate shows its
    non-finite value.
    """
    optimizers = list(losses)
    rates = sorted({rate for table in losses.values() for rate in table})
    header = "| learning rate | " + " | ".join(f"{name} loss" for name in optimizers) + " |"
    lines = [
        f"Final training loss, mean over {runs} runs ({experiment}); * marks the lowest",
        "",
        header,
        "|" + " --- |" * (len(optimizers) + 1),
    ]
    for rate in rates:
        cells = []
        for name in optimizers:
            loss = losses[name].get(rate)
            mark = " *" if best[name] == rate else ""
            cells.append("" if loss is None else f"{_format_loss(loss)}{mark}")
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_curve(args: argparse.Namespace) -> int:
    """Plot the meta-training losses of the run in ``args.run_dir``."""
    config = read_run_config(args.run_dir)
    out = args.out or args.run_dir / CURVE_PNG
    out.parent.mkdir(parents=True, exist_ok=True)
    path = plot_meta_training(
        args.run_dir / METRICS_NAME,
        out,
        window=args.window,
        title=f"meta-training of {config.name}",
    )
    logger.info("wrote %s", path)
    return 0


def run_experiments(args: argparse.Namespace) -> int:
    """Print each built-in experiment's name and description."""
    del args
    width = max(len(name) for name in EXPERIMENTS)
    for name, config in EXPERIMENTS.items():
        print(f"{name.ljust(width)}  {config.description}")
    return 0


def run_graph_show(args: argparse.Namespace) -> int:
    """Draw the graph of ``args.source`` into ``args.out`` and print its summary if asked."""
    source: str = args.source
    graph_or_program: Graph | Program
    if source in EXPERIMENTS:
        # The network that meta-training compiles, with the experiment's learner.
        config = EXPERIMENTS[source]
        graph_or_program = build_program(config.network, build_learner(config.learner))
    elif source.endswith(".json"):
        graph_or_program = load_graph(source)
    else:
        known = ", ".join(EXPERIMENTS)
        raise _UsageError(
            f"unknown experiment '{source}'; built-in experiments: {known}, "
            "or pass the path of a .json graph file"
        )

    if args.summary:
        print(summary(graph_or_program))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = draw(graph_or_program, args.out, title=source)
    logger.info("wrote %s", path)
    return 0


# Helpers.


def _resume_config(args: argparse.Namespace) -> ExperimentConfig:
    """Read the stored configuration of the run in ``args.out`` and check it against ``args``."""
    stored = read_run_config(args.out)
    requested = args.experiment
    if requested != stored.name:
        stored_path = (args.out / CONFIG_NAME).resolve()
        same_file = requested.endswith(".json") and Path(requested).resolve() == stored_path
        name = stored.name if same_file else get_experiment(requested).name
        if name != stored.name:
            raise _UsageError(
                f"{args.out} contains a run of experiment '{stored.name}', not '{name}': pass "
                f"'{stored.name}' to resume it, or choose a new --out folder"
            )
    if args.seed is not None and args.seed != stored.seed:
        raise _UsageError(
            f"--seed {args.seed} differs from the run's seed {stored.seed}: a resumed run keeps "
            "its seed"
        )
    return _with_overrides(stored, steps=args.steps, seed=None)


def _with_overrides(
    config: ExperimentConfig, *, steps: int | None, seed: int | None
) -> ExperimentConfig:
    update: dict[str, int] = {}
    if steps is not None:
        update["meta_steps"] = steps
    if seed is not None:
        update["seed"] = seed
    return config.model_copy(update=update) if update else config


def _evaluation_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """Return the folder to load the learner from and the folder to write the results to."""
    if args.pretrained is not None:
        if args.run_dir is not None:
            raise _UsageError("pass either a run folder or --pretrained, not both")
        return pretrained_dir(args.pretrained), args.out or Path.cwd()
    if args.run_dir is None:
        raise _UsageError("a run folder is required unless --pretrained is given")
    return args.run_dir, args.out or args.run_dir


def _report(result: EvaluationResult, out_dir: Path, stem: str) -> None:
    """Print the table of ``result`` and write ``stem.json`` and ``stem.png`` in ``out_dir``."""
    print(format_table(result))
    print()
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(result.to_json())
    png_path = plot_evaluation(result, out_dir / f"{stem}.png")
    logger.info("wrote %s and %s", json_path, png_path)


def _format_loss(loss: float) -> str:
    # Four decimals for the usual losses, and a short exponent for a diverged rate's overflow.
    return f"{loss:.4f}" if abs(loss) < 1e6 else f"{loss:.3g}"


def _best_rate(losses: dict[float, float]) -> float | None:
    """Return the rate with the lowest finite loss, or None when every rate diverged."""
    finite = {rate: loss for rate, loss in losses.items() if math.isfinite(loss)}
    return min(finite, key=finite.__getitem__) if finite else None


def _json_number(value: float) -> float | None:
    # JSON has no NaN or infinity; a diverged rate is written as null.
    return value if math.isfinite(value) else None


def _baseline(text: str) -> BaselineConfig:
    """Parse ``OPTIMIZER=RATE`` into a baseline, e.g. ``adam=0.01``."""
    optimizer, separator, rate_text = text.partition("=")
    if not separator or optimizer not in SWEEP_OPTIMIZERS:
        raise argparse.ArgumentTypeError(
            f"invalid baseline '{text}': write OPTIMIZER=RATE with OPTIMIZER sgd or adam, "
            "e.g. adam=0.01"
        )
    return BaselineConfig(optimizer=optimizer, learning_rate=_positive_float(rate_text))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _describe(error: Exception) -> str:
    """Return a one-line description of an error, with the file name for OS errors."""
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"file not found: {error.filename}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _fail(message: str, status: int) -> int:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return status


def _configure_logging() -> None:
    # Progress messages of mplp at INFO, other libraries at their default WARNING. basicConfig
    # adds no handler when the root logger already has one (an embedding application, or
    # pytest's log capture).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger(PROGRAM).setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
