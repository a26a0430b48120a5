"""Shared test settings: Hypothesis profiles, the real-MNIST fixture, docs skip summary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_MARKER_FILE = "train-images-idx3-ubyte.gz"

# JAX compiles on the first example of a test, which can take seconds, so no profile sets a
# per-example deadline.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def mnist_dir() -> Path:
    """Return the folder with the real MNIST .gz files, or skip the test.

    Looks in MPLP_DATA_DIR first, then in ../shared/data/mnist next to the repository.
    """
    candidates = []
    data_dir = os.environ.get("MPLP_DATA_DIR")
    if data_dir:
        candidates.append(Path(data_dir))
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "mnist")

    for candidate in candidates:
        if (candidate / MNIST_MARKER_FILE).is_file():
            return candidate.resolve()
    pytest.skip("real MNIST not found: set MPLP_DATA_DIR to a folder with the four MNIST .gz files")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List documentation blocks that were skipped inside a file whose other blocks ran."""
    reasons = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", []):
                if name == "skipped_docs_block":
                    reasons.append(value)

    if reasons:
        terminalreporter.section("skipped documentation code blocks")
        for reason in reasons:
            terminalreporter.line(reason)
