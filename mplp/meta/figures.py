"""Figures of an evaluation, written as PNG files.

The figures are built on `matplotlib.figure.Figure` objects without pyplot, so they render with
the Agg backend and never open a window or change the caller's pyplot backend.

Sinusoid figures have one column per method: the example run's fit on top and the mean and
standard deviation over runs of the evaluation and training losses below. MNIST figures show the
accuracy and the training loss per step of every method, each with a band of one standard
deviation. The meta-training figure shows the losses of a run's ``metrics.jsonl`` per meta-step.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mplp.meta.config import ConfigError
from mplp.meta.evaluation import ACCURACY_METRIC, EvaluationResult, MethodResult

DPI = 120
_BAND_ALPHA = 0.2


def plot_evaluation(result: EvaluationResult, path: str | Path) -> Path:
    """Draw the figure of ``result`` and write it to ``path`` as PNG.

    Returns:
        The path written.
    """
    if result.settings.metric == ACCURACY_METRIC:
        figure = _accuracy_figure(result)
    else:
        figure = _sinusoid_figure(result)

    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def plot_meta_training(
    metrics_path: str | Path, path: str | Path, window: int = 50, title: str | None = None
) -> Path:
    """Draw the meta-training losses of a run's ``metrics.jsonl`` and write them as PNG.

    Every meta-step's value is drawn faintly, with its moving average over ``window``
    meta-steps on top, for the meta-loss, the cross-validation loss and the hint loss (those
    present in the file). Skipped updates are drawn like the others.

    Returns:
        The path written.

    Raises:
        ConfigError: when the file is missing, has no metric lines, or ``window < 1``.
    """
    if window < 1:
        raise ConfigError(f"window must be at least 1 meta-step, got {window}")
    records = _read_metrics(Path(metrics_path))

    figure = Figure(figsize=(7.0, 4.5), layout="tight")
    ax = figure.subplots()
    colors = matplotlib.colormaps["tab10"]
    names = [name for name in _TRAINING_CURVES if name in records[0]]
    for index, name in enumerate(names):
        steps = np.array([record["step"] for record in records])
        values = np.array([record[name] for record in records], dtype=np.float64)
        color = colors(index % 10)
        ax.plot(steps, values, color=color, alpha=_BAND_ALPHA, linewidth=0.8)
        smoothed_steps, smoothed = _moving_average(steps, values, window)
        ax.plot(smoothed_steps, smoothed, color=color, label=f"{name} ({window}-step mean)")

    ax.set_xlabel("meta-step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    figure.suptitle(title or f"meta-training of {Path(metrics_path).parent.name}")

    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")
    return path


_TRAINING_CURVES = ("meta_loss", "cv_loss", "hint_loss")


def _read_metrics(path: Path) -> list[dict[str, float]]:
    """Read the JSON lines of a metrics file, skipping blank lines."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read metrics file {path}: {error.strerror}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(
                f"{path}:{number} is not a JSON line: expected the metrics.jsonl of a run"
            ) from None
    if not records:
        raise ConfigError(f"{path} has no meta-steps yet")
    return records


def _moving_average(
    steps: np.ndarray, values: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` over each full window; returns the window ends and the means.

    With fewer values than ``window``, the window shrinks to all of them. Non-finite values
    (a skipped update's loss) are left out of each mean.
    """
    window = min(window, values.shape[0])
    finite = np.isfinite(values)
    totals = np.convolve(np.where(finite, values, 0.0), np.ones(window), mode="valid")
    counts = np.convolve(finite.astype(np.float64), np.ones(window), mode="valid")
    means = np.divide(totals, counts, out=np.full_like(totals, np.nan), where=counts > 0)
    return steps[window - 1 :], means


def _sinusoid_figure(result: EvaluationResult) -> Figure:
    methods = result.methods
    figure = Figure(figsize=(4.0 * len(methods), 7.0), layout="tight")
    axes = figure.subplots(2, len(methods), squeeze=False, sharey="row")
    for column, method in enumerate(methods):
        _plot_fit(axes[0, column], result, method)
        _plot_losses(axes[1, column], method)
    axes[0, 0].set_ylabel("y")
    axes[1, 0].set_ylabel("L2 loss")
    figure.suptitle(_title(result))
    return figure


def _plot_fit(ax: Axes, result: EvaluationResult, method: MethodResult) -> None:
    """Draw the example run: true function, training points and the prediction per step."""
    example = result.example
    ax.set_title(method.label)
    ax.set_xlabel("x")
    if example is None or method.example_predictions is None:
        ax.text(0.5, 0.5, "no example run stored", ha="center", transform=ax.transAxes)
        return

    ax.plot(example.grid_x, example.grid_y, color="black", linewidth=2, label="true function")
    ax.scatter(
        example.train_x.ravel(),
        example.train_y.ravel(),
        color="tab:red",
        s=14,
        zorder=3,
        label="training points",
    )
    predictions = method.example_predictions
    steps = predictions.shape[0] - 1
    # Earlier steps are drawn fainter, and the prediction after the last step is solid.
    for step in range(steps):
        alpha = 0.15 + 0.5 * step / max(steps, 1)
        ax.plot(example.grid_x, predictions[step], color="tab:blue", alpha=alpha, linewidth=1)
    ax.plot(
        example.grid_x,
        predictions[-1],
        color="tab:blue",
        linewidth=2,
        label=f"prediction after step {steps}",
    )
    ax.legend(loc="best", fontsize="small")


def _plot_losses(ax: Axes, method: MethodResult) -> None:
    steps = np.arange(method.metric_mean.shape[0])
    _band(ax, steps, method.metric_mean, method.metric_std, "eval loss", "tab:blue")
    _band(ax, steps, method.train_loss_mean, method.train_loss_std, "train loss", "tab:orange")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def _accuracy_figure(result: EvaluationResult) -> Figure:
    figure = Figure(figsize=(11.0, 4.5), layout="tight")
    accuracy_ax, loss_ax = figure.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"]
    for index, method in enumerate(result.methods):
        steps = np.arange(method.metric_mean.shape[0])
        color = colors(index % 10)
        _band(accuracy_ax, steps, method.metric_mean, method.metric_std, method.label, color)
        _band(loss_ax, steps, method.train_loss_mean, method.train_loss_std, method.label, color)

    accuracy_ax.set_ylabel("test accuracy (%)")
    loss_ax.set_ylabel("loss on the latest minibatch")
    for ax in (accuracy_ax, loss_ax):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    figure.suptitle(_title(result))
    return figure


def _band(
    ax: Axes,
    steps: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    label: str,
    color: str | tuple[float, ...],
) -> None:
    ax.plot(steps, mean, color=color, label=label, marker="o", markersize=3)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=_BAND_ALPHA, linewidth=0)


def _title(result: EvaluationResult) -> str:
    settings = result.settings
    network = "-".join(str(size) for size in settings.network_sizes)
    title = f"{settings.experiment}: {network} {settings.activation}, {settings.runs} runs"
    if settings.transfer is not None:
        title += f" ({settings.transfer} transfer)"
    return title
