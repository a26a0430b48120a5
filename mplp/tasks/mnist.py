"""MNIST classification data, preprocessed as in the MPLP MNIST experiment.

The reference implementation of MPLP (Randazzo et al., 2020, notebook
mplp/notebooks/mplp_MNIST.ipynb in the GitHub repository
google-research/self-organising-systems) trains on MNIST images downscaled to 12x12
with `tf.image.resize`, which is bilinear without antialiasing by default.
`load_dataset` reproduces that preprocessing:

1. Scale pixels to float32 in [0, 1].
2. Resize bilinearly to `size` x `size` without antialiasing. For 12x12 the training
   set then has a mean of about 0.130 and a standard deviation of about 0.290.
3. Standardize with one scalar mean and one scalar standard deviation computed on the
   resized training set. The test set uses the same two numbers.
4. Flatten each image to a vector of size * size features.

The file handling (reading, checksums, download) is in `mplp.tasks.mnist_io`, and its
public names are importable from here too.
"""

import functools
import numbers
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mplp.tasks.mnist_io import (
    DATA_DIR_ENV,
    DEFAULT_MIRRORS,
    MNIST_FILES,
    NUM_CLASSES,
    MnistDataError,
    default_cache_dir,
    download_mnist,
    load_mnist,
    read_idx_images,
    read_idx_labels,
    resolve_data_dir,
    verify_checksum,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_MIRRORS",
    "MNIST_FILES",
    "NUM_CLASSES",
    "MnistDataError",
    "MnistDataset",
    "MnistStatistics",
    "clear_dataset_cache",
    "compute_statistics",
    "default_cache_dir",
    "download_mnist",
    "load_dataset",
    "load_mnist",
    "one_hot",
    "read_idx_images",
    "read_idx_labels",
    "resolve_data_dir",
    "sample_batches",
    "scale_and_resize",
    "standardize",
    "verify_checksum",
]

PAPER_IMAGE_SIZE = 12
DEFAULT_CHUNK_SIZE = 10_000
_DATASET_CACHE_SIZE = 4


class MnistStatistics(NamedTuple):
    """Scalar mean and standard deviation of the training pixels after resizing."""

    mean: float
    std: float


class MnistDataset(NamedTuple):
    """Preprocessed MNIST splits.

    Attributes:
        train_images: float32 array of shape (N_train, size * size), standardized.
            N_train is 60,000 for the official files.
        train_labels: int32 array of shape (N_train,) with digits 0 to 9.
        test_images: float32 array of shape (N_test, size * size), standardized with the
            training statistics. N_test is 10,000 for the official files.
        test_labels: int32 array of shape (N_test,).
        statistics: the training-set mean and standard deviation used to standardize.
    """

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array
    statistics: MnistStatistics


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}: pass a value of 1 or more")


@functools.partial(jax.jit, static_argnames=("size",))
def _scale_and_resize_chunk(chunk: jax.Array, size: int | None) -> jax.Array:
    scaled = chunk.astype(jnp.float32) / 255.0
    if size is None:
        return scaled

    target_shape = (chunk.shape[0], size, size)
    resized: jax.Array = jax.image.resize(scaled, target_shape, method="linear", antialias=False)
    return resized


def scale_and_resize(
    images: np.ndarray,
    size: int | None = PAPER_IMAGE_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Scale uint8 pixels to [0, 1] and resize bilinearly without antialiasing.

    The images go through `jax.image.resize(..., method="linear", antialias=False)` in
    chunks of `chunk_size` images to bound memory. Without antialiasing a downscaled
    pixel interpolates only its nearest source pixels.

    Args:
        images: uint8 array of shape (N, H, W).
        size: output height and width, or None to keep (H, W).
        chunk_size: number of images resized at once.

    Returns:
        float32 array of shape (N, size, size), or (N, H, W) if `size` is None, with
        values in [0, 1].

    Raises:
        ValueError: if `images` is not 3-dimensional or a size is not a positive int.
    """
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got shape {images.shape}")
    if size is not None:
        _check_positive("size", size)
        size = int(size)
    _check_positive("chunk_size", chunk_size)

    if size is not None and images.shape[1:] == (size, size):
        size = None

    chunks = []
    for start in range(0, images.shape[0], chunk_size):
        chunk = jnp.asarray(images[start : start + chunk_size])
        chunks.append(np.asarray(_scale_and_resize_chunk(chunk, size)))

    if not chunks:
        height, width = images.shape[1:] if size is None else (size, size)
        return np.zeros((0, height, width), dtype=np.float32)
    return np.concatenate(chunks)


def compute_statistics(images: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> MnistStatistics:
    """Compute the scalar mean and standard deviation over all pixels of all images.

    Sums run in float64 over chunks of images, in two passes (mean, then squared
    deviations), so a float32 input keeps full precision without a float64 copy.

    Args:
        images: float array of shape (N, ...) with N >= 1.
        chunk_size: number of images summed at once.

    Returns:
        The population mean and standard deviation as Python floats.

    Raises:
        ValueError: if `images` is empty or all its pixels are equal.
    """
    if images.size == 0:
        raise ValueError(f"cannot compute statistics of an empty array of shape {images.shape}")

    total = 0.0
    for start in range(0, images.shape[0], chunk_size):
        total += float(np.sum(images[start : start + chunk_size], dtype=np.float64))
    mean = total / images.size

    squared_deviations = 0.0
    for start in range(0, images.shape[0], chunk_size):
        deviations = images[start : start + chunk_size].astype(np.float64) - mean
        squared_deviations += float(np.sum(deviations * deviations))
    std = (squared_deviations / images.size) ** 0.5

    if std == 0.0:
        raise ValueError("cannot standardize images whose pixels all have the same value")
    return MnistStatistics(mean=mean, std=std)


def standardize(images: np.ndarray, statistics: MnistStatistics) -> np.ndarray:
    """Subtract the scalar mean and divide by the scalar standard deviation.

    Args:
        images: float array of any shape.
        statistics: the training-set statistics.

    Returns:
        float32 array with the shape of `images`.
    """
    mean = np.float32(statistics.mean)
    std = np.float32(statistics.std)
    return ((images - mean) / std).astype(np.float32)


@functools.lru_cache(maxsize=_DATASET_CACHE_SIZE)
def _load_dataset_cached(
    directory: str, size: int, verify_checksums: bool, download: bool
) -> MnistDataset:
    train_images, train_labels = load_mnist(
        directory, "train", verify_checksums=verify_checksums, download=download
    )
    test_images, test_labels = load_mnist(
        directory, "test", verify_checksums=verify_checksums, download=download
    )

    train_resized = scale_and_resize(train_images, size)
    test_resized = scale_and_resize(test_images, size)

    statistics = compute_statistics(train_resized)
    num_features = train_resized.shape[1] * train_resized.shape[2]
    train_flat = standardize(train_resized, statistics).reshape(-1, num_features)
    test_flat = standardize(test_resized, statistics).reshape(-1, num_features)

    return MnistDataset(
        train_images=jnp.asarray(train_flat),
        train_labels=jnp.asarray(train_labels, dtype=jnp.int32),
        test_images=jnp.asarray(test_flat),
        test_labels=jnp.asarray(test_labels, dtype=jnp.int32),
        statistics=statistics,
    )


def load_dataset(
    data_dir: str | os.PathLike[str] | None = None,
    size: int | None = PAPER_IMAGE_SIZE,
    *,
    verify_checksums: bool = True,
    download: bool = True,
) -> MnistDataset:
    """Load both MNIST splits, preprocessed as described in the module docstring.

    Results are cached in memory per (folder, size, verify_checksums, download), so
    later calls in the same process return the same arrays without reading or resizing
    again. Call `clear_dataset_cache` after the files on disk change.

    Args:
        data_dir: folder with the MNIST files, or None for MPLP_DATA_DIR or the cache
            folder (see `resolve_data_dir`).
        size: output height and width. 12 matches the MPLP paper. None or 28 keeps
            the original 28x28 images.
        verify_checksums: check each .gz file against its published SHA-256.
        download: download missing files (see `load_mnist`).

    Returns:
        An MnistDataset with images of shape (N, size * size).

    Raises:
        MnistDataError: if the files are missing, damaged or have the wrong checksum.
        ValueError: if `size` is not a positive int or None.
    """
    if size is None:
        size = 28
    _check_positive("size", size)

    directory = resolve_data_dir(data_dir).resolve()
    return _load_dataset_cached(str(directory), int(size), verify_checksums, download)


def clear_dataset_cache() -> None:
    """Drop every dataset cached by `load_dataset`."""
    _load_dataset_cached.cache_clear()


def one_hot(labels: jax.Array, num_classes: int = NUM_CLASSES) -> jax.Array:
    """Encode integer labels as float32 one-hot vectors.

    Args:
        labels: integer array of any shape S.
        num_classes: length of each vector.

    Returns:
        float32 array of shape S + (num_classes,). A label outside
        [0, num_classes) gives a row of zeros.
    """
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def sample_batches(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    num_batches: int,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Draw minibatches for an inner loop, without replacement within one call.

    The examples are the first num_batches * batch_size entries of a random permutation,
    so no example appears twice in the result. Pure JAX: it works under `jax.jit` with
    static sizes and under `jax.vmap` over keys.

    Args:
        key: PRNG key.
        images: array of shape (N, D) or (N, ...).
        labels: array of shape (N,).
        num_batches: number of minibatches.
        batch_size: examples per minibatch.

    Returns:
        (batch_images, batch_labels) of shape (num_batches, batch_size, D) and
        (num_batches, batch_size).

    Raises:
        ValueError: if a size is not a positive int, the leading dimensions of
            `images` and `labels` differ, or N < num_batches * batch_size.
    """
    _check_positive("num_batches", num_batches)
    _check_positive("batch_size", batch_size)

    num_examples = images.shape[0]
    if labels.shape[:1] != (num_examples,):
        raise ValueError(
            f"images has {num_examples} examples but labels has shape {labels.shape}: "
            "pass one label per image"
        )

    num_needed = num_batches * batch_size
    if num_needed > num_examples:
        raise ValueError(
            f"num_batches * batch_size = {num_needed} exceeds the {num_examples} examples "
            "available: lower num_batches or batch_size"
        )

    indices = jax.random.permutation(key, num_examples)[:num_needed]
    indices = indices.reshape(num_batches, batch_size)
    return images[indices], labels[indices]
