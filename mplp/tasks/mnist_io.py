"""Read, verify, locate and download the MNIST IDX files.

MNIST ships as four IDX files, usually gzip-compressed. An IDX file starts with a
big-endian 32-bit magic number whose last byte is the number of dimensions, followed by
one big-endian 32-bit size per dimension and then the data, here unsigned bytes.

`load_mnist` is the entry point. It finds the files of one split in the data folder,
downloads the missing ones if asked, checks the SHA-256 of each .gz file against the
official checksums and reads the arrays. `read_idx_images` and `read_idx_labels` check
only the structure, so they also read small IDX files written by tests.
"""

import gzip
import hashlib
import http.client
import logging
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "MPLP_DATA_DIR"

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 30.0

_HASH_CHUNK_BYTES = 1 << 20
_FIX_HINT = (
    f"Pass --data-dir (data_dir= in Python) or set {DATA_DIR_ENV} to a folder that "
    "contains the four MNIST .gz files."
)


class MnistFile(NamedTuple):
    """Size and SHA-256 of one official gzip-compressed MNIST file."""

    num_bytes: int
    sha256: str


MNIST_FILES: dict[str, MnistFile] = {
    "train-images-idx3-ubyte.gz": MnistFile(
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": MnistFile(
        28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": MnistFile(
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": MnistFile(
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}

# File names without the .gz suffix: (images, labels) of each split.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MnistDataError(ValueError):
    """An MNIST file is missing, damaged or not the official file.

    The message names the file or folder, what is wrong and what to do about it.
    """


def default_cache_dir() -> Path:
    """Return the download folder: `$XDG_CACHE_HOME/mplp/mnist` or `~/.cache/mplp/mnist`.

    An XDG_CACHE_HOME that is not an absolute path is ignored, as the XDG Base
    Directory specification requires.
    """
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    if xdg_cache and Path(xdg_cache).is_absolute():
        base = Path(xdg_cache)
    else:
        base = Path.home() / ".cache"
    return base / "mplp" / "mnist"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Choose the MNIST folder.

    The order is `data_dir` if given, then the environment variable MPLP_DATA_DIR if it
    is set and not empty, then `default_cache_dir()`. The folder need not exist yet.

    Args:
        data_dir: explicit folder, or None.

    Returns:
        The folder, with `~` expanded.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()

    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()

    return default_cache_dir()


def _read_file_bytes(path: Path) -> bytes:
    """Read a file, decompressing it if its name ends in .gz."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data

    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise MnistDataError(
            f"{path}: gzip decompression failed ({error}). The file is truncated or "
            "corrupted: delete it and download it again."
        ) from error


def _read_idx(path: Path, expected_magic: int, kind: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes and check its header against its size."""
    data = _read_file_bytes(path)

    if len(data) < 4:
        raise MnistDataError(
            f"{path}: file is truncated ({len(data)} bytes, shorter than the 4-byte magic "
            "number). Delete it and download it again."
        )

    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise MnistDataError(
            f"{path}: invalid magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"for an IDX {kind} file of unsigned bytes. Check that this is an MNIST {kind} "
            "file and, if compressed, that its name ends in .gz."
        )

    num_dims = expected_magic & 0xFF
    header_bytes = 4 + 4 * num_dims
    if len(data) < header_bytes:
        raise MnistDataError(
            f"{path}: file is truncated ({len(data)} bytes, shorter than the "
            f"{header_bytes}-byte header). Delete it and download it again."
        )

    shape = struct.unpack(f">{num_dims}I", data[4:header_bytes])
    expected_bytes = header_bytes + math.prod(shape)
    if len(data) < expected_bytes:
        raise MnistDataError(
            f"{path}: file is truncated. The header declares shape {shape}, which needs "
            f"{expected_bytes} bytes, but the data has {len(data)} bytes. "
            "Delete it and download it again."
        )
    if len(data) > expected_bytes:
        raise MnistDataError(
            f"{path}: file has {len(data) - expected_bytes} bytes after the data that the "
            f"header declares (shape {shape}). The file is corrupted: delete it and "
            "download it again."
        )

    values = np.frombuffer(data, dtype=np.uint8, count=math.prod(shape), offset=header_bytes)
    return values.reshape(shape).copy()


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file, gzip-compressed if its name ends in .gz.

    Only the structure is checked: the magic number 0x00000803 and that the declared
    dimensions match the data size. No checksum is checked.

    Args:
        path: the IDX file.

    Returns:
        uint8 array of shape (N, rows, cols).

    Raises:
        MnistDataError: if the file is not a valid IDX image file.
        FileNotFoundError: if the file does not exist.
    """
    return _read_idx(Path(path), IMAGES_MAGIC, "image")


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file, gzip-compressed if its name ends in .gz.

    Only the structure is checked: the magic number 0x00000801, that the declared
    length matches the data size, and that every label is a digit from 0 to 9.
    No checksum is checked.

    Args:
        path: the IDX file.

    Returns:
        uint8 array of shape (N,).

    Raises:
        MnistDataError: if the file is not a valid IDX label file.
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path)
    labels = _read_idx(path, LABELS_MAGIC, "label")

    invalid = np.flatnonzero(labels >= NUM_CLASSES)
    if invalid.size > 0:
        first = int(invalid[0])
        raise MnistDataError(
            f"{path}: {invalid.size} labels are outside 0..{NUM_CLASSES - 1}, the first is "
            f"{labels[first]} at index {first}. The file is corrupted or not an MNIST "
            "label file: delete it and download it again."
        )
    return labels


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Compute the SHA-256 of a file as a lowercase hex string, reading it in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike[str]) -> None:
    """Check an official MNIST .gz file against its published SHA-256.

    Args:
        path: the file. Its name must be one of the keys of `MNIST_FILES`.

    Raises:
        MnistDataError: if the SHA-256 differs. The message also gives the file size.
        ValueError: if the file name is not an official MNIST .gz name.
    """
    path = Path(path)
    official = MNIST_FILES.get(path.name)
    if official is None:
        raise ValueError(
            f"{path}: no published checksum for this file name. Expected one of "
            f"{sorted(MNIST_FILES)}, or load it with checksum verification turned off."
        )

    actual = file_sha256(path)
    if actual != official.sha256:
        raise MnistDataError(
            f"{path}: SHA-256 mismatch (expected {official.sha256}, got {actual}). "
            f"The file has {path.stat().st_size} bytes, the official one {official.num_bytes}. "
            "The file is corrupted or not the official MNIST file: delete it and download "
            f"it again, or set {DATA_DIR_ENV} to a folder with a verified copy."
        )


def _find_file(directory: Path, stem: str) -> Path | None:
    """Return the gzip-compressed file if it exists, else the raw one, else None."""
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _missing_files_message(directory: Path, missing: Iterable[str]) -> str:
    names = ", ".join(f"{stem}.gz" for stem in missing)
    return (
        f"MNIST files not found in {directory}: {names} (an uncompressed copy named "
        f"without .gz is also accepted). {_FIX_HINT}"
    )


def _download_file(url: str, target: Path, expected_sha256: str, timeout: float) -> None:
    """Download `url` into a temporary file next to `target` and rename it on success.

    The rename happens only after the SHA-256 matches, so `target` is never a partial or
    wrong file. The temporary file is removed on any failure.
    """
    descriptor, temporary_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temporary = Path(temporary_name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(descriptor, "wb") as output,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            while chunk := response.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
                output.write(chunk)

        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise MnistDataError(
                f"{url}: SHA-256 mismatch (expected {expected_sha256}, got {actual})"
            )

        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def download_mnist(
    cache_dir: str | os.PathLike[str],
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    filenames: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[Path]:
    """Download official MNIST .gz files, trying the mirrors in order.

    Each file is written to a temporary file in `cache_dir` and renamed to its final
    name only after its SHA-256 matches. A mirror that fails is logged and the next
    one is tried.

    Args:
        cache_dir: destination folder, created if needed.
        mirrors: base URLs that end in the folder holding the files, for example
            "https://host/mnist/". Any URL scheme that urllib opens works, file:// too.
        filenames: names from `MNIST_FILES` to download. Defaults to the official files
            that are not yet in `cache_dir`.
        timeout: socket timeout in seconds for connecting and for each read.

    Returns:
        Paths of the downloaded files, in the order of `filenames`.

    Raises:
        MnistDataError: if the folder cannot be created or a file fails on every
            mirror. The message lists the missing files and each mirror's error.
        ValueError: if a file name is not an official MNIST .gz name.
    """
    directory = Path(cache_dir).expanduser()
    if filenames is None:
        filenames = [name for name in MNIST_FILES if not (directory / name).is_file()]

    unknown = [name for name in filenames if name not in MNIST_FILES]
    if unknown:
        raise ValueError(
            f"cannot download {unknown}: not official MNIST file names. "
            f"Choose from {sorted(MNIST_FILES)}."
        )
    if not mirrors:
        raise ValueError("mirrors is empty: pass at least one base URL")

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MnistDataError(
            f"cannot create the MNIST download folder {directory} ({error}). {_FIX_HINT}"
        ) from error

    downloaded = []
    for name in filenames:
        downloaded.append(_download_from_mirrors(directory, name, filenames, mirrors, timeout))
    return downloaded


def _download_from_mirrors(
    directory: Path,
    name: str,
    all_names: Sequence[str],
    mirrors: Sequence[str],
    timeout: float,
) -> Path:
    """Download one file from the first mirror that delivers it with the right checksum."""
    target = directory / name
    failures = []
    last_error: Exception | None = None

    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        logger.info("downloading %s to %s", url, target)
        try:
            _download_file(url, target, MNIST_FILES[name].sha256, timeout)
        except (OSError, http.client.HTTPException, MnistDataError) as error:
            logger.warning("download of %s failed: %s", url, error)
            failures.append(f"{url}: {error}")
            last_error = error
        else:
            return target

    still_missing = [n for n in all_names if not (directory / n).is_file()]
    raise MnistDataError(
        f"download of {name} failed on every mirror ({'; '.join(failures)}). "
        f"Files still missing in {directory}: {', '.join(still_missing)}. {_FIX_HINT}"
    ) from last_error


def _locate_split(
    directory: Path, split: str, download: bool, mirrors: Sequence[str]
) -> list[Path]:
    """Find the image and label files of a split, downloading the missing ones if allowed."""
    stems = SPLIT_FILES[split]
    found = {stem: _find_file(directory, stem) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if not missing:
        return [path for path in found.values() if path is not None]

    if not download:
        raise MnistDataError(
            _missing_files_message(directory, missing) + " Or call with download=True."
        )

    download_mnist(directory, mirrors=mirrors, filenames=[f"{stem}.gz" for stem in missing])
    return [directory / f"{stem}.gz" if path is None else path for stem, path in found.items()]


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    verify_checksums: bool = True,
    download: bool = True,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the raw images and labels of one MNIST split.

    The folder comes from `resolve_data_dir(data_dir)`. For each file the .gz name is
    preferred, else the uncompressed name without .gz.

    Args:
        data_dir: folder with the MNIST files, or None for MPLP_DATA_DIR or the cache.
        split: "train" (60,000 examples) or "test" (10,000 examples).
        verify_checksums: check each .gz file against its published SHA-256.
        download: download missing files from `mirrors` into the folder. Without network
            access this fails within the timeout, and the error names the fix.
        mirrors: base URLs to download from, tried in order.

    Returns:
        (images, labels): uint8 arrays of shape (N, 28, 28) and (N,).

    Raises:
        MnistDataError: if files are missing and cannot be downloaded, or a file is
            damaged, has the wrong checksum or shape.
        ValueError: if `split` is not "train" or "test".
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    directory = resolve_data_dir(data_dir)
    image_path, label_path = _locate_split(directory, split, download, mirrors)

    # NOTE: only .gz files have published checksums, so an uncompressed file gets the
    # structural checks of the IDX reader but no checksum check.
    if verify_checksums:
        for path in (image_path, label_path):
            if path.suffix == ".gz":
                verify_checksum(path)

    images = read_idx_images(image_path)
    labels = read_idx_labels(label_path)

    if images.shape[1:] != IMAGE_SHAPE:
        raise MnistDataError(
            f"{image_path}: images have shape {images.shape[1:]}, expected {IMAGE_SHAPE} "
            "for MNIST. Point data_dir or MPLP_DATA_DIR at the MNIST files."
        )
    if images.shape[0] != labels.shape[0]:
        raise MnistDataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has "
            f"{labels.shape[0]} labels. The two files are from different data sets: "
            "replace them with the official pair."
        )
    return images, labels
