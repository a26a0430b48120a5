"""Figures of an evaluation, written as PNG files.

The figures are built on `matplotlib.figure.Figure` objects without pyplot, so they render with
the Agg backend and never open a window or change the caller's pyplot backend.

Sinusoid figures have one column per method: the example run's fit on top and the mean and
standard deviation over runs of the evaluation and training losses below. MNIST figures show the
accuracy and the training loss per step of every method, each with a band of one standard
deviation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
