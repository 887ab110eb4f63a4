"""Crash-safe file output: write under a temporary name, then rename into place.

Everything here serves that, for every room (it imports none of ours):

- folders: :func:`ensure_writable_dir` / :func:`ensure_report_dir` (checked before any work),
  :func:`exclusive_folder` (one writer per folder; it clears the temporaries a killed writer left);
- files: :func:`atomic_write_text`, :func:`atomic_write_json` (strict JSON, NaN as null; read back
  with :func:`read_format_json` and :func:`nulls_as_nan`), :func:`atomic_save_safetensors`,
  :func:`atomic_save_pair` / :func:`pair_matches` (weights and their JSON tied by a save id),
  :func:`atomic_save_figure`;
- directories: :func:`allocate_files` (a full disk is an error, not a SIGBUS), :func:`replace_dir`,
  :func:`remove_path`.

:func:`shade_outside` is the one plotting helper: ``generate`` and ``sweep`` both draw it and may not
import each other, so it sits beside :func:`atomic_save_figure`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FolderInUseError",
    "SAVE_ID",
    "allocate_files",
    "atomic_save_figure",
    "atomic_save_pair",
    "atomic_save_safetensors",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_report_dir",
    "ensure_writable_dir",
    "exclusive_folder",
    "nulls_as_nan",
    "pair_matches",
    "read_format_json",
    "remove_path",
    "remove_stale_temporaries",
    "replace_dir",
    "shade_outside",
    "write_then_rename",
]


def _file_mode() -> int:
    """What ``open()`` would give a new file under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp (and safetensors' writer) create files 0600 whatever the umask; outputs such as spec.json,
# report.json and exported weights are for others to read too, so they get the mode open() would give.
FILE_MODE = _file_mode()


def ensure_writable_dir(path: str | Path, option: str = "out=") -> Path:
    """Create ``path`` if needed and check we can write there, with a message that says what to do
    (``option``: how the user chose it, e.g. ``out=`` or ``--out``)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        why = f"cannot write to {path} ({exc.strerror})"
        raise PermissionError(f"{why}; choose another output directory ({option})") from None
    return path


class FolderInUseError(RuntimeError):
    """Another process is writing the folder a command would write."""


@contextlib.contextmanager
def exclusive_folder(path: str | Path, command: str, option: str = "out=") -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``path`` while ``command`` writes it.

    Two trainings (or collections) writing one folder interleave their files: a restarted run and
    the workers of a killed ``torchrun`` saved steps over each other. The second writer is refused
    instead. The lock is ``flock`` on the folder itself: no lock file, and the kernel drops it when
    its holder dies, so a crashed or killed run never leaves a stale lock. Without ``fcntl`` (not
    POSIX) nothing is locked. ``option`` names how the user chose the folder, for the message.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:
        yield path
        return
    fd = os.open(path, os.O_RDONLY)  # not inherited by spawned workers (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f"{path} is being written by another process (an `rl-gpt {command}` still running, or the "
                f"workers of a stopped torchrun?); wait for it to end or stop it, or use another {option} directory"
            ) from None
        except OSError as exc:  # NFS (flock on a read-only descriptor), Lustre without -o flock, ...
            warnings.warn(
                f"{path} is not locked against a second `rl-gpt {command}` ({exc.strerror}: its filesystem does "
                "not lock folders); run one command per folder",
                stacklevel=3,
            )
        else:
            remove_stale_temporaries(path)
        yield path
    finally:
        os.close(fd)  # releases the lock


# The names this module writes before a rename (and ensure_writable_dir's probe): hidden, so a user's
# own files (notes.tmp) never match.
_TEMPORARY_NAMES = (".*.tmp", ".*.tmp.*", ".write-test-*")
STALE_AFTER_S = 60.0


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``path`` (not its subfolders), returning them.

    Called under the folder's lock. A temporary is stale once unchanged for ``STALE_AFTER_S``: a writer
    that takes no lock (``calibrate`` beside a training) may be filling one right now, and its mtime is fresh.
    """
    now, removed = time.time(), []
    for pattern in _TEMPORARY_NAMES:
        for tmp in path.glob(pattern):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
                if tmp.is_file() and now - tmp.stat().st_mtime > STALE_AFTER_S:
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def ensure_report_dir(path: str | Path, option: str = "--out") -> Path:
    """:func:`ensure_writable_dir` for a command's outputs, refusing a checkpoint dataset's or a
    model's folder: reports and generated networks written there would mix with what they describe."""
    path = Path(path)
    for marker, holds in (("spec.json", "a checkpoint dataset"), ("model.json", "a generator model")):
        if (path / marker).is_file():
            raise PermissionError(f"{path} holds {holds}; write the outputs to another folder ({option})")
    return ensure_writable_dir(path, option)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # as every reader here reads it, whatever the locale
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON: a NaN or infinity (an undefined number, such as the solved
    fraction of a task without a threshold) is written as null, which every JSON parser reads."""
    atomic_write_text(path, json.dumps(_finite_or_null(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def read_format_json(path: Path, format_name: str, error: type[Exception], what: str, fix: str) -> dict[str, Any]:
    """A JSON object whose ``format.name`` is ``format_name`` (a dataset spec, a model file); anything
    else raises ``error``: "PATH is not valid JSON (...); FIX" or "PATH is not WHAT"."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}") from None
    marked = data.get("format") if isinstance(data, dict) else None
    if not isinstance(marked, dict) or marked.get("name") != format_name:
        raise error(f"{path} is not {what}")
    return data


def nulls_as_nan(value: Any) -> Any:
    """The inverse of :func:`atomic_write_json`'s nulls for arrays: ``None`` in (nested) lists becomes
    NaN, so a list of measurements reads back as numbers. Nulls outside lists stay ``None``."""
    if isinstance(value, dict):
        return {k: nulls_as_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [math.nan if v is None else nulls_as_nan(v) for v in value]
    return value


def remove_path(path: Path) -> None:
    """Remove whatever is at ``path`` (nothing, a file, a link or a folder) without following a link.
    Used before writing to a fixed temporary name: ``shutil.rmtree(..., ignore_errors=True)`` leaves a
    link there, and the write would then go through it to wherever it points."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_then_rename(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` for a new temporary file beside ``path``, then give it the usual mode and rename it.
    The temporary name is made afresh (``mkstemp``: never a file or link someone left there) and keeps
    ``path``'s suffix, from which matplotlib and SB3 take the format."""
    path = Path(path)
    if not path.parent.is_dir():  # else mkstemp's error names the temporary file, not the folder
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, save and close a matplotlib figure; ``path`` is never a half-written image."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        return write_then_rename(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)


def shade_outside(ax: Any, xs: Sequence[float], bounds: Sequence[float] | None) -> None:
    """Grey the x-ranges of ``xs`` outside ``bounds`` (the training data's metric range), where a
    prompt is conditioned on the range's end: what is plotted there was not asked for as given."""
    if bounds is None or not len(xs):
        return
    low, high = float(min(bounds)), float(max(bounds))
    label = "outside the training range (conditioned on its end)"
    for start, stop in ((min(xs), low), (high, max(xs))):
        if start < stop:
            ax.axvspan(start, stop, color="0.5", alpha=0.15, lw=0, label=label)
            label = None  # one legend entry


def atomic_save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` under a temporary name, renamed into place with the usual file mode."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # a full disk or a permission: the OSError callers handle, as for JSON
            raise OSError(f"could not write {path}: {exc}") from exc

    return write_then_rename(path, write)


# The key, in both files of a pair, of the id that ties them to one save.
SAVE_ID = "rl_gpt.save_id"


def atomic_save_pair(tensors: dict[str, Any], weights: str | Path, meta_path: str | Path, meta: dict) -> None:
    """Save weights and the JSON that describes them, each atomically, tied by a shared random id.

    Two files cannot be renamed into place at once: a crash between the renames leaves the new
    weights beside the old JSON. Both carry one save's id (the safetensors header's metadata, the
    JSON's ``rl_gpt.save_id`` key), so a reader tells such a pair by :func:`pair_matches`.
    """
    save_id = uuid.uuid4().hex
    atomic_save_safetensors(tensors, weights, metadata={SAVE_ID: save_id})
    atomic_write_json(meta_path, meta | {SAVE_ID: save_id})


def pair_matches(weights: str | Path, meta: dict) -> bool:
    """Whether ``weights`` come from the save that wrote ``meta`` (True for a pair written before the
    id existed, where neither carries one)."""
    from safetensors import SafetensorError, safe_open

    expected = meta.get(SAVE_ID)
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = (f.metadata() or {}).get(SAVE_ID)
    except (OSError, SafetensorError):
        return expected is None  # unreadable: said by the reader; here only whether the ids agree
    return found == expected  # also False for new weights (an id) beside a JSON written before ids (none)


def allocate_files(folder: Path, pattern: str = "*.memmap") -> None:
    """Give the files in ``folder`` their disk blocks now, before they are written through a memory map.

    A new memmap is a sparse file: a page written through the mapping into a full disk (or past a
    quota) kills the process with SIGBUS ("Bus error"), with no message and nothing saved. Allocated
    first, a full disk is an ``OSError`` (ENOSPC) that says where. Where the system or the filesystem
    cannot allocate ahead (not Linux; NFS v3, tmpfs-less ramfs), the files stay sparse, as before.
    """
    for path in folder.glob(pattern):
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size:  # (allocating an empty file's "first byte" would make it one byte long)
                _reserve_blocks(fd, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OSError(exc.errno, exc.strerror, str(path)) from None
        finally:
            os.close(fd)


def _reserve_blocks(fd: int, size: int) -> None:
    """Linux's fallocate(2), or nothing. Not ``os.posix_fallocate``: where the filesystem cannot allocate,
    glibc's emulation writes a byte into every 4 KiB block, two calls (over NFS, round trips) per block."""
    fallocate = _linux_fallocate()
    if fallocate is not None and fallocate(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@functools.cache
def _linux_fallocate() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or (
            libc.fallocate if ctypes.sizeof(ctypes.c_long) == 8 else None
        )
    except (OSError, AttributeError):
        return None
    if fallocate is not None:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fallocate.restype = ctypes.c_int
    return fallocate


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory ``tmp`` to ``final``, replacing an existing one.

    POSIX cannot rename over a non-empty directory, so the old one is first moved aside to
    ``final.old``; readers recover from that name if a crash falls between the two renames.
    """
    old = final.with_name(final.name + ".old")
    remove_path(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    remove_path(old)
