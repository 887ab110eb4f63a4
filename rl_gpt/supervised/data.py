"""Loaders for the supervised data sets: scikit-learn's 8×8 digits, MNIST (IDX files), CIFAR-10 (binary).

Every loader returns ``(x_train, y_train, x_test, y_test)``: inputs as float32, labels as int64 (the
dtype ``cross_entropy`` wants). Loaders only read local files; downloading is ``fetch.py``'s job and
is never triggered from here, so a missing file is an error that says how to fetch it.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from rl_gpt.config import ConfigError

__all__ = [
    "CIFAR10_DIR",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "CorruptDataError",
    "DataSetInfo",
    "load_cifar10",
    "load_dataset",
    "load_dataset_cached",
    "load_digits",
    "load_mnist",
    "read_idx",
    "require_files",
]

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


#: The four MNIST IDX files (uncompressed names; a ``.gz`` sibling is read as well).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The usual MNIST statistics, as G.pt's data_gen/train_mnist.py normalises with them.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

#: Folder the CIFAR-10 binary tarball unpacks to.
CIFAR10_DIR = "cifar-10-batches-bin"
# Per-channel RGB statistics on the 0..255 scale, as in G.pt's data_gen/train_cifar10.py (from pycls).
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes of a 32×32 image

# Digits: a fixed stratified split (1,437 train / 360 test) so every run sees the same test set.
_DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0

# IDX type codes (third magic byte) -> big-endian numpy dtype. See http://yann.lecun.com/exdb/mnist/.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class CorruptDataError(ValueError):
    """A data file exists but cannot be what it claims to be (truncated, wrong header, bad labels)."""


def _fetch_hint(name: str, root: Path) -> str:
    return f"run `rl-gpt data fetch {name} --root {root}`"


# ---------------------------------------------------------------------------------------------- digits
def load_digits() -> Split:
    """scikit-learn's bundled 8×8 digits: x (N, 64) in [0, 1], y (N,); 1,437 train / 360 test."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    x = bunch.data.astype(np.float32) / 16.0  # pixel intensities are 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_DIGITS_TEST_SIZE, stratify=y, random_state=_DIGITS_SPLIT_SEED
    )
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


# ---------------------------------------------------------------------------------------------- MNIST
_LARGEST_IDX = 1 << 31  # bytes of data in one IDX file; MNIST's largest has 47 MB


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip, chosen by the ``.gz`` suffix) into an array of its dims.

    Reads the header first and then no more than it announces (at most ``_LARGEST_IDX`` bytes): a small
    gzip file can unpack to gigabytes, and a header can claim any size."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            start = f.read(4)
            if len(start) < 4 or start[0] != 0 or start[1] != 0 or start[2] not in _IDX_DTYPES:
                raise CorruptDataError(f"{path}: not an IDX file (bad magic {start.hex() or 'empty'})")
            dtype, ndim = np.dtype(_IDX_DTYPES[start[2]]), start[3]
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise CorruptDataError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4", count=ndim))
            expected = math.prod(dims) * dtype.itemsize
            if expected > _LARGEST_IDX:
                said = f"{4 + 4 * ndim + expected} bytes for dims {dims}"
                raise CorruptDataError(f"{path}: IDX header says {said}, more than any data set holds")
            body = bytearray()
            while len(body) <= expected and (chunk := f.read(min(1 << 20, expected + 1 - len(body)))):
                body += chunk
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut gzip stream is EOFError
        raise CorruptDataError(f"{path}: not a readable gzip file ({e})") from None
    header = 4 + 4 * ndim
    if len(body) != expected:
        have = f"{header + len(body)}" if len(body) < expected else "more"
        raise CorruptDataError(f"{path}: IDX header says {header + expected} bytes for dims {dims}, file has {have}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {root / stem}[.gz] not found; {_fetch_hint('mnist', root)}")


def _read_mnist_idx(root: Path, stem: str) -> np.ndarray:
    path = _find_idx(root, stem)
    try:
        return read_idx(path)
    except CorruptDataError as e:
        raise CorruptDataError(f"{e}; delete it and {_fetch_hint('mnist', root)}") from None


def _mnist_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's raw images (N, 28, 28) and labels (N,), uint8, checked to agree."""
    images = _read_mnist_idx(root, MNIST_FILES[f"{split}_images"])
    labels = _read_mnist_idx(root, MNIST_FILES[f"{split}_labels"])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise CorruptDataError(
            f"MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}; "
            f"{_fetch_hint('mnist', root)}"
        )
    if labels.size and labels.max() > 9:
        raise CorruptDataError(f"MNIST {split} labels in {root} exceed 9; {_fetch_hint('mnist', root)}")
    return images, labels


def load_mnist(root: str | Path) -> Split:
    """MNIST from the four IDX files in ``root``: x (N, 784) normalised with MNIST_MEAN/STD, y (N,)."""
    root = Path(root)
    out = []
    for split in ("train", "test"):
        images, labels = _mnist_split(root, split)
        x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0  # (N, 784)
        out += [torch.from_numpy((x - MNIST_MEAN) / MNIST_STD), torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------------------------------------- CIFAR-10
def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {path} not found; {_fetch_hint('cifar10', root)}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise CorruptDataError(
            f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte records; "
            f"delete it and {_fetch_hint('cifar10', root)}"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise CorruptDataError(f"{path}: label byte above 9; delete it and {_fetch_hint('cifar10', root)}")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels  # (N, 3, 32, 32) uint8, (N,)


def _cifar_folder(root: Path) -> Path:
    """``root/cifar-10-batches-bin``, or ``root`` itself when it is that folder."""
    return root if (root / "test_batch.bin").is_file() and not (root / CIFAR10_DIR).is_dir() else root / CIFAR10_DIR


def load_cifar10(root: str | Path, train_batches: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Split:
    """CIFAR-10 from the binary version: x (N, 3, 32, 32) normalised per channel, y (N,).

    ``root`` is the folder holding ``cifar-10-batches-bin/`` (or that folder itself). The binary
    format is read byte by byte; the Python version's pickles are never loaded.
    ``train_batches`` picks a subset of ``data_batch_{1..5}.bin`` (all five by default).
    """
    root = Path(root)
    folder = _cifar_folder(root)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    out = []
    for names in ([f"data_batch_{i}.bin" for i in train_batches], ["test_batch.bin"]):
        parts = [_read_cifar_batch(folder / n, root) for n in names]
        images = np.concatenate([p[0] for p in parts])  # (N, 3, 32, 32) uint8
        labels = np.concatenate([p[1] for p in parts])
        x = (images.astype(np.float32) - mean) / std
        out += [torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------------------------------------- dispatch
def require_files(name: str, root: str | Path, parse: bool = False) -> None:
    """Raise FileNotFoundError (saying how to fetch them) unless ``root`` holds ``name``'s files; with
    ``parse``, CorruptDataError unless they parse as the loaders read them (headers, sizes, labels).

    A check before work starts, whose loads happen elsewhere (in each worker). Finding the files is
    free; parsing reads them once (~1 s) and keeps nothing: the collection's main process does it, so
    that a damaged download is refused before a dataset folder exists."""
    root = Path(root)
    if name == "mnist":
        for stem in MNIST_FILES.values():
            _find_idx(root, stem)  # every file's absence first: the fetch hint covers them all
        for split in ("train", "test") if parse else ():
            _mnist_split(root, split)
    elif name == "cifar10":
        folder = _cifar_folder(root)
        files = [folder / f"data_batch_{i}.bin" for i in range(1, 6)] + [folder / "test_batch.bin"]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"CIFAR-10 file {path} not found; {_fetch_hint('cifar10', root)}")
        for path in files if parse else ():
            _read_cifar_batch(path, root)


@dataclass(frozen=True)
class DataSetInfo:
    """A data set as the rest of rl_gpt sees it. Adding one is an entry in :data:`DATASETS` (and, for
    files to download, ``require_files`` and a ``fetch.SOURCES`` entry), then a network in
    ``models.CLASSIFIERS`` that reads it and a preset in ``configs/``."""

    load: Callable[[Path | None], Split]  # (x_train, y_train, x_test, y_test) from task.data_root
    bundled: bool  # ships with an installed package: no task.data_root, nothing to fetch
    classes: int  # labels are 0 ... classes - 1
    train_size: int  # training examples the loader returns (a run's batch_size may not exceed it)
    preprocessing: str  # what the loader does to the raw data, as a dataset's spec.json records it


DATASETS: dict[str, DataSetInfo] = {
    "digits": DataSetInfo(
        lambda root: load_digits(),
        bundled=True,
        classes=10,
        train_size=1797 - _DIGITS_TEST_SIZE,
        preprocessing="scikit-learn load_digits, pixels / 16, stratified split 1437 train / 360 test (random_state 0)",
    ),
    "mnist": DataSetInfo(
        load_mnist,
        bundled=False,
        classes=10,
        train_size=60_000,
        preprocessing="IDX files, pixels / 255, normalised with mean 0.1307 and std 0.3081, flattened to 784",
    ),
    "cifar10": DataSetInfo(
        load_cifar10,
        bundled=False,
        classes=10,
        train_size=50_000,
        preprocessing="binary batches, (N, 3, 32, 32), per-channel (x - (125.3, 123.0, 113.9)) / (63.0, 62.1, 66.7)",
    ),
}


def load_dataset(name: str, root: str | Path | None = None) -> Split:
    """Load ``name`` (one of DATASETS); ``root`` is required for the downloaded sets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    info = DATASETS[name]
    if root is None and not info.bundled:
        raise ValueError(f"dataset {name!r} needs a data root; fetch it with `rl-gpt data fetch {name} --root DIR`")
    return info.load(None if root is None else Path(root))


@cache
def load_dataset_cached(dataset: str, data_root: str | None) -> Split:
    """The data set, loaded once per process: a worker reuses it for every run it is given.

    For callers that read ``task.data_root`` from a config or dataset spec (collection runs, sweeps'
    test metric), so a damaged download is reported as that setting's :class:`ConfigError`.
    """
    try:
        return load_dataset(dataset, data_root)
    except CorruptDataError as exc:  # a damaged download: the message says to delete it and fetch again
        raise ConfigError(f"task.data_root: {exc}") from None
