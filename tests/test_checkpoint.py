"""Tests for mplp.meta.checkpoint: round trips, atomic writes and error messages."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mplp.meta import checkpoint
from mplp.meta.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    snapshot_checkpoint,
    snapshot_steps,
)


def make_tree(offset: float = 0.0) -> dict[str, Any]:
    """Build a nested training state with float32, int32, uint32, key and scalar leaves."""
    return {
        "learner": {
            "rules": {
                "dense0": {
                    "f": {
                        "w0": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7 + offset,
                        "b0": jnp.full((4,), -1.5 + offset, dtype=jnp.float32),
                    }
                }
            },
            "step_count": jnp.array([3, -2, 2**31 - 1], dtype=jnp.int32),
        },
        "rng": {
            "typed_key": jax.random.key(11),
            "raw_key": jax.random.PRNGKey(2**31 + 5),
            "counter": jnp.array([0, 2**32 - 1], dtype=jnp.uint32),
        },
        "history": [jnp.float32(0.25), (jnp.int32(-7), jnp.ones((2,), jnp.float32))],
        "scale": jnp.float32(1e-30 + offset),
        "unused": None,
    }


def assert_trees_equal(actual: Any, expected: Any) -> None:
    actual_structure: Any = jax.tree.structure(actual)
    assert actual_structure == jax.tree.structure(expected)

    for actual_leaf, expected_leaf in zip(
        jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True
    ):
        assert isinstance(actual_leaf, jax.Array)
        assert actual_leaf.dtype == expected_leaf.dtype
        assert actual_leaf.shape == expected_leaf.shape

        if jnp.issubdtype(expected_leaf.dtype, jax.dtypes.prng_key):
            actual_leaf = jax.random.key_data(actual_leaf)
            expected_leaf = jax.random.key_data(expected_leaf)
        np.testing.assert_array_equal(np.asarray(actual_leaf), np.asarray(expected_leaf))


def directory_listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# Round trips.


def test_round_trip_with_like(tmp_path: Path) -> None:
    tree = make_tree()
    save_checkpoint(tmp_path, 5, tree, {})

    step, restored, _ = load_checkpoint(tmp_path, like=make_tree(offset=9.0))

    assert step == 5
    assert_trees_equal(restored, tree)


def test_round_trip_without_like(tmp_path: Path) -> None:
    tree = make_tree()
    save_checkpoint(tmp_path, 5, tree, {})

    _, restored, _ = load_checkpoint(tmp_path)

    assert_trees_equal(restored, tree)
    assert isinstance(restored["history"], list)
    assert isinstance(restored["history"][1], tuple)
    assert restored["unused"] is None


def test_round_trip_of_empty_containers(tmp_path: Path) -> None:
    tree = {"z": jnp.zeros(1), "a": {}, "m": [], "b": ()}
    save_checkpoint(tmp_path, 0, tree, {})

    _, restored, _ = load_checkpoint(tmp_path)

    assert list(restored) == ["z", "a", "m", "b"]
    assert restored["a"] == {}
    assert restored["m"] == []
    assert restored["b"] == ()


def test_round_trip_of_single_leaf(tmp_path: Path) -> None:
    leaf = jnp.linspace(0.0, 1.0, 5)
    save_checkpoint(tmp_path, 1, leaf, {})

    _, without_like, _ = load_checkpoint(tmp_path)
    _, with_like, _ = load_checkpoint(tmp_path, like=leaf)

    np.testing.assert_array_equal(np.asarray(without_like), np.asarray(leaf))
    np.testing.assert_array_equal(np.asarray(with_like), np.asarray(leaf))


def test_round_trip_of_python_scalars(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"rate": 0.5, "count": 3, "flag": True}, {})

    _, restored, _ = load_checkpoint(tmp_path, like={"rate": 0.0, "count": 0, "flag": False})

    assert restored["rate"].dtype == jnp.float32
    assert restored["count"].dtype == jnp.int32
    assert restored["flag"].dtype == jnp.bool_
    assert float(restored["rate"]) == 0.5
    assert int(restored["count"]) == 3
    assert bool(restored["flag"])


def test_round_trip_of_bfloat16(tmp_path: Path) -> None:
    tree = {"w": jnp.array([1.5, -3.25, 1e-3], dtype=jnp.bfloat16)}
    save_checkpoint(tmp_path, 1, tree, {})

    _, restored, _ = load_checkpoint(tmp_path)

    assert_trees_equal(restored, tree)


def test_typed_key_is_usable_after_load(tmp_path: Path) -> None:
    key = jax.random.key(42)
    save_checkpoint(tmp_path, 1, {"key": key}, {})

    _, restored, _ = load_checkpoint(tmp_path)

    assert jnp.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(key)
    np.testing.assert_array_equal(
        np.asarray(jax.random.normal(restored["key"], (4,))),
        np.asarray(jax.random.normal(key, (4,))),
    )


def test_like_restores_namedtuple_optimizer_state(tmp_path: Path) -> None:
    params = {"w": jnp.ones((2, 2))}
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)
    _, state = optimizer.update({"w": jnp.full((2, 2), 0.5)}, state, params)
    save_checkpoint(tmp_path, 1, {"params": params, "opt_state": state}, {})

    like = {"params": params, "opt_state": optimizer.init(params)}
    _, restored, _ = load_checkpoint(tmp_path, like=like)

    assert_trees_equal(restored, {"params": params, "opt_state": state})
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)


def test_like_accepts_shape_dtype_structs(tmp_path: Path) -> None:
    tree = make_tree()
    save_checkpoint(tmp_path, 1, tree, {})

    like = jax.eval_shape(lambda: make_tree(offset=1.0))
    _, restored, _ = load_checkpoint(tmp_path, like=like)

    assert_trees_equal(restored, tree)


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {
        "config": {"learning_rate": 1e-3, "layers": [8, 8], "name": "sine"},
        "rng_state": [0, 2**32 - 1, 12345],
        "metric_history_length": 17,
        "note": None,
    }
    save_checkpoint(tmp_path, 123, make_tree(), metadata)

    step, _, restored = load_checkpoint(tmp_path)

    assert step == 123
    assert restored == metadata


def test_file_is_readable_by_numpy(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 8, make_tree(), {"run": "a"})

    with np.load(path, allow_pickle=False) as archive:
        weights = archive["learner/rules/dense0/f/w0"]
        document = json.loads(str(archive["__metadata__"]))

    np.testing.assert_array_equal(
        weights, np.asarray(make_tree()["learner"]["rules"]["dense0"]["f"]["w0"])
    )
    assert document["format_version"] == checkpoint.FORMAT_VERSION
    assert document["step"] == 8
    assert document["metadata"] == {"run": "a"}


def test_save_returns_path_and_creates_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "first"

    path = save_checkpoint(run_dir, 0, make_tree(), {})

    assert path == run_dir / CHECKPOINT_NAME
    assert directory_listing(run_dir) == [CHECKPOINT_NAME]


def test_load_accepts_file_path(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 4, make_tree(), {})

    step, _, _ = load_checkpoint(str(path))

    assert step == 4


def test_save_rotates_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {"index": 1})
    save_checkpoint(tmp_path, 2, make_tree(offset=1.0), {"index": 2})
    save_checkpoint(tmp_path, 3, make_tree(offset=2.0), {"index": 3})

    current = load_checkpoint(tmp_path)
    previous = load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT_NAME)

    assert directory_listing(tmp_path) == [CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME]
    assert current[0] == 3
    assert current[2] == {"index": 3}
    assert_trees_equal(current[1], make_tree(offset=2.0))
    assert previous[0] == 2
    assert previous[2] == {"index": 2}
    assert_trees_equal(previous[1], make_tree(offset=1.0))


def test_rotation_copies_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reject_link(source: Any, target: Any) -> None:
        raise OSError("hard links are not supported")

    monkeypatch.setattr(os, "link", reject_link)
    save_checkpoint(tmp_path, 1, make_tree(), {})
    save_checkpoint(tmp_path, 2, make_tree(offset=1.0), {})

    previous_step, previous_tree, _ = load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT_NAME)

    assert previous_step == 1
    assert_trees_equal(previous_tree, make_tree())
    assert directory_listing(tmp_path) == [CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME]


def test_other_processes_skip_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jax, "process_index", lambda: 1)

    path = save_checkpoint(tmp_path / "run", 1, make_tree(), {})

    assert path == tmp_path / "run" / CHECKPOINT_NAME
    assert not path.exists()


# Kept copies.


def test_snapshot_survives_later_saves(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 2, make_tree(), {"index": 2})
    kept_path = snapshot_checkpoint(tmp_path, 2)
    save_checkpoint(tmp_path, 3, make_tree(offset=1.0), {"index": 3})

    step, tree, metadata = load_checkpoint(kept_path)

    assert kept_path.name == "checkpoint-0000002.npz"
    assert step == 2
    assert metadata == {"index": 2}
    assert_trees_equal(tree, make_tree())


def test_snapshot_copies_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reject_link(source: Any, target: Any) -> None:
        raise OSError("hard links are not supported")

    save_checkpoint(tmp_path, 5, make_tree(), {})
    monkeypatch.setattr(os, "link", reject_link)
    kept_path = snapshot_checkpoint(tmp_path, 5)

    assert load_checkpoint(kept_path)[0] == 5
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_snapshot_without_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint.npz"):
        snapshot_checkpoint(tmp_path, 1)


def test_snapshot_steps_sorted(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {})
    for step in (30, 4, 100):
        snapshot_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-latest.npz").write_bytes(b"")

    assert snapshot_steps(tmp_path) == (4, 30, 100)


# Atomicity.


@pytest.mark.parametrize("failing_call", [1, 2], ids=["rotation", "final_replace"])
def test_failed_replace_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {"index": 1})
    original_bytes = (tmp_path / CHECKPOINT_NAME).read_bytes()
    original_replace = os.replace
    calls = []

    def replace_failing_once(source: Any, target: Any) -> None:
        calls.append(target)
        if len(calls) == failing_call:
            raise OSError("simulated crash during os.replace")
        original_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_failing_once)
    try:
        with pytest.raises(OSError, match="simulated crash"):
            save_checkpoint(tmp_path, 2, make_tree(offset=1.0), {"index": 2})
    finally:
        monkeypatch.undo()

    step, tree, metadata = load_checkpoint(tmp_path)

    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == original_bytes
    assert step == 1
    assert metadata == {"index": 1}
    assert_trees_equal(tree, make_tree())
    assert not [name for name in directory_listing(tmp_path) if name.endswith(".tmp")]


def test_failed_write_removes_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {})
    original_bytes = (tmp_path / CHECKPOINT_NAME).read_bytes()
    original_write_array = np.lib.format.write_array
    written: list[np.ndarray] = []

    def write_array_failing_later(file: Any, array: np.ndarray, **kwargs: Any) -> None:
        if len(written) == 2:
            raise OSError("simulated full disk")
        written.append(array)
        original_write_array(file, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array_failing_later)
    try:
        with pytest.raises(OSError, match="simulated full disk"):
            save_checkpoint(tmp_path, 2, make_tree(offset=1.0), {})
    finally:
        monkeypatch.undo()

    assert directory_listing(tmp_path) == [CHECKPOINT_NAME]
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == original_bytes
    assert load_checkpoint(tmp_path)[0] == 1


def test_invalid_metadata_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path, 1, make_tree(), {"weights": np.ones(2)})

    assert directory_listing(tmp_path) == []


# Errors.


def test_missing_directory_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(missing)

    message = str(error.value)
    assert f"no checkpoint found in {missing}" in message
    assert "start a run without --resume" in message
    assert "checkpoint.npz" in message


def test_missing_file_in_directory_raises_with_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint found in") as error:
        load_checkpoint(tmp_path)

    assert str(tmp_path / CHECKPOINT_NAME) in str(error.value)


def test_garbage_file_raises(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x93NUMPY not really a checkpoint" * 10)

    with pytest.raises(CheckpointError, match="unreadable or corrupted") as error:
        load_checkpoint(tmp_path)

    assert str(tmp_path / CHECKPOINT_NAME) in str(error.value)
    assert PREVIOUS_CHECKPOINT_NAME in str(error.value)


def test_truncated_file_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, make_tree(), {})
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])

    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(tmp_path)


def test_flipped_data_byte_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, make_tree(), {})
    content = bytearray(path.read_bytes())
    weights = np.asarray(make_tree()["learner"]["rules"]["dense0"]["f"]["w0"]).tobytes()
    offset = bytes(content).find(weights)
    assert offset > 0
    content[offset + 5] ^= 0xFF
    path.write_bytes(bytes(content))

    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(tmp_path)


def test_missing_metadata_entry_raises(tmp_path: Path) -> None:
    np.savez(tmp_path / CHECKPOINT_NAME, w=np.ones(3))

    with pytest.raises(CheckpointError, match="__metadata__"):
        load_checkpoint(tmp_path)


def test_invalid_json_raises(tmp_path: Path) -> None:
    np.savez(tmp_path / CHECKPOINT_NAME, __metadata__=np.array("{not json"))

    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(tmp_path)


def rewrite_document(path: Path, change: dict[str, Any]) -> None:
    """Replace fields of the JSON metadata of an existing checkpoint file."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}

    document = json.loads(str(arrays["__metadata__"]))
    document.update(change)
    arrays["__metadata__"] = np.array(json.dumps(document))
    np.savez(path, **arrays)


def test_version_mismatch_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, make_tree(), {})
    rewrite_document(path, {"format_version": 99})

    with pytest.raises(CheckpointError, match="format version 99") as error:
        load_checkpoint(tmp_path)

    assert f"reads format version {checkpoint.FORMAT_VERSION}" in str(error.value)


def test_missing_document_field_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, make_tree(), {})
    rewrite_document(path, {"step": "one"})

    with pytest.raises(CheckpointError, match="'step'"):
        load_checkpoint(tmp_path)


def first_leaf_record(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as archive:
        document = json.loads(str(archive["__metadata__"]))
    return dict(document["leaves"][0])


@pytest.mark.parametrize(
    ("change", "expected_message"),
    [
        ({"leaves": ["w0"]}, "invalid leaf record"),
        ({"structure": []}, "'structure'"),
        ({"structure": {"type": "set", "children": []}}, "unknown structure node type 'set'"),
        ({"structure": {"type": "list"}}, "has no children list"),
        ({"structure": {"type": "list", "children": ["leaf"]}}, "invalid structure node"),
        ({"structure": {"type": "leaf", "name": "ghost"}}, "unknown leaf 'ghost'"),
        (
            {"structure": {"type": "dict", "keys": ["a", "b"], "children": [{"type": "none"}]}},
            "keys that do not match its children",
        ),
    ],
    ids=[
        "bad_leaf_record",
        "bad_structure",
        "unknown_node",
        "no_children",
        "bad_child",
        "unknown_leaf",
        "dict_keys",
    ],
)
def test_malformed_document_raises(
    tmp_path: Path, change: dict[str, Any], expected_message: str
) -> None:
    path = save_checkpoint(tmp_path, 1, make_tree(), {})
    rewrite_document(path, change)

    with pytest.raises(CheckpointError, match="unreadable or corrupted") as error:
        load_checkpoint(tmp_path)

    assert expected_message in str(error.value)


@pytest.mark.parametrize(
    ("record_change", "expected_message"),
    [
        ({"name": "ghost"}, "'ghost' is listed in the metadata but not stored"),
        ({"shape": [99]}, "but the metadata lists shape (99,)"),
        ({"storage_dtype": "int8"}, "but the metadata lists shape"),
        ({"dtype": "float99"}, "cannot be restored"),
    ],
    ids=["missing_array", "shape", "storage_dtype", "unknown_dtype"],
)
def test_inconsistent_leaf_record_raises(
    tmp_path: Path, record_change: dict[str, Any], expected_message: str
) -> None:
    path = save_checkpoint(tmp_path, 1, {"w": jnp.ones(3, jnp.float32)}, {})
    record = {**first_leaf_record(path), **record_change}
    structure = {
        "type": "dict",
        "keys": ["w"],
        "children": [{"type": "leaf", "name": record["name"]}],
    }
    rewrite_document(path, {"leaves": [record], "structure": structure})

    with pytest.raises(CheckpointError, match="unreadable or corrupted") as error:
        load_checkpoint(tmp_path)

    assert expected_message in str(error.value)


def test_non_object_document_raises(tmp_path: Path) -> None:
    np.savez(tmp_path / CHECKPOINT_NAME, __metadata__=np.array("[1, 2]"))

    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(tmp_path)


def test_foreign_archive_entry_raises(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / CHECKPOINT_NAME, mode="w") as archive:
        archive.writestr("readme.txt", "hello")

    with pytest.raises(CheckpointError, match="unexpected archive entry 'readme.txt'"):
        load_checkpoint(tmp_path)


def test_directory_fsync_failure_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mplp.meta.checkpoint"):
        checkpoint._fsync_directory(tmp_path / "missing")

    assert "fsync of checkpoint directory" in caplog.text


def test_like_with_other_shape_names_key_path(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {})
    like = make_tree()
    like["learner"]["rules"]["dense0"]["f"]["w0"] = jnp.zeros((4, 4), jnp.float32)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path, like=like)

    message = str(error.value)
    assert "'learner/rules/dense0/f/w0'" in message
    assert "shape (3, 4)" in message
    assert "expects shape (4, 4)" in message
    assert "Build like from the config" in message


def test_like_with_other_dtype_names_key_path(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {})
    like = make_tree()
    like["rng"]["counter"] = like["rng"]["counter"].astype(jnp.int32)

    with pytest.raises(CheckpointError, match="'rng/counter'.*dtype uint32.*dtype int32"):
        load_checkpoint(tmp_path, like=like)


def test_like_with_other_keys_names_key_paths(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, make_tree(), {})
    like = make_tree()
    del like["scale"]
    like["extra"] = jnp.zeros(2)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path, like=like)

    message = str(error.value)
    assert "not in the checkpoint: 'extra'" in message
    assert "not in like: 'scale'" in message


def test_like_mismatch_lists_at_most_five_names(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {f"leaf{i}": jnp.zeros(1) for i in range(8)}, {})

    with pytest.raises(CheckpointError, match="'leaf4' and 3 more"):
        load_checkpoint(tmp_path, like={"other": jnp.zeros(1)})


def test_like_with_colliding_key_paths_raises(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"a": {"b": jnp.zeros(1)}}, {})

    with pytest.raises(CheckpointError, match="several leaves with the key path 'a/b'"):
        load_checkpoint(tmp_path, like={"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})


def test_like_with_typed_key_for_raw_key_raises(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"key": jax.random.PRNGKey(0)}, {})

    with pytest.raises(CheckpointError, match="'key'"):
        load_checkpoint(tmp_path, like={"key": jax.random.key(0)})


def test_namedtuple_without_like_raises(tmp_path: Path) -> None:
    state = optax.adam(1e-3).init({"w": jnp.ones(2)})
    save_checkpoint(tmp_path, 1, {"opt_state": state}, {})

    with pytest.raises(CheckpointError, match="ScaleByAdamState.*Pass like="):
        load_checkpoint(tmp_path)


def test_colliding_key_paths_raise(tmp_path: Path) -> None:
    tree = {"a/b": jnp.zeros(1), "a": {"b": jnp.ones(1)}}

    with pytest.raises(CheckpointError, match="'a/b'"):
        save_checkpoint(tmp_path, 1, tree, {})

    assert directory_listing(tmp_path) == []


def test_reserved_leaf_name_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path, 1, {"__metadata__": jnp.zeros(1)}, {})


def test_invalid_step_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="-1"):
        save_checkpoint(tmp_path, -1, make_tree(), {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1.5, make_tree(), {})  # type: ignore[arg-type]
