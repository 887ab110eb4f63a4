"""Verified downloads and safe unpacking: what ``fetch.py`` (the official mirrors) and ``npm_copy.py``
(the npm copies) both build on.

Downloads go to ``<file>.part``, resume with an HTTP ``Range`` request when a ``.part`` is already
there, and become the final file (``os.replace``) only after the checksum matches, so a final file
is always a verified one. A tarball is unpacked member by member after checking every name (no
absolute paths, no ``..``, no links or devices) into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rl_gpt.io import remove_path
from rl_gpt.progress import progress_bar

__all__ = [
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "UnsafeArchiveError",
    "download",
    "extract_tar",
    "sha256_file",
]

_CHUNK = 1 << 20
_USER_AGENT = "rl_gpt-fetch/0.1 (+urllib)"
# Below this average over a timeout's length a transfer is given up (and resumed by the next run): a
# server that drips a byte at a time never trips the socket's own timeout.
_MIN_BYTES_PER_S = 1024


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set, as published."""

    name: str  # file name, both on the mirror and under the local root
    sha256: str  # hex digest of the published file
    size: int | None = None  # bytes, when known: lets a complete .part skip the network


class DownloadError(OSError):
    """No mirror delivered a file."""


class ChecksumError(DownloadError):
    """Every mirror that answered delivered bytes with the wrong SHA-256."""


class UnsafeArchiveError(ValueError):
    """A tarball member would land outside the target folder or is not a plain file/folder."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- transfer
def _transfer(url: str, part: Path, size: int | None, progress: bool, timeout: float) -> None:
    """Bring ``part`` up to the full file, resuming from its current length when the server allows.
    Never more than ``size`` bytes where the size is known, and never through a link at ``part``. Its
    errors leave the URL to :func:`download`, which names it once."""
    if part.is_symlink() or (part.exists() and not part.is_file()):  # not ours: removed, never written through
        part.unlink()
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # longer than the real file: it cannot be a prefix of it
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing past our offset: the .part already holds the whole file
            return
        raise
    with response:
        mode = "wb"
        if offset and response.status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(f"asked to resume at byte {offset}, got Content-Range {match and match[0]}")
            mode = "ab"
        else:
            offset = 0  # the server ignored Range and sends the whole file: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        if size is not None and total is not None and total > size:
            raise DownloadError(f"the server offers {total} bytes, but the file has {size}")
        received = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
        window_start, window_bytes = time.monotonic(), 0
        with (
            os.fdopen(os.open(part, flags, 0o666), mode) as f,
            progress_bar(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=not progress
            ) as bar,
        ):
            while chunk := response.read1(_CHUNK):  # what has arrived, not a full chunk: a drip is seen
                if size is not None and offset + received + len(chunk) > size:
                    raise DownloadError(f"the server sent more than the file's {size} bytes")
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= timeout:
                    if window_bytes < _MIN_BYTES_PER_S * elapsed:
                        raise DownloadError(
                            f"only {window_bytes} bytes in the last {elapsed:.0f} s; run again to resume"
                        )
                    window_start, window_bytes = time.monotonic(), 0
            f.flush()
            os.fsync(f.fileno())
    if length is not None and received != int(length):
        raise DownloadError(f"connection closed after {received} of {length} bytes; run again to resume")


def download(
    urls: Sequence[str],
    dest: str | Path,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers bytes with the given SHA-256.

    Resumes a leftover ``dest.part``; a failed transfer keeps it for the next call, a wrong checksum
    deletes it. Returns ``dest`` at once if it already exists with the right checksum.
    """
    dest = Path(dest)
    sha256 = sha256.lower()
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad or not urls:
        raise ValueError(f"download needs http(s) URLs, got {list(urls)}")
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    checksum_failures = 0
    for url in urls:
        # A resumed file may hold a stale prefix; if it fails the checksum, retry this URL from zero once.
        for _attempt in range(2):
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _transfer(url, part, size, progress, timeout)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, IncompleteRead, ...
                errors.append(f"{url}: {e}")
                break
            digest = sha256_file(part)
            if digest == sha256:
                os.replace(part, dest)  # atomic: dest appears only once verified
                return dest
            part.unlink()
            if not resumed:
                checksum_failures += 1
                errors.append(f"{url}: SHA-256 {digest}, expected {sha256}")
                break
    cls = ChecksumError if checksum_failures == len(errors) else DownloadError
    raise cls(f"could not download {dest.name}: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------- unpack
def _safe_member_path(member: tarfile.TarInfo) -> PurePosixPath:
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in member.name:
        raise UnsafeArchiveError(f"archive member {member.name!r} points outside the target folder")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {member.name!r} is a link or special file; refusing it")
    return rel


def extract_tar(archive: str | Path, root: str | Path, folder: str) -> Path:
    """Unpack the members under ``folder/`` of a tarball into ``root/folder`` atomically; returns that path."""
    archive, root = Path(archive), Path(root)
    tmp = root / f".{folder}.extracting"
    remove_path(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                rel = _safe_member_path(member)
                if rel.parts[:1] != (folder,):
                    continue  # not part of the data set
                target = tmp.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise UnsafeArchiveError(f"archive member {member.name!r} resolves outside {tmp}")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # regular files always have data
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        if not (tmp / folder).is_dir():
            raise UnsafeArchiveError(f"{archive} has no {folder}/ folder")
        shutil.rmtree(root / folder, ignore_errors=True)
        os.replace(tmp / folder, root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / folder
