"""The on-disk checkpoint dataset: an open format readable without rl_gpt.

Layout of a dataset directory::

    DATASET/
      spec.json      task, env id, algorithm, policy kwargs, metric and direction, parameter layout,
                     field descriptions, software versions, the resolved collection config
      data/          a tensordict memory-mapped TensorDict, N rows (``TensorDict.load_memmap``)
      runs.json      per-run metadata: seed, hyperparameters, wall time
      runs/          runs finished since the last consolidation, one memmap TensorDict each

A finished run is written to ``runs/.tmp-run_XXXXX`` and renamed to ``runs/run_XXXXX``, so a crash
loses at most the runs in flight. :meth:`DatasetWriter.consolidate` merges ``data/`` and ``runs/``
into a new ``data/`` run by run (never holding the whole dataset in memory), then removes the
merged run directories.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from rl_gpt.io import (
    allocate_files,
    atomic_write_json,
    ensure_writable_dir,
    exclusive_folder,
    read_format_json,
    remove_path,
    replace_dir,
)
from rl_gpt.layout import Layout

__all__ = [
    "FORMAT",
    "CheckpointDataset",
    "DatasetError",
    "DatasetWriter",
    "collected_otherwise",
    "merge_stored_runs",
    "read_spec",
    "task_record",
]

FORMAT = {"name": "rl_gpt.checkpoints", "version": 1}
REQUIRED_FIELDS = {"params": torch.float32, "metric": torch.float32, "run": torch.int64, "step": torch.int64}


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; the message says why and what to do."""


def read_spec(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "spec.json"
    if not path.is_file():
        inner = Path(root) / "dataset"
        if (inner / "spec.json").is_file():  # an experiment folder given for its dataset
            raise DatasetError(f"{root} is an experiment folder; its dataset is {inner}")
        if (Path(root) / "model.json").is_file():  # e.g. `rl-gpt evaluate runs/x/model`: collecting is not the fix
            raise DatasetError(
                f"{root} holds a generator model, not a checkpoint dataset; `rl-gpt info {root}` names its dataset"
            )
        raise DatasetError(f"{root} is not a checkpoint dataset (no spec.json); run `rl-gpt collect` first")
    fix = "restore it from a copy, or collect again"
    spec = read_format_json(path, FORMAT["name"], DatasetError, "an rl_gpt checkpoint dataset spec", fix)
    missing = [key for key in ("task", "layout", "metric") if not isinstance(spec.get(key), dict)]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}: the spec is damaged; restore it, or collect again")
    try:
        Layout.from_dict(spec["layout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: its layout is damaged ({type(exc).__name__}: {exc}); restore it") from None
    return spec


#: What tensordict's ``memmap`` writes as the type of a plain TensorDict; any other type would be imported.
_TENSORDICT_TYPE = "<class 'tensordict._td.TensorDict'>"
_COLUMN_DTYPES = {
    str(d): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8)
    + (torch.int8, torch.int16, torch.int32, torch.int64)
}
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_]+")
_TENSORDICT_ENTRIES = ("shape", "device", "_type")


def load_checked(folder: Path) -> TensorDict:
    """The tensor columns of a memory-mapped TensorDict folder (what ``TensorDict.memmap`` wrote), read
    by rl_gpt itself rather than ``TensorDict.load_memmap``.

    - Only plain tensor columns are read. A non-tensor field is stored as a pickle, and a nested or
      tensorclass entry names a Python type to import: either can run code, so a dataset holding one
      is refused, not opened.
    - Each column is mapped copy-on-write: rows read lazily from disk, and writing to a tensor (an
      in-place normalisation in a notebook) changes memory only, never the dataset's files. The
      tensors are not tensordict's memmaps: pickled to another process they are copied, so workers
      are given the dataset's path, not its tensors.
    - Every column's file must hold the bytes ``meta.json`` says. Mapping a short file would read past
      its end: a truncated dataset (a disk that filled, a partial copy) must not load as rows of zeros.
    """
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise DatasetError(
            f"{meta_path}: unreadable ({reason}); the dataset is damaged: restore it or collect again"
        ) from None
    if not isinstance(meta, dict) or meta.get("_type", _TENSORDICT_TYPE) != _TENSORDICT_TYPE:
        kind = meta.get("_type") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(f"{meta_path}: not a plain TensorDict ({kind!r}); restore the dataset or collect again")
    shape = meta.get("shape")
    if not _is_row_shape(shape):
        raise DatasetError(f"{meta_path}: shape {shape!r} is not [rows]; restore the dataset or collect again")
    columns = {}
    for key, column in meta.items():
        if key in _TENSORDICT_ENTRIES:
            continue
        dtype = _COLUMN_DTYPES.get(column.get("dtype")) if isinstance(column, dict) else None
        column_shape = column.get("shape") if isinstance(column, dict) else None
        if (
            dtype is None
            or not _COLUMN_NAME.fullmatch(key)
            or column.get("is_nested")
            or not isinstance(column_shape, list)
            or column_shape[:1] != shape
            or not all(isinstance(n, int) and n >= 0 for n in column_shape)
        ):
            kind = column.get("type") if isinstance(column, dict) else None
            raise DatasetError(
                f"{folder}: field {key!r} is not a tensor column ({kind or f'entry {column!r}'[:80]}); rl_gpt reads "
                "tensor columns of one row each and never opens pickled, nested or typed fields (they can run "
                "code): remove the field and its entry in meta.json, or collect again"
            )
        columns[key] = _map_column(folder / f"{key}.memmap", dtype, column_shape)
    return TensorDict(columns, batch_size=shape)


def _is_row_shape(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= 0


def _map_column(path: Path, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The column's file mapped copy-on-write (``shared=False``): read lazily, never written."""
    want = math.prod(shape) * dtype.itemsize
    if want == 0:  # tensordict writes no file for an empty column
        return torch.empty(shape, dtype=dtype)
    have = path.stat().st_size if path.is_file() else None
    if have is None or have < want:
        what = "is missing" if have is None else f"holds {have} of its {want} bytes"
        raise DatasetError(
            f"{path} {what}: the dataset is damaged (a full disk or a partial copy?); restore it, or "
            "collect again into a new folder"
        )
    return torch.from_file(str(path), shared=False, size=math.prod(shape), dtype=dtype).view(shape)


def _run_dir_name(run: int) -> str:
    return f"run_{run:05d}"


def _recover(root: Path) -> None:
    """Finish a consolidation that crashed between its two renames."""
    data, old = root / "data", root / "data.old"
    if old.exists() and not data.exists():
        old.rename(data)


_FOLD_HINT = (
    " (it was collected with VecNormalize statistics stored beside the weights: add "
    "collect.fold_normalisation=false to extend it)"
)


def _fold_differs(old: dict, new: dict) -> bool:
    """The two specs differ only in whether observation statistics are folded into the weights."""
    old_policy, new_policy = dict(old.get("policy") or {}), dict(new.get("policy") or {})
    return old_policy.pop("normalize_obs", None) is True and new_policy.pop("normalize_obs", None) is False


#: Task fields that mean nothing for the other kind of task, left out of the records datasets store:
#: a classifier has no SB3 algorithm, policy_kwargs, training envs or VecNormalize; a policy no
#: network name or data folder.
_OTHER_KIND_FIELDS = {
    "rl": ("network", "data_root"),
    "supervised": ("algo", "policy_kwargs", "n_envs", "normalize"),
}


def task_record(task: Mapping[str, Any], compared: bool = False) -> dict[str, Any]:
    """The ``task`` section a spec stores: a resolved task config without the other kind's fields.

    Also how two records are compared, so datasets written before these fields were left out
    (a supervised spec used to say ``algo: "ppo"``) still compare equal to new ones. ``compared``
    also leaves out ``data_root``: where the data set's files are is not what they hold, and they move.
    """
    left_out = (*_OTHER_KIND_FIELDS.get(task.get("kind", "rl"), ()), *(("data_root",) if compared else ()))
    return {k: v for k, v in task.items() if k not in left_out}


#: Collection settings that may change when a dataset is extended: how many runs and where they run.
_EXTENDABLE = frozenset({"runs", "workers", "executor", "ray_address", "batch_runs"})  # how runs execute, not what


#: The spec sections that two datasets' runs must share to be one dataset's.
_SAME_RUNS_SECTIONS = ("task", "layout", "policy")


def _compared_section(old: Mapping[str, Any], new: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    """Two specs' ``key`` sections as they are compared: a task without where its files are (they move)."""
    before, after = old.get(key), new.get(key)
    if key == "task" and isinstance(before, Mapping) and isinstance(after, Mapping):
        before, after = task_record(before, compared=True), task_record(after, compared=True)
    return before, after


def _compared_collection(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, stored, new)`` for each collection setting that decides what a run is (not how many runs,
    nor where they run). Keys one spec lacks are not compared: older specs lack some, and supervised
    specs no longer hold the RL-only ones (their older specs still do)."""
    before, after = old.get("collect") or {}, new.get("collect") or {}
    return [(k, before[k], after[k]) for k in sorted(before.keys() & after.keys()) if k not in _EXTENDABLE]


def _changed_collection(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``collect.key=old value`` for each setting that would make new runs unlike the stored ones."""
    return [f"collect.{k}={stored!r}" for k, stored, now in _compared_collection(old, new) if stored != now]


def collected_otherwise(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each recorded setting that makes the runs of two dataset specs unlike each
    other (the task, the network's layout and policy, the collection settings other than how many runs and
    where they ran, the data set's SHA-256): empty for one dataset, extended or moved, or a re-collection of it.
    The same comparisons :class:`DatasetWriter` makes before it adds runs to a dataset."""
    changed = [d for key in _SAME_RUNS_SECTIONS for d in _differences(*_compared_section(old, new, key), key)]
    changed += [
        d for k, stored, now in _compared_collection(old, new) for d in _differences(stored, now, f"collect.{k}")
    ]
    if old.get("data_sha256") and new.get("data_sha256") and old["data_sha256"] != new["data_sha256"]:
        changed.append("data_sha256 (other data)")
    return changed


def _with_earlier_versions(old: Mapping[str, Any], spec: dict[str, Any], stored: int, root: Path) -> dict[str, Any]:
    """``spec`` keeping the software the ``stored`` runs were collected with, where it differs from now's.

    ``earlier_versions`` lists, oldest first, ``{"runs_stored": N, "versions": {...}}``: the first N runs were
    collected with those versions (or an earlier entry's); ``versions`` is the software of the runs after the
    last entry. A library changed between sessions trains the runs added now to other bits than it would
    have, so that is said once, as a warning; a changed ``rl_gpt_commit`` alone is only recorded.
    """
    history = [e for e in old.get("earlier_versions") or [] if isinstance(e, dict)]
    if history and history[-1].get("runs_stored") == stored:  # no run was stored under old["versions"]
        used = history.pop().get("versions")  # the last stored runs' software
    else:
        used = old.get("versions")
    now = spec.get("versions")
    if stored and isinstance(used, dict) and isinstance(now, dict) and used != now:
        history.append({"runs_stored": stored, "versions": used})
        libraries = [k for k in sorted(used.keys() | now.keys()) if k != "rl_gpt_commit" and used.get(k) != now.get(k)]
        if libraries:
            changed = ", ".join(f"{k} {used.get(k, '-')} -> {now.get(k, '-')}" for k in libraries[:4])
            warnings.warn(
                f"{root} holds {stored} runs collected with other software ({changed}); runs added from now on "
                "use the installed versions (spec.json keeps the earlier ones under earlier_versions)",
                stacklevel=3,
            )
    return dict(spec, earlier_versions=history) if history else spec


def _differences(before: Any, after: Any, name: str) -> list[str]:
    """``name.key: stored -> new`` for each leaf that differs between two spec sections."""
    return [f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in _changed_leaves(before, after, name)]


def _changed_leaves(before: Any, after: Any, name: str) -> list[tuple[str, Any, Any]]:
    """``(name.key, stored, new)`` for each leaf that differs between two spec sections."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = sorted(before.keys() | after.keys())
        return [d for k in keys for d in _changed_leaves(before.get(k), after.get(k), f"{name}.{k}")]
    return [] if before == after else [(name, before, after)]


def _as_override(value: Any) -> str:
    """A scalar as a ``key=value`` override writes it (YAML's null, true and false)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _stored_values_hint(before: Any, after: Any, name: str) -> str:
    """``; to add runs to it, give its values: task.hyperparams.lr=0.1`` where every stored value that differs
    is a plain scalar a command line can give back; else nothing."""
    leaves = _changed_leaves(before, after, name)
    if not leaves or any(old is not None and not isinstance(old, (bool, int, float, str)) for _, old, _ in leaves):
        return ""
    values = " ".join(f"{key}={_as_override(old)}" for key, old, _ in leaves)
    return f"; to add runs to it, give its values: {values}"


def _short(value: Any) -> str:
    """``repr`` cut to a readable length (a layout's parameter list would fill the screen)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class DatasetWriter:
    """Appends finished runs atomically and consolidates them into one memmapped TensorDict."""

    def __init__(self, root: str | Path, spec: Mapping[str, Any], option: str = "out="):
        """``option``: how the user chose ``root`` (``out=`` or ``dataset=``), for messages that say what to change."""
        self.root = ensure_writable_dir(root, option)
        (self.root / "runs").mkdir(exist_ok=True)
        _recover(self.root)
        spec = dict(spec, format=FORMAT)
        spec_path = self.root / "spec.json"
        old = read_spec(self.root) if spec_path.exists() else None  # a file that is no rl_gpt spec is refused
        #: The spec of the runs already stored (None for a new dataset), before ``spec`` replaces it.
        self.stored_spec = old if old is not None and self._holds_runs() else None
        if self.stored_spec is not None:  # a spec without runs (a refused start) is simply replaced
            for key in _SAME_RUNS_SECTIONS:
                before, after = _compared_section(old, spec, key)  # where the files are may change
                if before != after:
                    which = _differences(before, after, key)
                    raise DatasetError(
                        f"{self.root} already holds a dataset with a different {key}"
                        + (f" ({', '.join(which[:3])}{', ...' if len(which) > 3 else ''})" if which else "")
                        + f"; use another {option} directory or delete the old dataset"
                        + (_stored_values_hint(before, after, key) if key == "task" and len(which) <= 3 else "")
                        + (_FOLD_HINT if key == "policy" and _fold_differs(old, spec) else "")
                    )
            before, after = old.get("data_sha256"), spec.get("data_sha256")
            if before and after and before != after:  # data_root itself may change: the files move
                root_now = (spec.get("task") or {}).get("data_root")
                raise DatasetError(
                    f"{self.root} holds runs trained on other data than task.data_root={root_now} holds (the "
                    "loaded data set's SHA-256 differs); point task.data_root at the files it was collected "
                    f"from, or use another {option} directory"
                )
            changed = _changed_collection(old, spec)
            if changed:
                raise DatasetError(
                    f"{self.root} holds runs collected with {', '.join(changed)}; more runs must be collected "
                    "alike (only collect.runs and how they are executed may change): use those values, or "
                    f"another {option} directory"
                )
            spec = _with_earlier_versions(old, spec, len(self.completed_runs()), self.root)
        atomic_write_json(spec_path, spec)
        self.spec = spec
        self.layout = Layout.from_dict(spec["layout"])
        for tmp in (self.root / "runs").glob(".tmp-*"):  # leftovers of runs killed mid-write
            remove_path(tmp)

    # ------------------------------------------------------------------ what is there
    def _holds_runs(self) -> bool:
        """Whether any run was stored or is being written: a finished one, one mid-write, or consolidated data."""
        runs = (p.name for p in (self.root / "runs").iterdir())
        return (self.root / "data").exists() or any(n.startswith(("run_", ".tmp-run_")) for n in runs)

    def completed_runs(self) -> set[int]:
        done = {int(p.name.split("_")[1]) for p in (self.root / "runs").glob("run_*") if (p / "run.json").exists()}
        data = self.root / "data"
        if data.exists():
            done |= {int(r) for r in torch.unique(load_checked(data)["run"]).tolist()}
        return done

    def stored_runs(self, first: int, fields: Sequence[str]) -> Iterator[tuple[int, TensorDict]]:
        """``fields`` (those present) of the ``first`` lowest-numbered stored runs, consolidated or not, in
        run order; only those columns of those rows are read."""
        sources: dict[int, tuple[TensorDict, slice]] = {}
        data = self.root / "data"
        if data.exists():
            td = load_checked(data)
            runs, counts = torch.unique_consecutive(td["run"], return_counts=True)  # data/ is in run order
            ends = torch.cumsum(counts, 0).tolist()
            for r, n, end in zip(runs.tolist(), counts.tolist(), ends, strict=True):
                sources[int(r)] = (td, slice(end - n, end))
        for p in (self.root / "runs").glob("run_*"):
            if (p / "run.json").exists():
                sources.setdefault(int(p.name.split("_")[1]), (load_checked(p), slice(None)))
        for run in sorted(sources)[:first]:
            td, rows = sources[run]
            yield run, td.select(*(f for f in fields if f in td))[rows]

    # ------------------------------------------------------------------ append
    def add_run(self, run: int, rows: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Store one finished run's checkpoints (C rows) atomically."""
        n = rows["params"].shape[0]
        if rows["params"].shape[1] != self.layout.numel:
            raise DatasetError(f"run {run}: params have {rows['params'].shape[1]} columns, layout {self.layout.numel}")
        td = TensorDict({k: torch.as_tensor(v) for k, v in rows.items()}, batch_size=[n])
        td["run"] = torch.full((n,), run, dtype=torch.int64)
        for key, dtype in REQUIRED_FIELDS.items():
            td[key] = td[key].to(dtype)
        final = self.root / "runs" / _run_dir_name(run)
        tmp = self.root / "runs" / f".tmp-{_run_dir_name(run)}"
        remove_path(tmp)
        try:
            stored = td.memmap_like(tmp)  # sparse files of the right size
            allocate_files(tmp)  # a full disk is an OSError here, not a SIGBUS while copying
            stored.update_(td)
            atomic_write_json(tmp / "run.json", dict(meta, run=run, checkpoints=n))
        except BaseException:  # a full disk: free what this run took
            remove_path(tmp)
            raise
        replace_dir(tmp, final)

    # ------------------------------------------------------------------ consolidate
    def consolidate(self) -> int:
        """Merge ``data/`` and finished runs into a new ``data/``; returns the row count."""
        run_dirs = sorted(p for p in (self.root / "runs").glob("run_*") if (p / "run.json").exists())
        data_dir = self.root / "data"
        if data_dir.exists() and run_dirs:
            # A crash after the last consolidation's rename but before its clean-up leaves runs that
            # data/ already holds: drop them instead of merging them twice.
            stored = set(torch.unique(load_checked(data_dir)["run"]).tolist())
            for p in [p for p in run_dirs if int(p.name.split("_")[1]) in stored]:
                shutil.rmtree(p)
                run_dirs.remove(p)
        if not run_dirs:
            return len(load_checked(data_dir)) if data_dir.exists() else 0
        stored_meta = self._read_runs_meta()  # a damaged runs.json stops the merge before it copies anything
        sources: list[TensorDict] = []
        if data_dir.exists():
            sources.append(load_checked(data_dir))
        sources += [load_checked(p) for p in run_dirs]
        # One source per run, ordered by run index, so readers get (run, step) order.
        pieces, seen = [], {}
        names = ([data_dir] if data_dir.exists() else []) + run_dirs
        for src, name in zip(sources, names):  # each source's rows are grouped by run: one look at its run column
            ids, counts = torch.unique_consecutive(src["run"], return_counts=True)
            stops = torch.cumsum(counts, 0).tolist()
            for r, n, stop in zip(ids.tolist(), counts.tolist(), stops):
                if r in seen:
                    where = name.name if seen[r] == name else f"{seen[r].name} and {name.name}"
                    raise DatasetError(
                        f"{self.root}: run {r}'s rows are stored twice or apart ({where}); rows must be grouped by "
                        "run and sorted by step: sort them so, or collect into a new folder"
                    )
                seen[r] = name
                pieces.append((r, src, stop - n, stop))
        pieces.sort(key=lambda p: p[0])
        keys = set(sources[-1].keys())
        total = sum(stop - start for _, _, start, stop in pieces)
        tmp = self.root / ".tmp-data"
        remove_path(tmp)
        template = sources[-1][:1]
        try:
            out = TensorDict(batch_size=[total]).memmap_(tmp)
            for k in sorted(keys):
                out.make_memmap(k, (total, *template[k].shape[1:]), dtype=template[k].dtype)
            allocate_files(tmp)  # a full disk is an OSError here, not a SIGBUS while copying
            pos = 0
            for _, src, start, stop in pieces:
                if set(src.keys()) != keys:
                    raise DatasetError(f"runs in {self.root} store different fields; collect into a new directory")
                out[pos : pos + stop - start] = src[start:stop]
                pos += stop - start
        except BaseException:  # a full disk: free the copy (as large as the dataset); data/ and runs/ stay
            remove_path(tmp)
            raise
        new_meta = [json.loads((p / "run.json").read_text(encoding="utf-8")) for p in run_dirs]
        meta = stored_meta | {str(m["run"]): m for m in new_meta}
        atomic_write_json(self.root / "runs.json", dict(sorted(meta.items(), key=lambda kv: int(kv[0]))))
        replace_dir(tmp, data_dir)
        for p in run_dirs:
            shutil.rmtree(p)
        return total

    def _read_runs_meta(self) -> dict[str, Any]:
        return read_runs_meta(self.root)


def _first_process() -> bool:
    """Whether this is rank 0 of a torchrun job (or no job): the one that says what every rank finds."""
    return os.environ.get("RANK", "0") == "0"


def read_runs_meta(root: Path) -> dict[str, Any]:
    """``runs.json``: each run's metadata (seed, hyperparameters, wall time) by run id; {} where absent."""
    path = root / "runs.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        why = f"a JSON {type(meta).__name__}"
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        meta, why = None, str(exc)
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{path} is not a JSON object of runs ({why}); restore it, or delete it: it only holds each run's "
            "metadata (seed, hyperparameters), which the checkpoints do not need"
        )
    return meta


def merge_stored_runs(root: str | Path) -> tuple[int, int, int, int | None]:
    """Merge the finished runs in ``root/runs/`` into ``root/data/`` without collecting more.

    For a collection stopped by ``kill -9`` or a crash, which left runs unmerged. Holds the folder's
    lock, so a collection still writing it is refused. Returns (runs merged, runs and checkpoints
    in ``data/`` now, the runs its collection asked for or None if the spec does not say).
    """
    read_spec(root)  # refuses a folder that is no dataset before anything is written
    with exclusive_folder(root, "collect", "DATASET") as path:  # the writer it may meet
        spec = read_spec(path)  # read under the lock: a collection that just ended may have extended it
        writer = DatasetWriter(path, spec, "DATASET")  # also finishes a crashed merge and drops half-written runs
        data = writer.root / "data"
        merged_before = set(torch.unique(load_checked(data)["run"]).tolist()) if data.exists() else set()
        runs = writer.completed_runs()
        merged = len(runs - merged_before)
        rows = writer.consolidate()
    planned = (spec.get("collect") or {}).get("runs")
    return merged, len(runs), rows, planned if isinstance(planned, int) else None


def _check_row_order(root: Path, runs: torch.Tensor, steps: torch.Tensor) -> None:
    """Readers take a run's rows as one block whose first row is its init: a dataset written by other
    tools in another order would load, then silently pair checkpoints of different runs."""
    blocks = torch.unique_consecutive(runs)
    ids, counts = torch.unique(blocks, return_counts=True)
    if len(ids) != len(blocks):
        run = int(ids[counts > 1][0])
        raise DatasetError(
            f"{root}: the rows of run {run} are not one block; rl_gpt reads each run's rows together, "
            "ordered by step: write data/ with its rows sorted by (run, step)"
        )
    backwards = torch.nonzero((runs[1:] == runs[:-1]) & (steps[1:] < steps[:-1])).flatten()
    if len(backwards):
        row = int(backwards[0]) + 1
        raise DatasetError(
            f"{root}: row {row} of run {int(runs[row])} is at step {int(steps[row])}, after step "
            f"{int(steps[row - 1])}; rl_gpt reads each run's rows ordered by step: write data/ with its rows "
            "sorted by (run, step)"
        )


class CheckpointDataset:
    """Read access to a consolidated dataset. Rows stay on disk, mapped copy-on-write: tensors read from
    ``data`` may be changed in memory without changing the dataset."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.spec = read_spec(self.root)
        if any(p for p in (self.root / "runs").glob("run_*") if (p / "run.json").exists()):
            raise DatasetError(
                f"{root} has runs not yet merged into data/ (its collection was stopped); run `rl-gpt data merge "
                f"{root}` to use the runs stored so far, or rerun the same `rl-gpt collect` command to finish and "
                "merge them (each runs/run_NNNNN/ is a TensorDict memmap that can be read on its own)"
                + ("" if os.access(self.root, os.W_OK) else f"; {root} is read-only here: copy it somewhere writable")
            )
        data = self.root / "data"
        if not data.exists() and (self.root / "data.old").exists():
            # A merge stopped between its two renames (``replace_dir``). Readers read the old data where
            # it is and never rename: on shared storage that could undo a running merge's first rename,
            # and read-only storage refuses it. The next writer puts it back (``_recover``).
            data = self.root / "data.old"
        if not data.exists():
            raise DatasetError(f"{root} has no data yet; rerun `rl-gpt collect` with the same config to finish")
        self.data_dir = data  #: the folder the rows are read from (``data/``, or ``data.old/`` after a stopped merge)
        self.data: TensorDict = load_checked(data)
        self._valid: torch.Tensor | None = None
        self._slices: dict[int, slice] | None = None
        self.layout = Layout.from_dict(self.spec["layout"])
        missing = [key for key in REQUIRED_FIELDS if key not in self.data]
        if missing:
            raise DatasetError(f"{root}: data/ has no {', '.join(missing)} column; restore it, or collect again")
        if self.data["params"].ndim != 2 or self.data["params"].shape[-1] != self.layout.numel:
            raise DatasetError(
                f"{root}: params have shape {tuple(self.data['params'].shape)}, the layout {self.layout.numel} columns"
            )
        _check_row_order(self.root, self.data["run"], self.data["step"])
        try:
            self.runs_meta: dict[str, Any] = read_runs_meta(self.root)
        except DatasetError as exc:  # metadata only: the checkpoints are still usable
            if _first_process():
                warnings.warn(str(exc), stacklevel=2)
            self.runs_meta = {}

    def __len__(self) -> int:
        return int(self.data.batch_size[0])

    @property
    def task(self) -> dict[str, Any]:
        return self.spec["task"]

    def run_slices(self) -> dict[int, slice]:
        """``{run: slice of its rows}``; rows are stored grouped by run and sorted by step."""
        if self._slices is None:
            ids, counts = torch.unique_consecutive(self.data["run"], return_counts=True)
            stops = torch.cumsum(counts, 0).tolist()
            self._slices = {r: slice(stop - n, stop) for r, n, stop in zip(ids.tolist(), counts.tolist(), stops)}
        return dict(self._slices)

    def valid_mask(self) -> torch.Tensor:
        """Rows usable for training: finite, not exploding (``valid`` field) and evaluated.

        Weights are checked too: a dataset written by other tools may mark a row valid whose weights are
        NaN, which would make the first training step that draws it fail. Such rows are left out, with a warning.
        """
        if self._valid is None:
            mask = torch.isfinite(self.data["metric"])
            if "valid" in self.data:
                mask &= self.data["valid"].bool()
            finite = _finite_rows(self.data["params"])
            broken = torch.nonzero(mask & ~finite).flatten().tolist()
            if broken and _first_process():
                shown = ", ".join(map(str, broken[:5])) + (", ..." if len(broken) > 5 else "")
                warnings.warn(
                    f"{self.root}: {len(broken)} row(s) marked valid hold NaN or infinite weights (rows {shown}); "
                    "they are left out (set their `valid` to false to silence this)",
                    stacklevel=2,
                )
            self._valid = mask & finite
        return self._valid.clone()


def _finite_rows(params: torch.Tensor) -> torch.Tensor:
    """(N,) whether each row of ``params`` (N, D) holds only finite numbers, reading ~16M weights at a time.

    A row's sum is finite when its entries are (a NaN or an infinity makes it NaN or infinite); a finite
    row whose sum overflows is flagged too, so flagged rows are looked at entry by entry. Summing is
    ~10× faster than ``isfinite(...).all(-1)``, which builds a boolean copy of the weights.
    """
    rows = max(1, 2**24 // max(1, params.shape[-1]))
    if not len(params):  # no rows: nothing to concatenate
        return torch.zeros(0, dtype=torch.bool)
    finite = torch.cat([torch.isfinite(params[i : i + rows].sum(-1)) for i in range(0, len(params), rows)])
    flagged = torch.nonzero(~finite).flatten()
    for i in range(0, len(flagged), rows):
        chunk = flagged[i : i + rows]
        finite[chunk] = torch.isfinite(params[chunk]).all(-1)
    return finite
