"""Atomic checkpoints of JAX pytrees for meta-training runs.

A run directory contains at most two checkpoint files:

* ``checkpoint.npz``: the newest checkpoint.
* ``checkpoint.prev.npz``: the checkpoint that the newest one replaced, kept as a
  fallback in case the newest file turns out to be unusable.

Each file is a NumPy ``.npz`` archive, which ``numpy.load`` can also read. Every pytree
leaf is stored under its key path string: dict keys, sequence indices and attribute
names joined by ``/``, for example ``learner/rules/dense0/f/w0``. A tree that is a single
leaf stores it as ``__root__``. The entry ``__metadata__`` is a JSON string with the
format version, the step, the caller's metadata dict, one record per leaf (name, shape,
dtype, PRNG implementation) and a description of the tree structure.

Typical use in a training loop::

    save_checkpoint(run_dir, step, {"params": params, "opt_state": opt_state}, meta)
    step, state, meta = load_checkpoint(run_dir, like={"params": p0, "opt_state": s0})
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CHECKPOINT_NAME = "checkpoint.npz"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.npz"
FORMAT_VERSION = 1

_METADATA_ENTRY = "__metadata__"
_ROOT_LEAF_NAME = "__root__"
_MAX_LISTED_NAMES = 5

_logger = logging.getLogger(__name__)

PyTree = Any
LeafRecord = dict[str, Any]


class CheckpointError(Exception):
    """Error for a checkpoint that is missing, unreadable, corrupted, of another format
    version, or different from the tree it is loaded into."""


# Saving.


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    tree: PyTree,
    metadata: Mapping[str, Any],
) -> Path:
    """Write ``tree`` and ``metadata`` atomically to ``directory/checkpoint.npz``.

    The archive is first written to a temporary file in ``directory``, flushed and
    fsynced, and then moved onto ``checkpoint.npz`` with ``os.replace``. Before that move,
    the existing ``checkpoint.npz`` is hard-linked (or copied, where the file system has
    no hard links) to a temporary name and moved onto ``checkpoint.prev.npz``. So
    ``checkpoint.npz`` always exists once the first save has finished, and a crash during
    a save leaves the previous checkpoint intact. A failed save removes its temporary
    files before re-raising.

    In multi-process runs only process 0 (``jax.process_index() == 0``) writes. The other
    processes return the path at once without writing and without waiting for process 0,
    so a caller that reads the file on other processes must synchronise first. Process 0
    copies every leaf to host memory with ``numpy.asarray``, so arrays sharded across
    processes must be gathered or replicated before saving.

    Args:
        directory: Run directory. It is created if it does not exist.
        step: Non-negative training step stored with the checkpoint.
        tree: Pytree of arrays and scalars. Any pytree can be saved, but
            ``load_checkpoint`` rebuilds it without ``like`` only from plain dicts with
            string keys, lists, tuples and None. Typed PRNG keys from
            ``jax.random.key`` are stored as their key data and restored as typed keys.
        metadata: JSON-serialisable dict, for example the config, the RNG state as a
            list of ints and the length of the metric history. JSON turns tuples into
            lists and non-string dict keys into strings.

    Returns:
        The path of ``checkpoint.npz``, also on processes that skip writing.

    Raises:
        CheckpointError: Two leaves have the same key path string, or a leaf uses the
            reserved name ``__metadata__``.
        TypeError: ``metadata`` is not JSON-serialisable or ``step`` is not an integer.
        ValueError: ``step`` is negative.
        OSError: Writing or moving the file failed.
    """
    directory = Path(directory)
    final_path = directory / CHECKPOINT_NAME
    step = _validate_step(step)

    if jax.process_index() != 0:
        return final_path

    arrays, records = _encode_leaves(tree)
    document = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "metadata": dict(metadata),
        "leaves": records,
        "structure": _describe_node(tree, ()),
    }
    arrays[_METADATA_ENTRY] = np.array(_dump_json(document))

    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory, arrays)
    return final_path


def _validate_step(step: int) -> int:
    value = operator.index(step)
    if value < 0:
        raise ValueError(f"step must be non-negative, got {value}")
    return value


def _dump_json(document: dict[str, Any]) -> str:
    try:
        return json.dumps(document)
    except TypeError as error:
        raise TypeError(
            f"checkpoint metadata is not JSON-serialisable: {error}. Convert arrays with "
            ".tolist() and other objects to strings, numbers, lists or dicts."
        ) from error


def _key_path_name(path: tuple[Any, ...]) -> str:
    """Join the entries of a JAX key path with ``/``, for example ``learner/rules/0``."""
    if not path:
        return _ROOT_LEAF_NAME

    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _canonical_dtype(leaf: Any) -> np.dtype[Any]:
    """Return the dtype that ``jnp.asarray(leaf)`` gives, so Python floats map to float32
    unless ``jax_enable_x64`` is set."""
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _leaf_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    """Return the (shape, dtype name) that a leaf is stored with.

    Works for arrays, scalars and ``jax.ShapeDtypeStruct`` leaves without copying data.
    """
    if _is_typed_key(leaf):
        return tuple(leaf.shape), str(leaf.dtype)

    shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
    return tuple(int(size) for size in shape), _canonical_dtype(leaf).name


def _encode_leaf(name: str, leaf: Any) -> tuple[np.ndarray, LeafRecord]:
    """Convert one leaf to the array stored in the archive, and describe it."""
    shape, dtype_name = _leaf_spec(leaf)
    record: LeafRecord = {"name": name, "shape": list(shape), "dtype": dtype_name}

    if _is_typed_key(leaf):
        stored = np.asarray(jax.random.key_data(leaf))
        record["key_impl"] = str(jax.random.key_impl(leaf))
    else:
        stored = np.asarray(leaf, dtype=_canonical_dtype(leaf))
        record["key_impl"] = None

        # numpy writes dtypes such as bfloat16 (from ml_dtypes) to .npy as raw void bytes,
        # so they are stored as unsigned integers of the same size and viewed back on load.
        if stored.dtype.kind not in "biufc":
            stored = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))

    record["storage_dtype"] = stored.dtype.name
    return stored, record


def _encode_leaves(tree: PyTree) -> tuple[dict[str, np.ndarray], list[LeafRecord]]:
    arrays: dict[str, np.ndarray] = {}
    records: list[LeafRecord] = []

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _key_path_name(path)
        if name == _METADATA_ENTRY:
            raise CheckpointError(
                f"the tree contains a leaf named {name!r}, which is reserved for checkpoint "
                "metadata. Rename that key."
            )
        if name in arrays:
            raise CheckpointError(
                f"two leaves of the tree have the key path {name!r}, for example because a "
                "dict key contains '/'. Rename one of them."
            )

        arrays[name], record = _encode_leaf(name, leaf)
        records.append(record)

    return arrays, records


def _describe_node(node: Any, parts: tuple[str, ...]) -> dict[str, Any]:
    """Describe the container structure of ``node`` as JSON, for rebuilding without ``like``.

    Containers other than plain dicts with string keys, lists, tuples and None are
    recorded as "unsupported" with their type name.
    """
    if node is None:
        return {"type": "none"}

    if type(node) is dict and all(isinstance(key, str) for key in node):
        return {
            "type": "dict",
            "keys": list(node),
            "children": [_describe_node(node[key], (*parts, key)) for key in node],
        }

    if type(node) in (list, tuple):
        return {
            "type": type(node).__name__,
            "children": [_describe_node(child, (*parts, str(i))) for i, child in enumerate(node)],
        }

    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node)):
        return {"type": "leaf", "name": "/".join(parts) if parts else _ROOT_LEAF_NAME}

    return {"type": "unsupported", "python_type": f"{type(node).__module__}.{type(node).__name__}"}


def _write_atomically(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz archive to a temporary file, then move it into place."""
    temporary_path = _write_temporary_archive(directory, arrays)

    try:
        _keep_previous_checkpoint(directory)
        os.replace(temporary_path, directory / CHECKPOINT_NAME)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise

    _fsync_directory(directory)


def _write_temporary_archive(directory: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write and fsync the archive under a temporary name, removing it if writing fails."""
    with tempfile.NamedTemporaryFile(
        dir=directory, prefix=".checkpoint.", suffix=".npz.tmp", delete=False
    ) as temporary:
        temporary_path = Path(temporary.name)
        try:
            _write_archive(temporary, arrays)
            temporary.flush()
            os.fsync(temporary.fileno())
        except BaseException:
            temporary.close()
            temporary_path.unlink(missing_ok=True)
            raise

    return temporary_path


def _write_archive(file: Any, arrays: dict[str, np.ndarray]) -> None:
    # Writes the same layout as numpy.savez. numpy.savez itself takes the names as keyword
    # arguments, which breaks for leaves named "file" or "allow_pickle".
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def _keep_previous_checkpoint(directory: Path) -> None:
    """Make ``checkpoint.prev.npz`` a copy of the current ``checkpoint.npz``, if any.

    The current file stays in place, so a crash at any point leaves ``checkpoint.npz``.
    """
    current_path = directory / CHECKPOINT_NAME
    if not current_path.exists():
        return

    _copy_atomically(current_path, directory / PREVIOUS_CHECKPOINT_NAME)


def _copy_atomically(source_path: Path, target_path: Path) -> None:
    """Make ``target_path`` a copy of ``source_path`` that appears complete or not at all.

    The copy is a hard link where the file system allows, and a fsynced byte copy otherwise.
    It is staged under a temporary name in the target's folder and moved with ``os.replace``.
    """
    staging_path = target_path.parent / f".{target_path.name}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            os.link(source_path, staging_path)
        except OSError:
            # Some file systems have no hard links, so copy the bytes instead.
            shutil.copyfile(source_path, staging_path)
            with open(staging_path, "rb+") as staging_file:
                os.fsync(staging_file.fileno())

        os.replace(staging_path, target_path)
    finally:
        staging_path.unlink(missing_ok=True)


def snapshot_name(step: int) -> str:
    """Return the file name of the kept copy of the checkpoint of ``step``."""
    return f"checkpoint-{_validate_step(step):07d}.npz"


def snapshot_checkpoint(directory: str | os.PathLike[str], step: int) -> Path:
    """Keep a copy of ``directory/checkpoint.npz`` as ``checkpoint-STEP.npz``.

    Later saves replace ``checkpoint.npz`` but leave the copy, so an earlier state of a run
    can still be evaluated (`mplp.meta.trainer.load_run` with ``step``). The copy is a hard
    link where the file system allows (no extra space) and is moved into place with
    ``os.replace``, so a crash leaves either no copy or a complete one. Only process 0
    writes, as in `save_checkpoint`.

    Returns:
        The path of the copy.

    Raises:
        CheckpointError: when ``directory`` has no ``checkpoint.npz``.
    """
    directory = Path(directory)
    target_path = directory / snapshot_name(step)
    if jax.process_index() != 0:
        return target_path

    current_path = directory / CHECKPOINT_NAME
    if not current_path.is_file():
        raise CheckpointError(f"no {CHECKPOINT_NAME} in {directory} to keep a copy of")
    _copy_atomically(current_path, target_path)
    _fsync_directory(directory)
    return target_path


def snapshot_steps(directory: str | os.PathLike[str]) -> tuple[int, ...]:
    """Return the steps of the checkpoint copies kept in ``directory``, sorted."""
    steps = []
    for path in Path(directory).glob("checkpoint-*.npz"):
        digits = path.stem.removeprefix("checkpoint-")
        if digits.isdigit():
            steps.append(int(digits))
    return tuple(sorted(steps))


def _fsync_directory(directory: Path) -> None:
    """Flush the directory entry changes made by ``os.replace`` to disk (POSIX only)."""
    if os.name != "posix":
        return

    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        # The checkpoint file is already in place, so this only weakens durability after a
        # power loss. Some file systems reject fsync on directories.
        _logger.warning("fsync of checkpoint directory %s failed: %s", directory, error)


# Loading.


def load_checkpoint(
    path_or_directory: str | os.PathLike[str],
    like: PyTree | None = None,
) -> tuple[int, PyTree, dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``.

    Leaves are restored as JAX arrays on the default device with the stored dtypes.
    Typed PRNG keys are restored with ``jax.random.wrap_key_data`` and keep their
    implementation. Leaves saved with 64-bit dtypes come back as 32-bit arrays unless
    ``jax_enable_x64`` is set, as with ``jnp.asarray``.

    Args:
        path_or_directory: A run directory that contains ``checkpoint.npz``, or the path
            of a checkpoint file such as ``checkpoint.prev.npz``.
        like: Optional pytree with the structure of the saved tree, for example the
            freshly initialised training state. Its leaves may be arrays, scalars or
            ``jax.ShapeDtypeStruct``. The restored tree has the pytree types of ``like``,
            so NamedTuples, dataclasses and optax states are restored only this way.
            Without ``like``, the tree is rebuilt from plain dicts with string keys,
            lists, tuples and None.

    Returns:
        The tuple ``(step, tree, metadata)`` with the metadata dict given to
        ``save_checkpoint``.

    Raises:
        CheckpointError: No checkpoint exists at the path, the file is unreadable or
            corrupted, it has another format version, the key paths, shapes or dtypes
            differ from ``like``, or ``like`` is None and the tree contains other
            container types.
    """
    path = _resolve_checkpoint_file(Path(path_or_directory))
    arrays = _read_archive(path)
    document = _parse_document(arrays.pop(_METADATA_ENTRY, None), path)

    records = _index_records(document["leaves"], path)
    if like is None:
        tree = _rebuild_node(document["structure"], records, arrays, path)
    else:
        tree = _restore_into_like(like, records, arrays, path)

    return document["step"], tree, document["metadata"]


def _resolve_checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        file_path = path / CHECKPOINT_NAME
    elif path.suffix == ".npz" or path.is_file():
        file_path = path
    else:
        file_path = path / CHECKPOINT_NAME

    if not file_path.is_file():
        raise CheckpointError(
            f"no checkpoint found in {file_path.parent}: start a run without --resume, or "
            f"pass the run folder that contains {CHECKPOINT_NAME} (missing file: {file_path})"
        )
    return file_path


def _corrupted_error(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is unreadable or corrupted ({reason}). Load "
        f"{path.parent / PREVIOUS_CHECKPOINT_NAME} instead, or start a run without --resume."
    )


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for entry_name in archive.namelist():
                if not entry_name.endswith(".npy"):
                    raise _corrupted_error(path, f"unexpected archive entry {entry_name!r}")

                with archive.open(entry_name) as entry:
                    arrays[entry_name.removesuffix(".npy")] = np.lib.format.read_array(
                        entry, allow_pickle=False
                    )
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise _corrupted_error(path, f"{type(error).__name__}: {error}") from error

    return arrays


def _parse_document(entry: np.ndarray | None, path: Path) -> dict[str, Any]:
    """Decode and check the JSON metadata entry of a checkpoint."""
    if entry is None or entry.ndim != 0 or entry.dtype.kind != "U":
        raise _corrupted_error(path, f"missing or invalid {_METADATA_ENTRY} entry")

    try:
        document = json.loads(str(entry[()]))
    except json.JSONDecodeError as error:
        raise _corrupted_error(path, f"invalid JSON in {_METADATA_ENTRY}: {error}") from error
    if not isinstance(document, dict):
        raise _corrupted_error(path, f"{_METADATA_ENTRY} is not a JSON object")

    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, but this version of mplp "
            f"reads format version {FORMAT_VERSION}. Load it with the mplp version that "
            "wrote it, or start a run without --resume."
        )

    expected_types = {"step": int, "metadata": dict, "leaves": list, "structure": dict}
    for key, expected_type in expected_types.items():
        if not isinstance(document.get(key), expected_type):
            raise _corrupted_error(
                path, f"{_METADATA_ENTRY} has no valid {key!r} ({expected_type.__name__})"
            )
    return document


def _index_records(records: list[Any], path: Path) -> dict[str, LeafRecord]:
    """Check the leaf records and index them by name, keeping the saved order."""
    required = {"name": str, "shape": list, "dtype": str, "storage_dtype": str}
    indexed: dict[str, LeafRecord] = {}

    for record in records:
        valid = isinstance(record, dict) and all(
            isinstance(record.get(key), expected_type) for key, expected_type in required.items()
        )
        if not valid:
            raise _corrupted_error(path, f"invalid leaf record {record!r}")
        indexed[record["name"]] = record

    return indexed


def _decode_leaf(record: LeafRecord, arrays: dict[str, np.ndarray], path: Path) -> jax.Array:
    """Turn one stored array back into a JAX array or typed PRNG key."""
    name = record["name"]
    stored = arrays.get(name)
    if stored is None:
        raise _corrupted_error(path, f"leaf {name!r} is listed in the metadata but not stored")

    shape = tuple(record["shape"])
    if stored.dtype.name != record["storage_dtype"] or stored.shape[: len(shape)] != shape:
        raise _corrupted_error(
            path,
            f"leaf {name!r} is stored with shape {stored.shape} and dtype {stored.dtype}, but "
            f"the metadata lists shape {shape} and dtype {record['storage_dtype']}",
        )

    key_impl = record.get("key_impl")
    try:
        if key_impl is not None:
            return jax.random.wrap_key_data(jnp.asarray(stored), impl=key_impl)

        dtype = jnp.dtype(record["dtype"])
        values = stored if stored.dtype == dtype else stored.view(dtype)
        return jnp.asarray(values)
    except (TypeError, ValueError) as error:
        raise _corrupted_error(path, f"leaf {name!r} cannot be restored: {error}") from error


def _rebuild_node(
    node: Any,
    records: dict[str, LeafRecord],
    arrays: dict[str, np.ndarray],
    path: Path,
) -> PyTree:
    """Rebuild the tree from its JSON structure description."""
    if not isinstance(node, dict):
        raise _corrupted_error(path, f"invalid structure node {node!r}")
    node_type = node.get("type")

    if node_type == "none":
        return None

    if node_type == "leaf":
        record = records.get(node.get("name", ""))
        if record is None:
            raise _corrupted_error(path, f"structure names unknown leaf {node.get('name')!r}")
        return _decode_leaf(record, arrays, path)

    if node_type == "unsupported":
        raise CheckpointError(
            f"checkpoint {path} contains a {node.get('python_type')} node, which "
            "load_checkpoint rebuilds only from like. Pass like=<a tree with the same "
            "structure>, for example the freshly initialised training state."
        )

    children = node.get("children")
    if not isinstance(children, list):
        raise _corrupted_error(path, f"structure node {node_type!r} has no children list")
    rebuilt = [_rebuild_node(child, records, arrays, path) for child in children]

    if node_type == "list":
        return rebuilt
    if node_type == "tuple":
        return tuple(rebuilt)
    if node_type == "dict":
        keys = node.get("keys")
        if not isinstance(keys, list) or len(keys) != len(rebuilt):
            raise _corrupted_error(path, "a dict node has keys that do not match its children")
        return dict(zip(keys, rebuilt, strict=True))

    raise _corrupted_error(path, f"unknown structure node type {node_type!r}")


def _format_names(names: list[str]) -> str:
    listed = ", ".join(repr(name) for name in names[:_MAX_LISTED_NAMES])
    if len(names) > _MAX_LISTED_NAMES:
        listed += f" and {len(names) - _MAX_LISTED_NAMES} more"
    return listed


def _restore_into_like(
    like: PyTree,
    records: dict[str, LeafRecord],
    arrays: dict[str, np.ndarray],
    path: Path,
) -> PyTree:
    """Restore the stored leaves into the pytree structure of ``like``."""
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [_key_path_name(key_path) for key_path, _ in like_leaves]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise CheckpointError(
            f"like has several leaves with the key path {_format_names(duplicates)}, for "
            "example because a dict key contains '/'. Rename one of them."
        )

    missing = [name for name in names if name not in records]
    unexpected = [name for name in records if name not in set(names)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the structure of like. Key paths in like but "
            f"not in the checkpoint: {_format_names(missing) or 'none'}. Key paths in the "
            f"checkpoint but not in like: {_format_names(unexpected) or 'none'}. Build like "
            "from the config that wrote the checkpoint, or pass like=None to inspect it."
        )

    restored = []
    for name, (_, like_leaf) in zip(names, like_leaves, strict=True):
        record = records[name]
        expected_shape, expected_dtype = _leaf_spec(like_leaf)
        found_shape = tuple(record["shape"])

        if (found_shape, record["dtype"]) != (expected_shape, expected_dtype):
            raise CheckpointError(
                f"leaf {name!r} in checkpoint {path} has shape {found_shape} and dtype "
                f"{record['dtype']}, but like expects shape {expected_shape} and dtype "
                f"{expected_dtype}. Build like from the config that wrote the checkpoint."
            )
        restored.append(_decode_leaf(record, arrays, path))

    return jax.tree_util.tree_unflatten(treedef, restored)
