"""Where a supervised dataset's data files are now: the folder a command names, else the one it was collected from.

A dataset's spec.json records the absolute ``task.data_root`` it was collected with. Folders move and
datasets travel to other machines, so every command that evaluates classifiers takes a
``task.data_root`` (``--data-root``) instead, checked to hold the same data (its SHA-256, where the
spec records one) before the work starts.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

from rl_gpt.config import ConfigError
from rl_gpt.supervised.data import DATASETS, load_dataset_cached

__all__ = ["absolute_data_root", "data_sha256", "locate_data_root", "use_data_root"]


def absolute_data_root(path: str | Path) -> str:
    """``path`` made absolute as the spec records it: ``~`` expanded, a link kept a link (mnist -> mnist-v2)."""
    return os.path.abspath(os.path.expanduser(str(path)))


@cache
def data_sha256(dataset: str, root: str | None) -> str:
    """SHA-256 of the loaded data set: what a dataset's runs learnt from, wherever its files are now."""
    digest = hashlib.sha256()
    for part in load_dataset_cached(dataset, root):
        digest.update(part.contiguous().numpy().tobytes())
    return digest.hexdigest()


def locate_data_root(spec: dict[str, Any], named: str | Path | None = None) -> str | None:
    """The folder of the data files a supervised dataset's classifiers are evaluated on.

    ``named``: the folder the command itself names (``task.data_root=``, ``--data-root``), refused
    unless it is one; else the folder recorded in the spec. A folder other than the recorded one must
    hold the data the dataset was collected on (its SHA-256, where the spec records one). None for RL
    datasets and for data sets that ship with a package (digits). Raises :class:`ConfigError` saying
    what to pass.
    """
    task = spec.get("task") or {}
    dataset = (spec.get("policy") or {}).get("dataset")
    recorded = task.get("data_root")
    if task.get("kind") != "supervised" or dataset not in DATASETS or DATASETS[dataset].bundled:
        return recorded
    fix = (
        "pass the folder that holds them as task.data_root=DIR (`--data-root DIR` for generate and evaluate), or "
        f"fetch them there with `rl-gpt data fetch {dataset} --root DIR`"
    )
    if named:
        chosen = absolute_data_root(named)
        if Path(chosen).is_file():
            raise ConfigError(f"task.data_root: {chosen} is a file; pass the folder that holds {dataset}'s files")
        if not Path(chosen).is_dir():
            raise ConfigError(f"task.data_root: {chosen} is not a folder; {fix}")
    elif recorded and Path(recorded).is_dir():
        chosen = recorded
    else:
        where = f"are not in {recorded}, where they were collected" if recorded else "have no folder recorded"
        raise ConfigError(f"{dataset}'s files {where}; {fix}")
    expected = spec.get("data_sha256")
    same = recorded is not None and Path(chosen).resolve() == Path(recorded).resolve()
    if expected and not same:
        try:
            found = data_sha256(dataset, chosen)
        except ConfigError:
            raise
        except (FileNotFoundError, ValueError) as exc:  # missing or damaged files: the loader's one line
            raise ConfigError(f"task.data_root: {exc}") from None
        if found != expected:
            raise ConfigError(
                f"task.data_root={chosen} holds other {dataset} data than this dataset was collected on (SHA-256 "
                "differs); point it at the same files"
            )
    return chosen


def use_data_root(spec: dict[str, Any], named: str | Path | None = None) -> dict[str, Any]:
    """``spec`` (changed in place, never written) with ``task.data_root`` where the files are now; see
    :func:`locate_data_root`. Everything that evaluates the dataset's classifiers reads it from there."""
    root = locate_data_root(spec, named)
    if root is not None:
        spec.setdefault("task", {})["data_root"] = root
    return spec
