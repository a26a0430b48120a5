"""Tests of the ``mplp`` command line: errors, the experiment list, training and evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest

from mplp import pretrained
from mplp.cli import main
from mplp.meta.config import EXPERIMENTS, ConfigError
from mplp.meta.figures import _moving_average, plot_meta_training
from mplp.meta.trainer import load_run

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "name": "tiny-cli",
    "description": "tiny sinusoid run for the command-line tests",
    "task": {"name": "sinusoid"},
    "network": {"sizes": [1, 4, 1]},
    "learner": {"kind": "stateless", "message_size": 2},
    "inner_steps": 2,
    "inner_batch": 4,
    "validation_size": 8,
    "outer_batch": 2,
    "pool_size": 2,
    "meta_steps": 3,
    "calibration_runs": 1,
    "evaluation_runs": 3,
    "log_every": 1,
    "baselines": [{"optimizer": "adam", "learning_rate": 0.01}],
}


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# Errors.


def test_unknown_experiment_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "foo", "--out", str(tmp_path / "run")])
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith("mplp: error: unknown experiment 'foo'")
    for name in EXPERIMENTS:
        assert name in lines[0]


def test_missing_run_folder_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["evaluate", str(tmp_path / "missing")])
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert "does not exist" in lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "required: COMMAND"),
        (["train", "sinusoid"], "required: --out"),
        (["train", "sinusoid", "--out", "run", "--steps", "0"], "must be at least 1"),
        (["evaluate"], "run folder is required"),
        (["evaluate", "run", "--pretrained", "sinusoid"], "not both"),
        (["evaluate", "--pretrained", "no-such-learner"], "unknown pretrained learner"),
        (["evaluate", "run", "--transfer", "wide"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(argv)
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith("mplp: error: ")
    assert expected in lines[0]


def test_subprocess_error_without_traceback(tmp_path: Path) -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(
        [sys.executable, "-m", "mplp.cli", "evaluate", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert len(lines) == 1
    assert lines[0].startswith("mplp: error: run folder")


def test_experiments_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments"]) == 0
    output = capsys.readouterr().out
    for name, config in EXPERIMENTS.items():
        assert name in output
        assert config.description in output


# Training, resuming and evaluating a tiny run.


class TinyRun(NamedTuple):
    run_dir: Path
    config_path: Path
    statuses: dict[str, int]
    lines_after_train: int
    messages: list[str]
    evaluate_output: str


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRun]:
    """Train the tiny configuration for 3 meta-steps, resume it to 5, then evaluate it."""
    root = tmp_path_factory.mktemp("cli")
    config_path = root / "tiny.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    run_dir = root / "run"

    collector = _Collector()
    mplp_logger = logging.getLogger("mplp")
    mplp_logger.addHandler(collector)
    try:
        statuses = {"train": main(["train", str(config_path), "--out", str(run_dir)])}
        lines_after_train = len(read_metrics(run_dir))
        statuses["resume"] = main(
            ["train", "tiny-cli", "--out", str(run_dir), "--resume", "--steps", "5"]
        )
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            statuses["evaluate"] = main(["evaluate", str(run_dir), "--runs", "3"])
    finally:
        mplp_logger.removeHandler(collector)

    yield TinyRun(
        run_dir, config_path, statuses, lines_after_train, collector.messages, output.getvalue()
    )


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_train_writes_run_folder(tiny_run: TinyRun) -> None:
    assert tiny_run.statuses["train"] == 0
    assert tiny_run.lines_after_train == 3
    assert (tiny_run.run_dir / "config.json").is_file()
    assert (tiny_run.run_dir / "checkpoint.npz").is_file()


def test_train_logs_rate_and_eta(tiny_run: TinyRun) -> None:
    progress = [message for message in tiny_run.messages if message.startswith("meta-step 3/3")]
    assert progress
    assert "steps/s" in progress[0]
    assert "ETA" in progress[0]


def test_resume_extends_to_more_steps(tiny_run: TinyRun) -> None:
    assert tiny_run.statuses["resume"] == 0
    steps = [record["step"] for record in read_metrics(tiny_run.run_dir)]
    assert steps == [1, 2, 3, 4, 5]
    stored = json.loads((tiny_run.run_dir / "config.json").read_text())
    assert stored["meta_steps"] == 5


def test_evaluate_writes_json_and_png(tiny_run: TinyRun) -> None:
    assert tiny_run.statuses["evaluate"] == 0
    document = json.loads((tiny_run.run_dir / "evaluation.json").read_text())
    labels = [method["label"] for method in document["methods"]]
    assert labels == ["MPLP", "Adam lr 0.01"]
    assert document["settings"]["runs"] == 3
    png = (tiny_run.run_dir / "evaluation.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_evaluate_prints_table(tiny_run: TinyRun) -> None:
    assert "MPLP" in tiny_run.evaluate_output
    assert "Adam lr 0.01" in tiny_run.evaluate_output
    assert "eval L2 loss @ 2" in tiny_run.evaluate_output


def test_resume_rejects_other_experiment(
    tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "sinusoid", "--out", str(tiny_run.run_dir), "--resume"])
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert "contains a run of experiment 'tiny-cli'" in lines[0]


def test_resume_rejects_other_seed(tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "tiny-cli", "--out", str(tiny_run.run_dir), "--resume", "--seed", "9"]
    status = main(argv)
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert "--seed 9 differs" in lines[0]


def test_new_run_rejects_used_folder(tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", str(tiny_run.config_path), "--out", str(tiny_run.run_dir)])
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert "is not empty" in lines[0]


def test_transfer_rejects_sinusoid_run(
    tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["evaluate", str(tiny_run.run_dir), "--runs", "1", "--transfer", "step"])
    lines = error_lines(capsys)
    assert status == 2
    assert len(lines) == 1
    assert "needs an MNIST experiment" in lines[0]


# Pretrained learners.


@pytest.fixture
def fake_pretrained(tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Serve the tiny run as the only pretrained learner, named ``tiny``."""
    package = tmp_path / "pretrained"
    folder = package / "tiny"
    folder.mkdir(parents=True)
    for name in ("config.json", "checkpoint.npz"):
        shutil.copy(tiny_run.run_dir / name, folder / name)
    (package / "incomplete").mkdir()
    monkeypatch.setattr(pretrained, "_package_root", lambda: package)
    return folder


def test_pretrained_lookup(fake_pretrained: Path) -> None:
    assert pretrained.available_pretrained() == ("tiny",)
    assert pretrained.pretrained_dir("tiny") == fake_pretrained


def test_pretrained_unknown_lists_names(fake_pretrained: Path) -> None:
    with pytest.raises(ConfigError, match="unknown pretrained learner 'other'; available: tiny"):
        pretrained.pretrained_dir("other")


def test_evaluate_pretrained_into_out(
    fake_pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    status = main(["evaluate", "--pretrained", "tiny", "--runs", "1", "--out", str(out)])
    assert status == 0
    assert "MPLP" in capsys.readouterr().out
    assert (out / "evaluation.json").is_file()
    assert (out / "evaluation.png").is_file()
    assert not (fake_pretrained / "evaluation.json").exists()


def test_evaluate_baseline_override(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "override"
    arguments = ["--baseline", "sgd=0.3", "--baseline", "adam=0.02", "--out", str(out)]
    status = main(["evaluate", str(tiny_run.run_dir), "--runs", "2", *arguments])
    assert status == 0
    document = json.loads((out / "evaluation.json").read_text())
    labels = [method["label"] for method in document["methods"]]
    assert labels == ["MPLP", "SGD lr 0.3", "Adam lr 0.02"]


@pytest.mark.parametrize("text", ["adam", "rmsprop=0.1", "sgd=-1", "adam=fast", "sgd=nan"])
def test_evaluate_rejects_invalid_baseline(
    tiny_run: TinyRun, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["evaluate", str(tiny_run.run_dir), "--baseline", text])
    assert status == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert "--baseline" in lines[0]


# Learning-rate sweep.


@pytest.fixture(scope="module")
def sweep_output(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """Sweep SGD and Adam at four rates on the tiny run's configuration."""
    out = tmp_path_factory.mktemp("sweep") / "sweep.json"
    rates = ["0.001", "0.1", "1e6", "0.01"]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = main(
            ["sweep", str(tiny_run.run_dir), "--rates", *rates, "--runs", "2", "--out", str(out)]
        )
    assert status == 0
    return output.getvalue(), json.loads(out.read_text())


def test_sweep_writes_every_rate(sweep_output: tuple[str, dict]) -> None:
    _, document = sweep_output
    assert document["experiment"] == "tiny-cli"
    assert document["runs"] == 2
    assert set(document["losses"]) == {"sgd", "adam"}
    assert set(document["losses"]["sgd"]) == {"0.001", "0.01", "0.1", "1e+06"}


def test_sweep_best_is_lowest_finite(sweep_output: tuple[str, dict]) -> None:
    _, document = sweep_output
    for optimizer, losses in document["losses"].items():
        finite = {float(rate): loss for rate, loss in losses.items() if loss is not None}
        assert document["best"][optimizer] == min(finite, key=finite.__getitem__)


def test_sweep_diverged_rate_is_null(sweep_output: tuple[str, dict]) -> None:
    _, document = sweep_output
    # SGD at a learning rate of a million overflows on the sinusoid task.
    assert document["losses"]["sgd"]["1e+06"] is None


def test_sweep_prints_table_sorted(sweep_output: tuple[str, dict]) -> None:
    output, _ = sweep_output
    rows = [line for line in output.splitlines() if line.startswith("| 0") or "e+06" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["0.001", "0.01", "0.1", "1e+06"]
    assert sum(row.count(" *") for row in rows) == 2


def test_sweep_missing_file_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sweep", "tiny-cli-missing.json", "--runs", "1"])
    assert status == 2
    assert "tiny-cli-missing.json" in error_lines(capsys)[0]


def test_sweep_one_optimizer(tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "sweep",
            str(tiny_run.config_path),
            "--optimizer",
            "adam",
            "--rates",
            "0.01",
            "--runs",
            "1",
        ]
    )
    assert status == 0
    output = capsys.readouterr().out
    assert "adam loss" in output
    assert "sgd loss" not in output


@pytest.mark.parametrize("rate", ["0", "-0.1", "inf", "x"])
def test_sweep_rejects_invalid_rate(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "sinusoid", "--rates", rate]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert "--rates" in lines[0]


# Meta-training curve.


def test_curve_writes_png(tiny_run: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "curve.png"
    status = main(["curve", str(tiny_run.run_dir), "--out", str(out), "--window", "2"])
    assert status == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_curve_default_in_run_folder(tiny_run: TinyRun) -> None:
    assert main(["curve", str(tiny_run.run_dir)]) == 0
    assert (tiny_run.run_dir / "meta-training.png").is_file()


def test_curve_missing_run_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curve", str(tmp_path / "nothing")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert "nothing" in lines[0]


def test_moving_average_skips_nan() -> None:
    steps = np.arange(1, 6)
    values = np.array([1.0, np.nan, 3.0, 5.0, 7.0])
    ends, means = _moving_average(steps, values, 2)
    np.testing.assert_array_equal(ends, [2, 3, 4, 5])
    np.testing.assert_allclose(means, [1.0, 3.0, 4.0, 6.0])


def test_moving_average_short_series() -> None:
    ends, means = _moving_average(np.arange(1, 4), np.array([1.0, 2.0, 3.0]), 50)
    np.testing.assert_array_equal(ends, [3])
    np.testing.assert_allclose(means, [2.0])


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "no meta-steps"), ("\n\n", "no meta-steps"), ("{not json\n", "not a JSON line")],
)
def test_plot_meta_training_rejects_bad_file(tmp_path: Path, content: str, message: str) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(content)
    with pytest.raises(ConfigError, match=message):
        plot_meta_training(metrics, tmp_path / "curve.png")


def test_plot_meta_training_rejects_window(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "meta_loss": 1.0}) + "\n")
    with pytest.raises(ConfigError, match="window"):
        plot_meta_training(metrics, tmp_path / "curve.png", window=0)


# Kept checkpoints.


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the tiny configuration for 4 meta-steps, keeping every second checkpoint."""
    root = tmp_path_factory.mktemp("kept")
    config_path = root / "tiny.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    run_dir = root / "run"
    arguments = ["--out", str(run_dir), "--steps", "4", "--keep-every", "2"]
    assert main(["train", str(config_path), *arguments]) == 0
    return run_dir


def test_keep_every_writes_copies(kept_run: Path) -> None:
    assert (kept_run / "checkpoint-0000002.npz").is_file()
    assert (kept_run / "checkpoint-0000004.npz").is_file()
    assert not (kept_run / "checkpoint-0000003.npz").exists()
    assert json.loads((kept_run / "config.json").read_text())["keep_every"] == 2


def test_load_run_kept_step(kept_run: Path) -> None:
    _, step, early = load_run(kept_run, step=2)
    _, latest_step, latest = load_run(kept_run)
    assert step == 2
    assert latest_step == 4
    early_leaves = jax.tree.leaves(early.trainable)
    latest_leaves = jax.tree.leaves(latest.trainable)
    assert any(not np.array_equal(a, b) for a, b in zip(early_leaves, latest_leaves, strict=True))


def test_evaluate_kept_step(kept_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "step2"
    status = main(["evaluate", str(kept_run), "--step", "2", "--runs", "1", "--out", str(out)])
    assert status == 0
    assert (out / "evaluation.json").is_file()


def test_evaluate_missing_step_lists_kept(
    kept_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(kept_run), "--step", "3"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert "meta-step 3" in lines[0]
    assert "kept steps: 2, 4" in lines[0]
