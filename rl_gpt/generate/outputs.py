"""What ``generate`` writes into its folder, and clearing an earlier call's outputs that a new call no longer lists.

Only what a ``generated.json`` in the folder names is ever removed, and only names ``generate`` writes,
directly inside the folder: a hand-edited or foreign record cannot make it delete elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["listed_outputs", "previous_outputs", "remove_stale", "retire_records", "target_folders"]

#: What generate writes into a folder, and nothing else may be removed as an earlier call's output.
_OUTPUT_NAME = re.compile(r"(policy_\d+\.zip|classifier_\d+\.safetensors|target_[^/\\]+|generated\.png)")


def target_folders(targets: Sequence[float]) -> list[str]:
    """The folder of each target of a sweep of targets: ``target_<value>``, or numbered where values would clash."""
    names = [f"target_{t:g}" for t in targets]
    if len(set(names)) < len(names):  # targets that differ beyond 6 significant digits: number the folders
        names = [f"target_{j:02d}" for j in range(len(targets))]
    return names


def listed_outputs(out: Path, record: Any, depth: int = 0) -> set[Path]:
    """The files and folders a ``generated.json`` record in ``out`` names: only names generate
    writes, directly inside ``out`` (a hand-edited or foreign file cannot point elsewhere)."""
    if not isinstance(record, dict):
        return set()
    policies, folders = record.get("policies"), record.get("folders") if depth == 0 else None
    policies = policies if isinstance(policies, list) else []
    folders = folders if isinstance(folders, list) else []
    names = [p.get("file") for p in policies if isinstance(p, dict)]
    names += [*folders, "generated.png"] if folders else []
    paths = {out / n for n in names if isinstance(n, str) and _OUTPUT_NAME.fullmatch(n)}
    for folder in folders:
        if isinstance(folder, str) and out / folder in paths:
            paths |= previous_outputs(out / folder, depth + 1)
    return paths


def previous_outputs(out: Path, depth: int = 0) -> set[Path]:
    """What an earlier ``generate`` into ``out`` wrote, as its ``generated.json`` lists it (else nothing)."""
    try:
        return listed_outputs(out, json.loads((out / "generated.json").read_text(encoding="utf-8")), depth)
    except (OSError, ValueError):  # no earlier call, or a file that is not JSON
        return set()


def retire_records(out: Path, folders: list[Path]) -> None:
    """Remove the ``generated.json`` records of an earlier call in ``out`` and in the target ``folders``
    this call writes, before their outputs are overwritten: a call stopped midway then leaves files
    without a record, not a record of files that were replaced. The earlier call's outputs were read
    before (``stale``), so :func:`remove_stale` still clears what the new record does not list."""
    for record in [out / "generated.json", *(f / "generated.json" for f in folders)]:
        record.unlink(missing_ok=True)


def remove_stale(stale: set[Path], out: Path, record: dict[str, Any], keep: set[Path] = frozenset()) -> None:
    """Delete an earlier call's outputs that this call's ``generated.json`` no longer lists (never ``keep``)."""
    keep = {p.resolve() for p in (*listed_outputs(out, record), out / "generated.json", *keep)}
    for path in sorted(stale, key=lambda p: len(p.parts), reverse=True):  # files before their folders
        if path.resolve() in keep or path.is_symlink():
            continue
        if path.is_dir():
            (path / "generated.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a folder the user put more in stays
                path.rmdir()
        else:
            path.unlink(missing_ok=True)
