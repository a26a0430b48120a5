"""Data-parallel meta-training: a 1-D device mesh over the outer batch of tasks.

Each meta-step draws ``outer_batch`` tasks. With a mesh, the per-task PRNG keys are sharded
along the mesh axis ``"tasks"``, so each device runs ``outer_batch / devices`` of the inner
training runs. Learner parameters, the network prior, the optimizer state, the pool of
initial networks and the task data are replicated on every device. The meta-loss is a mean
over the tasks, so XLA inserts the all-reduce that averages the meta-gradient across devices.

Several hosts run the same program: each process calls `initialize` before any other JAX
call and then trains with ``mesh=global_mesh()``. See docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mplp.meta.config import ConfigError

TASK_AXIS = "tasks"
"""Name of the mesh axis that the outer batch of tasks is sharded along."""


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Connect this process to the other processes of a multi-host run.

    Call it once per process, before any other JAX call, with the same
    ``coordinator_address`` and ``num_processes`` on every process. Afterwards
    ``jax.devices()`` lists the devices of all processes, and `global_mesh` spans them.

    Args:
        coordinator_address: ``host:port`` of process 0, which every process can reach.
        num_processes: Number of processes in the run, usually one per host.
        process_id: Index of this process, from 0 to ``num_processes - 1``.

    Raises:
        ConfigError: ``num_processes`` is below 1 or ``process_id`` is out of range.
    """
    # NOTE: no test runs several processes. The test suite checks the sharded meta-step in
    # one process on simulated CPU devices.
    if num_processes < 1:
        raise ConfigError(f"num_processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process_id must be between 0 and {num_processes - 1} for {num_processes} "
            f"processes, got {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def is_main_process() -> bool:
    """Return whether this is process 0, the one that writes the run folder."""
    return jax.process_index() == 0


def task_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """Build a 1-D mesh with the axis ``"tasks"``.

    Args:
        devices: A device count N for the first N devices of ``jax.devices()``, an explicit
            list of devices, or None for all devices of all processes.

    Returns:
        The mesh. Its axis type is ``Auto``, so XLA propagates the task sharding from the
        per-task keys to the rest of the computation.

    Raises:
        ConfigError: N is below 1 or larger than the number of available devices.
    """
    available = jax.devices()
    if devices is None:
        chosen = list(available)
    elif isinstance(devices, int):
        if devices < 1:
            raise ConfigError(f"the device count must be at least 1, got {devices}")
        if devices > len(available):
            platform = available[0].platform
            raise ConfigError(
                f"{devices} devices requested but only {len(available)} {platform} "
                f"device(s) are available: pass a count from 1 to {len(available)}"
            )
        chosen = list(available[:devices])
    else:
        chosen = list(devices)
        if not chosen:
            raise ConfigError("the device list of a mesh is empty")
    return Mesh(np.array(chosen), (TASK_AXIS,), axis_types=(AxisType.Auto,))


def global_mesh() -> Mesh:
    """Build the task mesh over the devices of all processes (call `initialize` first)."""
    return task_mesh(None)


def resolve_mesh(devices: int | None, mesh: Mesh | None) -> Mesh | None:
    """Return the mesh that ``train(devices=..., mesh=...)`` runs on, or None for no mesh.

    Raises:
        ConfigError: Both arguments are given, or ``devices`` is invalid.
    """
    if devices is not None and mesh is not None:
        raise ConfigError("pass either a device count or a mesh, not both")
    if devices is not None:
        return task_mesh(devices)
    return mesh


def check_task_mesh(mesh: Mesh, outer_batch: int) -> None:
    """Check that ``mesh`` is a 1-D ``"tasks"`` mesh whose size divides ``outer_batch``.

    Raises:
        ConfigError: The mesh has other axes, or its device count does not divide the
            outer batch. The message lists the device counts that do.
    """
    if mesh.axis_names != (TASK_AXIS,):
        raise ConfigError(
            f"the meta-trainer needs a 1-D mesh with the axis {TASK_AXIS!r}, got the axes "
            f"{mesh.axis_names}: build it with mplp.meta.distributed.task_mesh"
        )
    count = mesh.size
    if outer_batch % count != 0:
        working = ", ".join(str(divisor) for divisor in divisors(outer_batch))
        raise ConfigError(
            f"outer_batch {outer_batch} does not divide evenly across {count} devices: "
            f"use a device count that divides it ({working}), or change outer_batch"
        )


def divisors(number: int) -> list[int]:
    """Return the positive divisors of ``number`` in increasing order."""
    return [candidate for candidate in range(1, number + 1) if number % candidate == 0]


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Return the sharding that splits the leading (task) axis across the mesh."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Return the sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def shard_task_keys(keys: jax.Array, mesh: Mesh) -> jax.Array:
    """Constrain the per-task keys (leading axis: tasks) to be sharded across ``mesh``.

    Inside ``jax.jit`` this places ``outer_batch / devices`` keys on each device. Outside
    ``jax.jit`` it moves the keys there.
    """
    return jax.lax.with_sharding_constraint(keys, task_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every array of ``tree`` to all devices of ``mesh``.

    In a multi-process run, every process must pass the same values, and ``jax.device_put``
    checks this for host-local inputs (as of JAX 0.10).
    """
    return jax.device_put(tree, replicated_sharding(mesh))


def fetch_to_host(tree: Any) -> Any:
    """Copy the arrays of ``tree`` to host memory as NumPy arrays, for saving.

    ``jax.device_get`` returns typed PRNG keys unchanged (as of JAX 0.10), and the checkpoint
    stores their key data.

    Raises:
        ValueError: An array is spread over several processes without being replicated,
            so this process does not hold all of its values.
    """

    def fetch(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array):
            return leaf
        if not (leaf.is_fully_addressable or leaf.is_fully_replicated):
            raise ValueError(
                f"cannot save an array of shape {leaf.shape} sharded as {leaf.sharding} "
                "across processes: replicate it first"
            )
        return jax.device_get(leaf)

    return jax.tree.map(fetch, tree)
