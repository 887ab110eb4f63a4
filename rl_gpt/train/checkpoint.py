"""Resumable training state without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from rl_gpt.io import atomic_save_safetensors, atomic_write_json, remove_path, replace_dir

__all__ = [
    "discard_train_state",
    "load_train_state",
    "read_data_state",
    "read_history",
    "read_saved_batch",
    "save_train_state",
    "saved_state",
    "training_segments",
]

# Config fields that may change between a run and its resume without changing what is trained.
_RESUMABLE_CHANGES = {
    "steps",
    "ckpt_every",
    "log_every",
    "probe_every_s",
    "device",
    "sample_steps",
    "guidance",
    "final_probe",
    "calibrate",  # after training, like final_probe
}


def save_train_state(
    directory: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sampler_gen: torch.Generator,
    step: int,
    config: dict[str, Any],
    data_state: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
) -> None:
    """Write model, EMA, optimiser and sampler RNG state to ``directory`` atomically (a temp dir, then rename);
    ``history``: the logged losses so far, which a resumed run goes on from."""
    tmp = directory.with_name(directory.name + ".tmp")
    remove_path(tmp)  # a link left at that name is removed, not written through
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.sampler"] = sampler_gen.get_state()
    info = {"step": step, "param_groups": opt_state["param_groups"], "config": config, "data": data_state}
    info["history"] = history or []
    if hasattr(model, "config"):  # the resolved architecture: a registry default may change later
        info["model"] = model.config.to_dict()
    try:
        atomic_save_safetensors(tensors, tmp / "state.safetensors")
        atomic_write_json(tmp / "state.json", info)
    except BaseException:  # a full disk: what was written of this state (megabytes) goes, the last whole one stays
        remove_path(tmp)
        raise
    replace_dir(tmp, directory)


def saved_state(directory: Path) -> Path:
    """Where a saved run's state is: ``directory``, or ``directory.old`` when a crash fell between the
    two renames of :func:`~rl_gpt.io.replace_dir` (the old state moved aside, the new one not yet in
    place). The next save replaces both."""
    old = directory.with_name(directory.name + ".old")
    if not (directory / "state.json").is_file() and (old / "state.json").is_file():
        return old
    return directory


def discard_train_state(directory: Path) -> None:
    """Remove a saved run at the start of ``--restart``: a restart stopped before its first checkpoint
    would otherwise leave the old run's state to be resumed by the next plain ``train``. Renamed
    first, so a removal cut short leaves no half state under the real name."""
    shutil.rmtree(directory.with_name(directory.name + ".old"), ignore_errors=True)  # a crashed save's
    if not directory.exists():
        return
    gone = directory.with_name(directory.name + ".discarded")
    shutil.rmtree(gone, ignore_errors=True)
    directory.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)


def read_data_state(directory: Path) -> dict[str, Any] | None:
    """The train/test split and normaliser a saved run used (None if there is no saved run)."""
    path = directory / "state.json"
    return json.loads(path.read_text(encoding="utf-8")).get("data") if path.exists() else None


def read_history(directory: Path, step: int) -> list[dict[str, float]]:
    """The losses a saved run logged up to ``step`` ([] where none are on record)."""
    path = directory / "state.json"
    history = json.loads(path.read_text(encoding="utf-8")).get("history", []) if path.exists() else []
    return [h for h in history if h.get("step", step + 1) <= step]


def training_segments(directory: Path, step: int, steps: int, processes: int, batch: int) -> list[dict[str, Any]]:
    """The stretches of one training run that ran under different settings, the current one last:
    ``[{"from_step", "steps", "processes", "batch"}, ...]``. A run resumed at ``step`` with another
    ``train.steps`` (its cosine is recomputed: a warm restart) or another split of its pairs over
    processes (other random draws) is no longer what its final config alone would train; the model
    file keeps this list so that it says so."""
    current = {"from_step": step, "steps": steps, "processes": processes, "batch": batch}
    path = directory / "state.json"
    if not step or not path.is_file():
        return [current | {"from_step": 0}]
    info = json.loads(path.read_text(encoding="utf-8"))
    data, config = info.get("data") or {}, info.get("config") or {}
    segments = data.get("segments")
    if not isinstance(segments, list) or not segments or not all(isinstance(x, dict) for x in segments):
        # saved before segments were recorded (or a damaged list: what the state itself says stands)
        # (states from before `processes` was recorded were resumed only with the same batch, so as now)
        first = {"steps": config.get("steps", steps), "processes": data.get("processes") or processes}
        segments = [{"from_step": 0} | first | {"batch": config.get("batch", batch)}]

    def same(segment: dict[str, Any]) -> bool:
        return all(segment.get(key) == current[key] for key in ("steps", "processes", "batch"))

    if same(segments[-1]):
        return segments
    if segments[-1].get("from_step") == step and len(segments) > 1:  # changed again before a checkpoint:
        segments = segments[:-1]  # that stretch is empty
        if same(segments[-1]):  # and changed back
            return segments
    return [*segments, current]


def read_saved_batch(directory: Path, default: int) -> int:
    """The ``train.batch`` (pairs per process) a saved run trained with (``default`` if not on record)."""
    path = directory / "state.json"
    if not path.exists():
        return default
    return int(json.loads(path.read_text(encoding="utf-8")).get("config", {}).get("batch", default))


def _saved_architecture(directory: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved model config a saved run trained; states saved before it was recorded fall back to
    the model file written beside them at every checkpoint."""
    model_file = directory.parent / "model.json"
    if info.get("model") is None and model_file.exists():
        return json.loads(model_file.read_text(encoding="utf-8")).get("model")
    return info.get("model")


def _check_same_model(
    directory: Path, saved: dict[str, Any], model: torch.nn.Module, config: dict[str, Any], expect: dict[str, Any]
) -> None:
    """Refuse to continue a run whose resolved architecture differs from the one built now.

    ``config`` is the saved run's train config and ``expect`` the one asked for now; they tell a
    changed ``train.model`` from a changed registry default.

    Weights of the same shapes load into a model with, say, another metric frequency without an
    error, and the result generates nonsense; the train config alone cannot tell, since a run saved
    before a registry default changed names the same model.
    """
    from rl_gpt.config import ConfigError
    from rl_gpt.model import ModelConfig

    try:
        before = ModelConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{directory.parent} holds a run of a model this version cannot read ({exc}); train again with --restart"
        ) from None
    now = model.config.to_dict()
    changed = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in now if before.get(k) != now[k]]
    if changed:
        asked_otherwise = any(config.get(k) != expect.get(k) for k in ("model", "model_overrides"))
        why = "train.model or model_overrides differ from the run's"
        why = why if asked_otherwise else "a registry default changed since"
        raise ConfigError(
            f"{directory.parent} holds a run of another architecture than train.model builds now "
            f"({', '.join(changed)}; {why}); train again with --restart "
            "(it replaces that run) or use another out= directory"
        )


def _short(value: Any) -> str:
    """A setting as the config would spell it, cut to a readable length."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_train_state(
    directory: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sampler_gen: torch.Generator,
    expect: dict[str, Any],
    world: int = 1,
) -> int:
    """Restore what :func:`save_train_state` wrote; returns the step to continue from.

    ``world``: the processes that go on. ``train.batch`` counts pairs per process, so it may change
    where the pairs per step stay the same (32 on 2 processes going on as 64 on one).
    """
    from rl_gpt.config import ConfigError, TrainConfig, to_dict

    info = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    # A field added since the run was saved counts as its default (the value the run was trained with).
    saved = to_dict(TrainConfig()) | info["config"]
    architecture = _saved_architecture(directory, info) if hasattr(model, "config") else None
    # Where the resolved architecture is on record it decides, not how the config spelled it: a preset
    # that now pins a field to its old default (model_overrides) still continues its runs.
    spelled = {"model", "model_overrides"} if architecture is not None else set()
    processes = (info.get("data") or {}).get("processes")
    same_pairs = processes is not None and saved.get("batch", 0) * processes == expect.get("batch", 0) * world
    allowed = _RESUMABLE_CHANGES | spelled | ({"batch"} if same_pairs else set())
    changed = sorted(k for k in expect if k not in allowed and saved.get(k) != expect[k])
    if changed:
        values = ", ".join(f"train.{k}: {_short(saved.get(k))} -> {_short(expect[k])}" for k in changed)
        # a preset whose default changed since (digits' lr): the run goes on with its own values given
        plain = all(isinstance(saved.get(k), int | float | str | bool) for k in changed)
        keep = " ".join(f"train.{k}={saved[k]}" for k in changed) if plain else ""
        go_on = f"pass {keep} to go on with that run, " if keep else ""
        raise ConfigError(
            f"{directory.parent} holds a run trained with other settings ({values}); "
            f"{go_on}train again with --restart (it replaces that run) or use another out= directory"
        )
    if architecture is not None:
        _check_same_model(directory, architecture, model, saved, expect)
    tensors = load_file(str(directory / "state.safetensors"))
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError:
        # Same config names, other network: a registry model changed since the run was saved.
        raise ConfigError(
            f"{directory.parent} holds a run of another network than train.model={expect.get('model')!r} builds "
            "now (the registry changed since); train again with --restart or use another out= directory"
        ) from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    # How the update is computed is this code's choice, not the run's: a run saved with foreach unset (before
    # session 42) goes on with the foreach kernels, which give the same numbers as the per-tensor ones.
    groups = [saved | {"foreach": now["foreach"]} for saved, now in zip(info["param_groups"], opt.param_groups)]
    opt.load_state_dict({"state": state, "param_groups": groups})
    sampler_gen.set_state(tensors["rng.sampler"])
    return int(info["step"])
