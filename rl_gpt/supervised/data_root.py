"""Where a supervised dataset's data files are now: the folder a command is given, else the one it was collected from.

A dataset's spec.json records the absolute ``task.data_root`` it was collected with. Folders move and
datasets travel to other machines, so every command that evaluates classifiers takes a
``task.data_root`` (``--data-root``) instead, checked to hold the same data (its SHA-256) before the
work starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rl_gpt.config import ConfigError
from rl_gpt.supervised.data import DATASETS, load_dataset_cached

__all__ = ["data_sha256", "locate_data_root", "use_data_root"]


def data_sha256(dataset: str, root: str | None) -> str:
    """SHA-256 of the loaded data set: what a dataset's runs learnt from, wherever its files are now."""
    digest = hashlib.sha256()
    for part in load_dataset_cached(dataset, root):
        digest.update(part.contiguous().numpy().tobytes())
    return digest.hexdigest()


def locate_data_root(spec: dict[str, Any], given: str | Path | None = None) -> str | None:
    """The folder of the data files a supervised dataset's classifiers are evaluated on.

    ``given`` (a command's ``task.data_root``) wins where it is a folder, else the folder recorded in
    the spec. A folder other than the recorded one must hold the same data as the dataset was
    collected on (its SHA-256, where the spec records one). None for RL datasets and for data sets
    that ship with a package (digits). Raises :class:`ConfigError` saying what to pass.
    """
    task = spec.get("task") or {}
    dataset = (spec.get("policy") or {}).get("dataset")
    recorded = task.get("data_root")
    if task.get("kind") != "supervised" or dataset not in DATASETS or DATASETS[dataset].bundled:
        return recorded
    chosen = next((str(Path(root).resolve()) for root in (given, recorded) if root and Path(root).is_dir()), None)
    if chosen is None:
        tried = " nor in ".join(str(root) for root in dict.fromkeys((given, recorded)) if root)
        where = f"are not in {tried}" if tried else "have no folder recorded"
        raise ConfigError(
            f"{dataset}'s files {where}; pass the folder that holds them as task.data_root=DIR (`--data-root DIR` "
            f"for generate and evaluate), or fetch them there with `rl-gpt data fetch {dataset} --root DIR`"
        )
    expected = spec.get("data_sha256")
    if expected and chosen != (str(Path(recorded).resolve()) if recorded else None):
        try:
            found = data_sha256(dataset, chosen)
        except (FileNotFoundError, ValueError) as exc:  # missing or damaged files: the loader's one line
            raise ConfigError(f"task.data_root: {exc}") from None
        if found != expected:
            raise ConfigError(
                f"task.data_root={chosen} holds other {dataset} data than this dataset was collected on (SHA-256 "
                "differs); point it at the same files"
            )
    return chosen


def use_data_root(spec: dict[str, Any], given: str | Path | None = None) -> dict[str, Any]:
    """``spec`` (changed in place, never written) with ``task.data_root`` where the files are now; see
    :func:`locate_data_root`. Everything that evaluates the dataset's classifiers reads it from there."""
    root = locate_data_root(spec, given)
    if root is not None:
        spec.setdefault("task", {})["data_root"] = root
    return spec
