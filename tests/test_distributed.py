"""Tests of data-parallel meta-training on 8 simulated CPU devices.

XLA reads ``--xla_force_host_platform_device_count`` only when JAX starts, so every test runs
its training in a fresh Python subprocess. The subprocesses share a persistent compilation
cache, so the meta-steps compiled by the first test are reused by the later ones, and they
compile at XLA's lowest backend optimisation level, which only shortens compile times.

Runs on different device counts round differently: each device evaluates a smaller batch of
tasks, and the sum over tasks is split across devices. Adam moves a parameter by up to about
``meta_learning_rate`` per step however small its gradient is, so a parameter whose gradient
is rounding noise can end up a fraction of one step away. The parameter checks therefore
allow a few elements within a quarter of a step and hold all others to float32 tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SIMULATED_DEVICES = 8
RTOL = 1e-5
ATOL = 1e-6
SUBPROCESS_TIMEOUT_S = 600
META_LEARNING_RATE = 1e-4
# At most this fraction of the parameters may differ by more than RTOL and ATOL.
MAX_NOISY_FRACTION = 1e-3

TINY_CONFIG: dict[str, Any] = {
    "name": "tiny-distributed",
    "description": "tiny sinusoid run for the data-parallel tests",
    "task": {"name": "sinusoid"},
    "network": {"sizes": [1, 4, 1]},
    "learner": {"kind": "stateless", "message_size": 2},
    "inner_steps": 2,
    "inner_batch": 4,
    "validation_size": 8,
    "outer_batch": 8,
    "pool_size": 2,
    "meta_steps": 3,
    "calibration_runs": 1,
    "meta_learning_rate": META_LEARNING_RATE,
}

# Every script reads the configuration from argv[1] and the output folder from argv[2], and
# prints one JSON line as its last line.
SCRIPT_PREAMBLE = """
import json
import re
import sys
from pathlib import Path

import jax

from mplp.meta import distributed
from mplp.meta.config import ConfigError, ExperimentConfig
from mplp.meta.trainer import train

config = ExperimentConfig.model_validate(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
"""

SAME_RESULT_SCRIPT = """
train(config, out / "eight", devices=8)
train(config, out / "one", devices=1)

# The per-task keys as the meta-step shards them.
mesh = distributed.task_mesh(8)
shard_keys = jax.jit(lambda key: distributed.shard_task_keys(jax.random.split(key, 8), mesh))
keys = shard_keys(jax.random.key(0))

# The compiled meta-step of the 8-device run: a cache hit, because train compiled it already.
from mplp.meta.setup import build_experiment
from mplp.meta.trainer import initial_meta_state, make_meta_step, run_keys

experiment = build_experiment(config)
streams = run_keys(config.seed)
state = initial_meta_state(experiment, streams, calibrate=False)
pool = experiment.initial_pool(streams.pool)
arguments = distributed.replicate((state, pool, experiment.family.data), mesh)
step = make_meta_step(experiment, mesh)
compiled = step.lower(*arguments, jax.random.fold_in(streams.train, 0)).compile()
hlo = compiled.as_text()

print(json.dumps({
    "device_count": jax.device_count(),
    "key_devices": len(keys.sharding.device_set),
    "key_shard_shapes": [list(shard.data.shape) for shard in keys.addressable_shards],
    "key_spec": list(keys.sharding.spec),
    "partitions": re.search(r"num_partitions=(\\d+)", hlo).group(1),
    "has_all_reduce": "all-reduce" in hlo,
}))
"""

RESUME_SCRIPT = """
train(config, out / "split", devices=8)
longer = config.model_copy(update={"meta_steps": 5})
train(longer, out / "split", devices=1, resume=True)
train(longer, out / "whole", devices=1)
print(json.dumps({"done": True}))
"""

UNEVEN_BATCH_SCRIPT = """
errors = {}
try:
    train(config, out / "uneven", devices=4)
except ConfigError as error:
    errors["uneven"] = str(error)
try:
    train(config, out / "too-many", devices=9)
except ConfigError as error:
    errors["too_many"] = str(error)
try:
    train(config, out / "both", devices=2, mesh=distributed.task_mesh(2))
except ConfigError as error:
    errors["both"] = str(error)
try:
    other_axis = jax.sharding.Mesh(jax.devices()[:2], ("batch",))
    train(config, out / "other-axis", mesh=other_axis)
except ConfigError as error:
    errors["other_axis"] = str(error)
errors["folders"] = sorted(path.name for path in out.iterdir())
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a persistent compilation cache folder shared by the subprocesses of this file."""
    return tmp_path_factory.mktemp("jax-cache")


def run_script(body: str, config: dict[str, Any], out: Path, cache: Path) -> dict[str, Any]:
    """Run the preamble and ``body`` on 8 simulated CPU devices and return the JSON they print."""
    environment = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=(
            f"--xla_force_host_platform_device_count={SIMULATED_DEVICES} "
            "--xla_backend_optimization_level=0"
        ),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    out.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent(SCRIPT_PREAMBLE) + textwrap.dedent(body)
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config), str(out)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=out,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, f"subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


def read_checkpoint(run_dir: Path) -> dict[str, np.ndarray]:
    """Read every array of a run's ``checkpoint.npz`` (metadata excluded) by its key path."""
    with np.load(run_dir / "checkpoint.npz") as archive:
        return {name: archive[name] for name in archive.files if name != "__metadata__"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Read the lines of a run's ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_parameters_close(
    actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], prefix: str
) -> None:
    """Assert that the checkpoint arrays named ``prefix*`` match up to Adam's rounding noise.

    Every element must lie within a quarter of one Adam step, and all but
    ``MAX_NOISY_FRACTION`` of the elements within ``RTOL`` and ``ATOL``.
    """
    names = sorted(name for name in expected if name.startswith(prefix))
    assert names, f"no array named {prefix}* in the checkpoint"
    assert sorted(name for name in actual if name.startswith(prefix)) == names

    noisy: list[str] = []
    total = 0
    for name in names:
        np.testing.assert_allclose(
            actual[name], expected[name], rtol=RTOL, atol=META_LEARNING_RATE / 4, err_msg=name
        )
        close = np.isclose(actual[name], expected[name], rtol=RTOL, atol=ATOL)
        total += close.size
        noisy.extend(f"{name}{list(index)}" for index in np.argwhere(~close))
    assert len(noisy) <= MAX_NOISY_FRACTION * total, (
        f"{len(noisy)} of {total} elements differ by more than rtol {RTOL} and atol {ATOL}: "
        f"{noisy[:10]}"
    )


def test_eight_devices_match_one_device(tmp_path: Path, compilation_cache: Path) -> None:
    report = run_script(SAME_RESULT_SCRIPT, TINY_CONFIG, tmp_path, compilation_cache)

    eight_devices = read_checkpoint(tmp_path / "eight")
    one_device = read_checkpoint(tmp_path / "one")
    assert_parameters_close(eight_devices, one_device, prefix="trainable/learner/")

    eight_metrics = read_metrics(tmp_path / "eight")
    one_metrics = read_metrics(tmp_path / "one")
    assert [record["step"] for record in eight_metrics] == [1, 2, 3]
    np.testing.assert_allclose(
        [record["meta_loss"] for record in eight_metrics],
        [record["meta_loss"] for record in one_metrics],
        rtol=RTOL,
        atol=ATOL,
    )
    # Both runs start from the same state, so the first meta-gradients match to float32
    # tolerance.
    np.testing.assert_allclose(
        eight_metrics[0]["gradient_norm"], one_metrics[0]["gradient_norm"], rtol=RTOL
    )

    assert report["device_count"] == SIMULATED_DEVICES
    assert report["key_devices"] == SIMULATED_DEVICES
    assert report["key_shard_shapes"] == [[1]] * SIMULATED_DEVICES
    assert report["key_spec"] == ["tasks"]
    assert report["partitions"] == str(SIMULATED_DEVICES)
    # The meta-gradient is a mean over the tasks of all devices, so XLA sums it across them.
    assert report["has_all_reduce"]


def test_checkpoint_resumes_on_one_device(tmp_path: Path, compilation_cache: Path) -> None:
    run_script(RESUME_SCRIPT, TINY_CONFIG, tmp_path, compilation_cache)

    split = read_checkpoint(tmp_path / "split")
    whole = read_checkpoint(tmp_path / "whole")
    assert_parameters_close(split, whole, prefix="trainable/")
    assert_parameters_close(split, whole, prefix="opt_state/")

    split_metrics = read_metrics(tmp_path / "split")
    whole_metrics = read_metrics(tmp_path / "whole")
    assert [record["step"] for record in split_metrics] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [record["meta_loss"] for record in split_metrics],
        [record["meta_loss"] for record in whole_metrics],
        rtol=RTOL,
        atol=ATOL,
    )


def test_uneven_outer_batch_lists_device_counts(tmp_path: Path, compilation_cache: Path) -> None:
    config = dict(TINY_CONFIG, outer_batch=6)
    report = run_script(UNEVEN_BATCH_SCRIPT, config, tmp_path, compilation_cache)

    assert "outer_batch 6" in report["uneven"]
    assert "4 devices" in report["uneven"]
    assert "(1, 2, 3, 6)" in report["uneven"]
    assert "only 8 cpu device(s) are available" in report["too_many"]
    assert "either a device count or a mesh" in report["both"]
    assert "1-D mesh with the axis 'tasks'" in report["other_axis"]
    # Every error comes before the run folder is created.
    assert report["folders"] == []
