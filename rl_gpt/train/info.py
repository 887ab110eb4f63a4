"""A human-readable summary of a generator model folder (``rl-gpt info MODEL``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from rl_gpt.io import pair_matches
from rl_gpt.train.calibration import load_calibration
from rl_gpt.train.modelfile import ModelFileError, model_dataset, read_model_info

__all__ = ["describe_model"]


def _parameter_count(path: Path) -> int:
    """Values in a safetensors file, read from its header (no tensor is loaded)."""
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            count = 1
            for size in f.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def _training(meta: dict[str, Any]) -> str:
    step, planned = meta.get("step"), meta.get("config", {}).get("train", {}).get("steps")
    if not isinstance(step, int) or not isinstance(planned, int):
        return f"step {step}"
    if step >= planned:
        return f"step {step} of train.steps={planned} (finished)" + _processes(meta) + _resumed_otherwise(meta)
    unfinished = "stopped early or still training; its `rl-gpt train` resumes it"
    return f"step {step} of train.steps={planned} ({unfinished})" + _processes(meta) + _resumed_otherwise(meta)


def _processes(meta: dict[str, Any]) -> str:
    """How a distributed run stepped, where it did so throughout (``train.batch`` counts pairs per process)."""
    segments = meta.get("segments")
    if not isinstance(segments, list) or len(segments) != 1 or not isinstance(segments[0], dict):
        return ""  # several: said stretch by stretch in _resumed_otherwise
    processes, batch = segments[0].get("processes"), segments[0].get("batch")
    if not isinstance(processes, int) or processes < 2 or not isinstance(batch, int):
        return ""
    return f", on {processes} processes x train.batch={batch} ({processes * batch} pairs per step)"


def _resumed_otherwise(meta: dict[str, Any]) -> str:
    """Where the run was resumed with other settings: its config alone would not train these weights."""
    segments = meta.get("segments")
    if not isinstance(segments, list) or len(segments) < 2 or not all(isinstance(s, dict) for s in segments):
        return ""
    parts = [
        f"steps {s.get('from_step')}+ with train.steps={s.get('steps')} on {s.get('processes')} process(es) "
        f"x train.batch={s.get('batch')}"
        for s in segments
    ]
    return "; resumed with other settings, so its config alone does not retrain it: " + ", then ".join(parts)


def _machine(machine: dict[str, Any]) -> str:
    threads = f"{machine.get('threads')} thread(s)"
    where = machine.get("cuda") or machine.get("cpu")
    return f"{where}, {machine.get('cpu_capability')}, {threads}, torch {machine.get('torch')}"


def _alignment(directory: Path, step: Any) -> str:
    path = directory / "alignment.json"
    if not path.is_file():
        return "none (train.final_probe=false, or training has not finished)"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "unreadable (alignment.json is not valid JSON; train again to measure it)"
    if not isinstance(result, dict):
        return "unreadable (alignment.json is not a JSON object)"
    held = result.get("heldout_inits_r2")
    text = f"R2 {result.get('train_inits_r2', float('nan')):.3f} from training runs' inits, " + (
        f"{held:.3f} from held-out runs' inits" if held is not None else "no held-out run"
    )
    measured = result.get("step")
    return text + (f" (measured at step {measured}: out of date)" if measured not in (None, step) else "")


def _runs_added_since(dataset: str, used: set[int]) -> str:
    """A note when the dataset has grown since the model was trained (a larger ``runs=`` collected into it)."""
    from rl_gpt.dataset import CheckpointDataset, DatasetError

    try:
        now = set(CheckpointDataset(dataset).run_slices())
    except (DatasetError, OSError):
        return ""
    added = len(now - used)
    if not added:
        return ""
    return f"; the dataset now has {len(now)} runs, {added} added since (train again with --restart to use them)"


def describe_model(directory: str | Path) -> str:
    """What a model folder holds: task, training progress, network, data, calibration, measurements."""
    directory = Path(directory)
    info = read_model_info(directory)
    meta, spec, model = info.get("meta", {}), info.get("spec", {}), info.get("model", {})
    metric = spec.get("metric", {})
    direction = "higher" if metric.get("higher_is_better", True) else "lower"
    used = {int(r) for r in (*meta.get("train_runs", []), *meta.get("test_runs", []))}
    runs_text = f"{len(meta.get('train_runs', []))} for training, {len(meta.get('test_runs', []))} held out"
    try:
        dataset = str(model_dataset(directory, info))
    except ModelFileError:
        dataset = f"{meta.get('dataset')} (not found there; pass dataset=PATH to sweep, --dataset to generate)"
    else:
        runs_text += _runs_added_since(dataset, used)
    shown = ("width", "depth", "heads", "tokens", "conditioning")  # the rest is in model.json
    network = ", ".join(f"{k} {model[k]}" for k in shown if k in model)
    weights = directory / "model.safetensors"
    try:
        count = f"{_parameter_count(weights) / 1e6:.2f}M parameters" if weights.is_file() else "no weights file"
    except SafetensorError as exc:
        count = f"unreadable weights file ({exc})"
    else:
        if weights.is_file() and not pair_matches(weights, info):
            count += "; from another save than model.json (run its `rl-gpt train` command again)"
    calibration = load_calibration(directory)
    if calibration is None:
        cal_text = "none (`rl-gpt calibrate` measures one)"
    else:
        fresh = "" if calibration.measured_for(directory) else "; measured for other weights: calibrate again"
        cal_text = f"calibration.json ({calibration.describe()}{fresh})"
    has_ranker = (directory / "ranker.safetensors").is_file()
    ranker = "ranker.safetensors" if has_ranker else "none (fitted by the first ranked sweep)"
    task = spec.get("task", {})
    lines = [
        f"model        {directory.resolve()}",
        f"task         {task.get('name')} ({spec.get('env_id', '')})",
        f"metric       {metric.get('name')} ({direction} is better)",
        f"trained      {_training(meta)}",
        f"network      {model.get('kind')} ({network}); {count}",
        f"predicts     {info.get('target', 'theta')} with prompt dropout {info.get('prompt_dropout')}"
        + ("" if info.get("condition_on_theta", True) else "; prompt-free p(theta' | m')"),
        f"dataset      {dataset}",
        f"runs         {runs_text}",
        f"alignment    {_alignment(directory, meta.get('step'))}",
        f"calibration  {cal_text}",
        f"ranker       {ranker}",
    ]
    machine = meta.get("machine")
    if isinstance(machine, dict):  # models saved before session 37 do not say
        lines.append(f"trained on   {_machine(machine)}")
    plots = [name for name in ("training.png", "calibration.png") if (directory / name).is_file()]
    if plots:
        lines.append(f"plots        {', '.join(plots)}")
    if (directory / "config.yaml").is_file():
        lines.append(f"config       {(directory / 'config.yaml').resolve()} (every setting of the training)")
    return "\n".join(lines)
