"""Run each script in examples/ with a tiny budget and check what it prints.

Each example runs as a separate process, as a user would run it, so its kind registrations do
not leak into the other tests. Most of the time goes into compiling the jitted meta-steps.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
TIMEOUT_S = 900


def run_example(name: str, *arguments: str) -> str:
    """Run ``examples/name`` with ``arguments`` and return its standard output."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), *arguments],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, f"{name} failed:\n{completed.stderr[-4000:]}"
    return completed.stdout


def numbers_after(label: str, text: str) -> list[float]:
    """Every number that follows ``label`` on a line of ``text``, in order."""
    pattern = re.escape(label) + r"\s*([-+0-9.eE]+|nan|inf)"
    return [float(match) for match in re.findall(pattern, text)]


def test_examples_have_tests() -> None:
    scripts = sorted(path.name for path in EXAMPLES_DIR.glob("*.py"))

    assert scripts == ["custom_activation.py", "reflexive_trace.py", "residual_mlp.py"]


# Compiling the meta-step takes most of a minute on a CPU, which makes the two examples that
# meta-train the slowest tests of the suite; they still run in CI so the examples keep working.
def test_residual_mlp_example() -> None:
    output = run_example("residual_mlp.py", "--steps", "2")

    assert re.search(r"^  add +identity +activation +\(16,\)", output, re.MULTILINE)
    (difference,) = numbers_after("max parameter difference:", output)
    (moved,) = numbers_after("largest parameter change:", output)
    assert difference < 1e-5
    assert moved > 1e-2
    meta_losses = [float(value) for value in re.findall(r"meta-step \d+: meta-loss (\S+)", output)]
    assert len(meta_losses) == 2
    assert all(math.isfinite(value) for value in meta_losses)
    match = re.search(r"held-out meta-loss \(16 tasks\): (\S+) -> (\S+)", output)
    assert match is not None, output
    assert all(math.isfinite(float(value)) for value in match.groups())


def test_reflexive_trace_example() -> None:
    output = run_example("reflexive_trace.py", "--steps", "3")

    reflexive_only = "reflexive arrows outside the backward pass: (('probe', 'probe:trace'),)"
    assert output.count(reflexive_only) == 2
    backward_passes = re.findall(r"^  backward pass: (.*)$", output, re.MULTILINE)
    assert backward_passes == ["loss, bias1, dense1, act0, bias0, dense0"] * 2
    differences = numbers_after("max trace difference:", output)
    assert len(differences) == 2
    assert all(value < 1e-5 for value in differences)
    assert all(value > 0.0 for value in numbers_after("trace norm:", output))
    assert numbers_after("probe weights changed by:", output) == [0.0, 0.0]


def test_custom_activation_example() -> None:
    output = run_example("custom_activation.py", "--steps", "2")

    assert "softsign: -3 -> -0.750, -1 -> -0.500, 0 -> 0.000, 1 -> 0.500, 3 -> 0.750" in output
    assert "groups of kind softsign: act0, act1" in output
    assert output.count("update applied: True") == 2
    match = re.search(r"held-out meta-loss \(4 tasks\): (\S+) -> (\S+)", output)
    assert match is not None, output
    assert all(math.isfinite(float(value)) for value in match.groups())
