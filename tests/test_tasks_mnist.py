"""Tests for MNIST reading, verification, download and preprocessing.

Most tests write small IDX files into a temporary folder. The download tests use
file:// mirrors or a replaced `urlopen`, so no test opens a network connection. The
tests at the end read the real MNIST files and are skipped when they are not found.
"""

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mplp.tasks import mnist, mnist_io
from mplp.tasks.mnist import MnistDataError, MnistDataset, MnistStatistics
from mplp.tasks.mnist_io import IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES, MnistFile

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big")
    for dimension in array.shape:
        header += dimension.to_bytes(4, "big")
    return header + np.asarray(array, dtype=np.uint8).tobytes()


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _random_images(seed: int, count: int, side: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side), dtype=np.uint8)


def _write_split_files(directory: Path, suffix: str = ".gz") -> dict[str, np.ndarray]:
    """Write small train (6 examples) and test (4 examples) files under the official names."""
    arrays = {
        TRAIN_IMAGES: _random_images(0, 6),
        TRAIN_LABELS: np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        TEST_IMAGES: _random_images(1, 4),
        TEST_LABELS: np.array([5, 6, 7, 8], dtype=np.uint8),
    }
    for stem, array in arrays.items():
        magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
        _write(directory / f"{stem}{suffix}", _idx_bytes(magic, array))
    return arrays


def _register_checksums(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make the .gz files in `directory` the official ones for this test."""
    for path in directory.glob("*.gz"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(MNIST_FILES, path.name, MnistFile(path.stat().st_size, digest))


# Reading IDX files


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    images = _random_images(2, 3, side=5)
    labels = np.array([3, 0, 9], dtype=np.uint8)
    image_path = _write(tmp_path / f"images{suffix}", _idx_bytes(IMAGES_MAGIC, images))
    label_path = _write(tmp_path / f"labels{suffix}", _idx_bytes(LABELS_MAGIC, labels))

    read_images = mnist.read_idx_images(image_path)
    read_labels = mnist.read_idx_labels(str(label_path))

    assert read_images.dtype == np.uint8
    assert read_images.shape == (3, 5, 5)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_read_idx_accepts_empty_file_body(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels", _idx_bytes(LABELS_MAGIC, np.zeros(0, np.uint8)))

    assert mnist.read_idx_labels(path).shape == (0,)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_truncated_data(tmp_path: Path, suffix: str) -> None:
    data = _idx_bytes(IMAGES_MAGIC, _random_images(3, 2))
    path = _write(tmp_path / f"images{suffix}", data[:-10])

    with pytest.raises(MnistDataError) as error:
        mnist.read_idx_images(path)

    assert str(path) in str(error.value)
    assert "truncated" in str(error.value)
    assert "needs 1584 bytes" in str(error.value)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    data = _idx_bytes(IMAGES_MAGIC, _random_images(3, 2))
    path = _write(tmp_path / "images", data[:9])

    with pytest.raises(MnistDataError, match="truncated") as error:
        mnist.read_idx_images(path)

    assert str(path) in str(error.value)


def test_read_idx_shorter_than_magic(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels", b"\x00\x00")

    with pytest.raises(MnistDataError, match="truncated"):
        mnist.read_idx_labels(path)


def test_read_idx_cut_gzip_stream(tmp_path: Path) -> None:
    compressed = gzip.compress(_idx_bytes(IMAGES_MAGIC, _random_images(4, 3)))
    path = tmp_path / "images.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(MnistDataError, match="gzip decompression failed") as error:
        mnist.read_idx_images(path)

    assert str(path) in str(error.value)


def test_read_idx_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    path.write_bytes(_idx_bytes(IMAGES_MAGIC, _random_images(4, 1)))

    with pytest.raises(MnistDataError, match="gzip decompression failed"):
        mnist.read_idx_images(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    data = _idx_bytes(LABELS_MAGIC, np.array([1, 2], dtype=np.uint8)) + b"\x00"
    path = _write(tmp_path / "labels.gz", data)

    with pytest.raises(MnistDataError, match="1 bytes after the data") as error:
        mnist.read_idx_labels(path)

    assert str(path) in str(error.value)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    labels_path = _write(
        tmp_path / "labels", _idx_bytes(LABELS_MAGIC, np.array([1], dtype=np.uint8))
    )

    with pytest.raises(MnistDataError) as error:
        mnist.read_idx_images(labels_path)

    assert str(labels_path) in str(error.value)
    assert "invalid magic number 0x00000801, expected 0x00000803" in str(error.value)


def test_read_idx_magic_of_other_dtype(tmp_path: Path) -> None:
    float_magic = 0x00000D01  # IDX float32, 1 dimension
    path = _write(tmp_path / "labels", _idx_bytes(float_magic, np.array([1], dtype=np.uint8)))

    with pytest.raises(MnistDataError, match="invalid magic number 0x00000d01"):
        mnist.read_idx_labels(path)


def test_read_idx_label_out_of_range(tmp_path: Path) -> None:
    labels = np.array([1, 10, 3, 200], dtype=np.uint8)
    path = _write(tmp_path / "labels.gz", _idx_bytes(LABELS_MAGIC, labels))

    with pytest.raises(MnistDataError) as error:
        mnist.read_idx_labels(path)

    assert str(path) in str(error.value)
    assert "2 labels are outside 0..9" in str(error.value)
    assert "the first is 10 at index 1" in str(error.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mnist.read_idx_images(tmp_path / "absent.gz")


# Checksums and loading one split


def test_verify_checksum_mismatch_names_file(tmp_path: Path) -> None:
    _write_split_files(tmp_path)
    path = tmp_path / f"{TRAIN_IMAGES}.gz"

    with pytest.raises(MnistDataError) as error:
        mnist.verify_checksum(path)

    message = str(error.value)
    assert str(path) in message
    assert "SHA-256 mismatch" in message
    assert MNIST_FILES[path.name].sha256 in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert "MPLP_DATA_DIR" in message


def test_verify_checksum_unknown_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "other.gz", b"data")

    with pytest.raises(ValueError, match="no published checksum"):
        mnist.verify_checksum(path)


def test_load_mnist_rejects_wrong_checksum(tmp_path: Path) -> None:
    _write_split_files(tmp_path)

    with pytest.raises(MnistDataError, match="SHA-256") as error:
        mnist.load_mnist(tmp_path, "train", download=False)

    assert str(tmp_path / f"{TRAIN_IMAGES}.gz") in str(error.value)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_load_mnist_small_files_unverified(tmp_path: Path, suffix: str) -> None:
    arrays = _write_split_files(tmp_path, suffix)

    train_images, train_labels = mnist.load_mnist(
        tmp_path, "train", verify_checksums=False, download=False
    )
    test_images, test_labels = mnist.load_mnist(
        tmp_path, "test", verify_checksums=False, download=False
    )

    np.testing.assert_array_equal(train_images, arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(train_labels, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(test_images, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(test_labels, arrays[TEST_LABELS])


def test_load_mnist_raw_files_skip_checksum(tmp_path: Path) -> None:
    _write_split_files(tmp_path, suffix="")

    images, labels = mnist.load_mnist(tmp_path, "test", verify_checksums=True, download=False)

    assert images.shape == (4, 28, 28)
    assert labels.shape == (4,)


def test_load_mnist_prefers_gzip(tmp_path: Path) -> None:
    arrays = _write_split_files(tmp_path, ".gz")
    raw_labels = np.array([0, 0, 0, 0], dtype=np.uint8)
    _write(tmp_path / TEST_LABELS, _idx_bytes(LABELS_MAGIC, raw_labels))

    _, labels = mnist.load_mnist(tmp_path, "test", verify_checksums=False, download=False)

    np.testing.assert_array_equal(labels, arrays[TEST_LABELS])


def test_load_mnist_mixes_gzip_and_raw(tmp_path: Path) -> None:
    arrays = _write_split_files(tmp_path, ".gz")
    (tmp_path / f"{TEST_LABELS}.gz").unlink()
    _write(tmp_path / TEST_LABELS, _idx_bytes(LABELS_MAGIC, arrays[TEST_LABELS]))

    _, labels = mnist.load_mnist(tmp_path, "test", verify_checksums=False, download=False)

    np.testing.assert_array_equal(labels, arrays[TEST_LABELS])


def test_load_mnist_count_mismatch(tmp_path: Path) -> None:
    _write_split_files(tmp_path)
    _write(
        tmp_path / f"{TEST_LABELS}.gz",
        _idx_bytes(LABELS_MAGIC, np.array([1, 2], dtype=np.uint8)),
    )

    with pytest.raises(MnistDataError, match="has 4 images but .* has 2 labels"):
        mnist.load_mnist(tmp_path, "test", verify_checksums=False, download=False)


def test_load_mnist_wrong_image_size(tmp_path: Path) -> None:
    _write_split_files(tmp_path)
    _write(tmp_path / f"{TEST_IMAGES}.gz", _idx_bytes(IMAGES_MAGIC, _random_images(5, 4, 12)))

    with pytest.raises(MnistDataError, match=r"shape \(12, 12\), expected \(28, 28\)"):
        mnist.load_mnist(tmp_path, "test", verify_checksums=False, download=False)


def test_load_mnist_invalid_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        mnist.load_mnist(tmp_path, "valid")


def test_load_mnist_missing_files_without_download(tmp_path: Path) -> None:
    _write_split_files(tmp_path)
    (tmp_path / f"{TEST_IMAGES}.gz").unlink()
    (tmp_path / f"{TEST_LABELS}.gz").unlink()

    with pytest.raises(MnistDataError) as error:
        mnist.load_mnist(tmp_path, "test", download=False)

    message = str(error.value)
    assert f"{TEST_IMAGES}.gz" in message
    assert f"{TEST_LABELS}.gz" in message
    assert str(tmp_path) in message
    assert "--data-dir" in message
    assert "MPLP_DATA_DIR" in message
    assert "download=True" in message


# Locating the data folder


def test_resolve_data_dir_explicit_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLP_DATA_DIR", str(tmp_path / "from_env"))

    assert mnist.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert mnist.resolve_data_dir(str(tmp_path)) == tmp_path


def test_resolve_data_dir_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLP_DATA_DIR", str(tmp_path / "from_env"))

    assert mnist.resolve_data_dir() == tmp_path / "from_env"


def test_resolve_data_dir_xdg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPLP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert mnist.resolve_data_dir() == tmp_path / "xdg" / "mplp" / "mnist"


@pytest.mark.parametrize("xdg_cache", [None, "", "relative/cache"])
def test_resolve_data_dir_home_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg_cache: str | None
) -> None:
    monkeypatch.setenv("MPLP_DATA_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg_cache is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg_cache)

    assert mnist.resolve_data_dir() == tmp_path / ".cache" / "mplp" / "mnist"


# Downloading


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local mirror folder with small split files registered as the official ones."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    _write_split_files(folder)
    _register_checksums(monkeypatch, folder)
    return folder


def _part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.part"))


def test_download_mnist_from_file_mirror(tmp_path: Path, mirror: Path) -> None:
    cache = tmp_path / "cache" / "nested"

    paths = mnist.download_mnist(cache, mirrors=[mirror.as_uri() + "/"])

    assert sorted(path.name for path in paths) == sorted(MNIST_FILES)
    for path in paths:
        assert path.read_bytes() == (mirror / path.name).read_bytes()
    assert _part_files(cache) == []


def test_download_mnist_skips_present_files(tmp_path: Path, mirror: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(mirror / f"{TEST_IMAGES}.gz", cache)

    paths = mnist.download_mnist(cache, mirrors=[mirror.as_uri()])

    assert len(paths) == 3
    assert cache / f"{TEST_IMAGES}.gz" not in paths


def test_download_mnist_falls_back_to_next_mirror(
    tmp_path: Path, mirror: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    absent = (tmp_path / "absent").as_uri()

    with caplog.at_level(logging.WARNING, logger=mnist_io.__name__):
        paths = mnist.download_mnist(
            cache, mirrors=[absent, mirror.as_uri()], filenames=[f"{TEST_LABELS}.gz"]
        )

    assert paths == [cache / f"{TEST_LABELS}.gz"]
    assert (cache / f"{TEST_LABELS}.gz").is_file()
    assert f"{absent}/{TEST_LABELS}.gz" in caplog.text


def test_download_mnist_rejects_wrong_checksum(tmp_path: Path, mirror: Path) -> None:
    cache = tmp_path / "cache"
    bad_mirror = tmp_path / "bad_mirror"
    bad_mirror.mkdir()
    (bad_mirror / f"{TEST_LABELS}.gz").write_bytes(b"not the file")

    with pytest.raises(MnistDataError) as error:
        mnist.download_mnist(cache, mirrors=[bad_mirror.as_uri()], filenames=[f"{TEST_LABELS}.gz"])

    assert "SHA-256 mismatch" in str(error.value)
    assert not (cache / f"{TEST_LABELS}.gz").exists()
    assert _part_files(cache) == []


def test_download_mnist_failure_lists_missing_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    absent = (tmp_path / "absent").as_uri()

    with pytest.raises(MnistDataError) as error:
        mnist.download_mnist(cache, mirrors=[absent])

    message = str(error.value)
    for name in MNIST_FILES:
        assert name in message
    assert str(cache) in message
    assert "--data-dir" in message
    assert "MPLP_DATA_DIR" in message
    assert isinstance(error.value.__cause__, urllib.error.URLError)
    assert _part_files(cache) == []


def test_download_mnist_unknown_file_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not official MNIST file names"):
        mnist.download_mnist(tmp_path, filenames=["train-images.gz"])


def test_download_mnist_no_mirrors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mirrors is empty"):
        mnist.download_mnist(tmp_path, mirrors=[])


def test_download_mnist_folder_not_creatable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")

    with pytest.raises(MnistDataError, match="cannot create the MNIST download folder"):
        mnist.download_mnist(blocker / "cache", mirrors=["file:///unused"])


def test_load_mnist_downloads_missing_files(tmp_path: Path, mirror: Path) -> None:
    cache = tmp_path / "cache"

    images, labels = mnist.load_mnist(cache, "test", mirrors=[mirror.as_uri()])

    assert images.shape == (4, 28, 28)
    np.testing.assert_array_equal(labels, [5, 6, 7, 8])
    assert sorted(path.name for path in cache.iterdir()) == [
        f"{TEST_IMAGES}.gz",
        f"{TEST_LABELS}.gz",
    ]


def test_load_mnist_default_mirrors_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without network every default mirror fails fast, and the error names the fix."""
    requests: list[tuple[str, float]] = []

    def refuse_connection(url: str, timeout: float) -> None:
        requests.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist_io.urllib.request, "urlopen", refuse_connection)

    with pytest.raises(MnistDataError) as error:
        mnist.load_mnist(tmp_path, "train")

    assert [url for url, _ in requests] == [
        mirror_url + f"{TRAIN_IMAGES}.gz" for mirror_url in mnist.DEFAULT_MIRRORS
    ]
    assert all(timeout == 30.0 for _, timeout in requests)
    message = str(error.value)
    assert f"{TRAIN_IMAGES}.gz" in message
    assert f"{TRAIN_LABELS}.gz" in message
    assert str(tmp_path) in message
    assert "--data-dir" in message
    assert _part_files(tmp_path) == []


# Preprocessing


def test_scale_and_resize_shapes_and_range() -> None:
    images = _random_images(6, 5)

    resized = mnist.scale_and_resize(images, 12)
    unresized = mnist.scale_and_resize(images, None)

    assert resized.shape == (5, 12, 12)
    assert resized.dtype == np.float32
    assert float(resized.min()) >= 0.0
    assert float(resized.max()) <= 1.0
    np.testing.assert_allclose(unresized, images / 255.0, rtol=1e-6)


def test_scale_and_resize_same_size_is_scaling_only() -> None:
    images = _random_images(7, 2)

    np.testing.assert_array_equal(
        mnist.scale_and_resize(images, 28), mnist.scale_and_resize(images, None)
    )


def test_scale_and_resize_chunks_match_single_pass() -> None:
    images = _random_images(8, 7)

    chunked = mnist.scale_and_resize(images, 12, chunk_size=3)
    single = mnist.scale_and_resize(images, 12, chunk_size=100)

    np.testing.assert_allclose(chunked, single, rtol=1e-6)


def test_scale_and_resize_without_antialiasing() -> None:
    """A 3x downscale samples the input pixels at the output pixel centres.

    Output pixel centres of a 6 -> 2 resize fall exactly on input pixels 1 and 4, so
    without antialiasing those pixels pass through unchanged. An antialiasing filter
    would spread each bright pixel over its neighbours and lower the peak.
    """
    images = np.zeros((1, 6, 6), dtype=np.uint8)
    images[0, 1, 1] = 255
    images[0, 4, 4] = 255

    resized = mnist.scale_and_resize(images, 2)

    np.testing.assert_allclose(resized[0], [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_scale_and_resize_constant_image() -> None:
    images = np.full((2, 28, 28), 51, dtype=np.uint8)

    resized = mnist.scale_and_resize(images, 12)

    np.testing.assert_allclose(resized, 0.2, rtol=1e-6)


def test_scale_and_resize_empty() -> None:
    resized = mnist.scale_and_resize(np.zeros((0, 28, 28), np.uint8), 12)

    assert resized.shape == (0, 12, 12)


@pytest.mark.parametrize(
    ("images", "size", "message"),
    [
        (np.zeros((2, 28), np.uint8), 12, "shape"),
        (np.zeros((2, 28, 28), np.uint8), 0, "size"),
        (np.zeros((2, 28, 28), np.uint8), 12.0, "size"),
    ],
)
def test_scale_and_resize_invalid_arguments(images: np.ndarray, size: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mnist.scale_and_resize(images, size)


def test_compute_statistics_matches_numpy() -> None:
    images = np.random.default_rng(9).random((25, 3, 3), dtype=np.float32)

    statistics = mnist.compute_statistics(images, chunk_size=4)

    assert statistics.mean == pytest.approx(float(images.astype(np.float64).mean()), rel=1e-12)
    assert statistics.std == pytest.approx(float(images.astype(np.float64).std()), rel=1e-12)


def test_compute_statistics_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        mnist.compute_statistics(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="same value"):
        mnist.compute_statistics(np.ones((4, 3), np.float32))


def test_standardize_uses_given_statistics() -> None:
    images = np.array([[1.0, 3.0]], dtype=np.float32)

    standardized = mnist.standardize(images, MnistStatistics(mean=1.0, std=2.0))

    assert standardized.dtype == np.float32
    np.testing.assert_allclose(standardized, [[0.0, 1.0]])


def test_load_dataset_small_files(tmp_path: Path) -> None:
    arrays = _write_split_files(tmp_path)

    dataset = mnist.load_dataset(tmp_path, size=12, verify_checksums=False, download=False)

    assert isinstance(dataset, MnistDataset)
    assert dataset.train_images.shape == (6, 144)
    assert dataset.test_images.shape == (4, 144)
    assert dataset.train_images.dtype == jnp.float32
    assert dataset.train_labels.dtype == jnp.int32
    np.testing.assert_array_equal(dataset.train_labels, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(dataset.test_labels, arrays[TEST_LABELS])

    assert float(dataset.train_images.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(dataset.train_images.std()) == pytest.approx(1.0, abs=1e-5)

    test_resized = mnist.scale_and_resize(arrays[TEST_IMAGES], 12).reshape(4, 144)
    mean, std = dataset.statistics
    np.testing.assert_allclose(dataset.test_images, (test_resized - mean) / std, atol=1e-5)


@pytest.mark.parametrize("size", [None, 28])
def test_load_dataset_keeps_full_size(tmp_path: Path, size: int | None) -> None:
    _write_split_files(tmp_path)

    dataset = mnist.load_dataset(tmp_path, size=size, verify_checksums=False, download=False)

    assert dataset.train_images.shape == (6, 784)
    assert dataset.test_images.shape == (4, 784)


def test_load_dataset_is_cached(tmp_path: Path) -> None:
    _write_split_files(tmp_path)

    first = mnist.load_dataset(tmp_path, verify_checksums=False, download=False)
    relative = os.path.relpath(tmp_path)
    again = mnist.load_dataset(relative, verify_checksums=False, download=False)
    mnist.clear_dataset_cache()
    reloaded = mnist.load_dataset(tmp_path, verify_checksums=False, download=False)

    assert again is first
    assert reloaded is not first
    np.testing.assert_array_equal(reloaded.train_images, first.train_images)


def test_load_dataset_invalid_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be a positive int, got -3"):
        mnist.load_dataset(tmp_path, size=-3)


def test_one_hot() -> None:
    encoded = mnist.one_hot(jnp.array([0, 3, 9]), 10)

    assert encoded.shape == (3, 10)
    assert encoded.dtype == jnp.float32
    np.testing.assert_array_equal(np.argmax(encoded, axis=1), [0, 3, 9])
    np.testing.assert_array_equal(encoded.sum(axis=1), [1.0, 1.0, 1.0])


# Batch sampling


def _indexed_examples(count: int) -> tuple[jax.Array, jax.Array]:
    """Images whose features all equal the example index, and labels index % 10."""
    indices = jnp.arange(count)
    images = jnp.repeat(indices[:, None], 3, axis=1).astype(jnp.float32)
    return images, indices % 10


def test_sample_batches_shapes_and_pairing() -> None:
    images, labels = _indexed_examples(50)

    batch_images, batch_labels = mnist.sample_batches(jax.random.key(0), images, labels, 4, 6)

    assert batch_images.shape == (4, 6, 3)
    assert batch_labels.shape == (4, 6)
    example_indices = batch_images[..., 0].astype(jnp.int32)
    np.testing.assert_array_equal(batch_labels, example_indices % 10)


def test_sample_batches_without_replacement() -> None:
    images, labels = _indexed_examples(24)

    batch_images, _ = mnist.sample_batches(jax.random.key(1), images, labels, 4, 6)

    drawn = np.asarray(batch_images[..., 0]).ravel()
    assert sorted(drawn.tolist()) == list(range(24))


def test_sample_batches_deterministic_by_key() -> None:
    images, labels = _indexed_examples(100)

    first = mnist.sample_batches(jax.random.key(2), images, labels, 2, 5)
    again = mnist.sample_batches(jax.random.key(2), images, labels, 2, 5)
    other = mnist.sample_batches(jax.random.key(3), images, labels, 2, 5)

    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_sample_batches_vmap_equals_loop() -> None:
    images, labels = _indexed_examples(40)
    keys = jax.random.split(jax.random.key(4), 3)

    batched_images, batched_labels = jax.vmap(
        lambda key: mnist.sample_batches(key, images, labels, 2, 5)
    )(keys)

    assert batched_images.shape == (3, 2, 5, 3)
    for index in range(3):
        single_images, single_labels = mnist.sample_batches(keys[index], images, labels, 2, 5)
        np.testing.assert_array_equal(batched_images[index], single_images)
        np.testing.assert_array_equal(batched_labels[index], single_labels)


@pytest.mark.parametrize(
    ("num_examples", "num_labels", "num_batches", "batch_size", "message"),
    [
        (10, 10, 3, 4, "exceeds the 10 examples"),
        (10, 9, 1, 1, "one label per image"),
        (10, 10, 0, 1, "num_batches"),
        (10, 10, 1, 0, "batch_size"),
    ],
)
def test_sample_batches_invalid_arguments(
    num_examples: int, num_labels: int, num_batches: int, batch_size: int, message: str
) -> None:
    images = jnp.zeros((num_examples, 2))
    labels = jnp.zeros((num_labels,), jnp.int32)

    with pytest.raises(ValueError, match=message):
        mnist.sample_batches(jax.random.key(0), images, labels, num_batches, batch_size)


# Real MNIST files

TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _has_official_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in MNIST_FILES)


def _real_mnist_dir() -> Path | None:
    """Return MPLP_DATA_DIR if it has the four .gz files, else the shared data folder."""
    candidates = []
    from_env = os.environ.get("MPLP_DATA_DIR", "")
    if from_env:
        candidates.append(Path(from_env))
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")

    for candidate in candidates:
        if _has_official_files(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def real_dir() -> Path:
    directory = _real_mnist_dir()
    if directory is None:
        pytest.skip(
            "real MNIST not found: set MPLP_DATA_DIR to a folder with the four MNIST .gz files"
        )
    return directory


@pytest.fixture(scope="module")
def real_dataset(real_dir: Path) -> MnistDataset:
    return mnist.load_dataset(real_dir, size=12, download=False)


def test_real_checksums_pass(real_dir: Path) -> None:
    for name in MNIST_FILES:
        mnist.verify_checksum(real_dir / name)


@pytest.mark.parametrize(
    ("split", "class_counts"), [("train", TRAIN_CLASS_COUNTS), ("test", TEST_CLASS_COUNTS)]
)
def test_real_label_counts(real_dir: Path, split: str, class_counts: list[int]) -> None:
    images, labels = mnist.load_mnist(real_dir, split, download=False)

    assert images.shape == (sum(class_counts), 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == class_counts


def test_real_dataset_shapes(real_dataset: MnistDataset) -> None:
    assert real_dataset.train_images.shape == (60000, 144)
    assert real_dataset.test_images.shape == (10000, 144)
    assert real_dataset.train_labels.shape == (60000,)
    assert real_dataset.test_labels.shape == (10000,)
    assert np.bincount(np.asarray(real_dataset.test_labels)).tolist() == TEST_CLASS_COUNTS


def test_real_statistics_before_standardization(real_dataset: MnistDataset) -> None:
    assert real_dataset.statistics.mean == pytest.approx(0.130, abs=0.005)
    assert real_dataset.statistics.std == pytest.approx(0.290, abs=0.005)


def test_real_train_set_standardized(real_dataset: MnistDataset) -> None:
    train = np.asarray(real_dataset.train_images, dtype=np.float64)

    assert train.mean() == pytest.approx(0.0, abs=1e-4)
    assert train.std() == pytest.approx(1.0, abs=1e-4)


def test_real_test_set_uses_train_statistics(real_dataset: MnistDataset) -> None:
    test = np.asarray(real_dataset.test_images, dtype=np.float64)

    # The test set is close to, but not exactly, zero mean and unit variance.
    assert test.mean() == pytest.approx(0.0, abs=0.05)
    assert test.mean() != pytest.approx(0.0, abs=1e-4)
    assert test.std() == pytest.approx(1.0, abs=0.05)


def test_real_full_size_keeps_784_features(real_dir: Path) -> None:
    dataset = mnist.load_dataset(real_dir, size=None, download=False)

    assert dataset.train_images.shape == (60000, 784)
    assert dataset.test_images.shape == (10000, 784)
    # Known pixel statistics of the 28x28 MNIST training set after scaling to [0, 1].
    assert dataset.statistics.mean == pytest.approx(0.1307, abs=0.0005)
    assert dataset.statistics.std == pytest.approx(0.3081, abs=0.0005)


def test_real_download_from_file_mirror(real_dir: Path, tmp_path: Path) -> None:
    names = [f"{TEST_IMAGES}.gz", f"{TEST_LABELS}.gz"]

    paths = mnist.download_mnist(tmp_path, mirrors=[real_dir.as_uri()], filenames=names)

    for path in paths:
        mnist.verify_checksum(path)
    images, labels = mnist.load_mnist(tmp_path, "test", download=False)
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == TEST_CLASS_COUNTS
