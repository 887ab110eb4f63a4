"""Self-describing model files: ``model.safetensors`` (EMA weights) + ``model.json``.

``model.json`` carries the model config, the diffusion settings, the target and conditioning mode
(``condition_on_theta``; absent = True), the normaliser, the dataset's layout and spec, and training
metadata, so ``generate`` needs nothing but the directory. No pickle anywhere: weights are
safetensors, everything else JSON.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from rl_gpt.config import TaskConfig
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.io import atomic_save_pair, pair_matches, read_format_json
from rl_gpt.layout import Layout
from rl_gpt.model import ModelConfig, build_model
from rl_gpt.supervised.data_root import use_data_root
from rl_gpt.train.generator import ParameterGenerator

__all__ = [
    "ModelFileError",
    "check_compatible",
    "check_config_task",
    "load_generator",
    "metric_mismatch",
    "model_dataset",
    "open_dataset",
    "read_model_info",
    "recorded_metric_settings",
    "same_task",
    "save_model",
]

FORMAT = {"name": "rl_gpt.model", "version": 1}
# Training always uses 1,000 (train/loop.py diffusion_args); a model file may hold any count up to this.
_MOST_DIFFUSION_STEPS = 100_000


class ModelFileError(ValueError):
    """A model file that is missing, damaged or meant for another task."""


def save_model(
    directory: str | Path,
    model: nn.Module,
    model_config: ModelConfig,
    gen: ParameterGenerator,
    spec: dict[str, Any],
    diffusion_args: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write weights then JSON, each atomically (the JSON last: its presence marks a complete file) and
    tied by a save id (:func:`~rl_gpt.io.atomic_save_pair`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save_pair(
        state,
        directory / "model.safetensors",
        directory / "model.json",
        {
            "format": FORMAT,
            "model": model_config.to_dict(),
            "diffusion": diffusion_args,
            "target": gen.target,
            "prompt_dropout": gen.prompt_dropout,
            "condition_on_theta": gen.condition_on_theta,
            "normalizer": gen.normalizer.to_dict(),
            "layout": gen.layout.to_dict(),
            "spec": spec,
            "meta": meta,
        },
    )
    return directory


def read_model_info(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "model.json"
    if not path.is_file():
        inner = Path(directory) / "model"
        if (inner / "model.json").is_file():  # an experiment folder given for its model
            raise ModelFileError(f"{directory} is an experiment folder; its model is {inner}")
        raise ModelFileError(f"{directory} holds no model (no model.json); train one with `rl-gpt train`")
    fix = "restore it, or train again with --restart"
    return read_format_json(path, FORMAT["name"], ModelFileError, "an rl_gpt model file", fix)


def model_dataset(
    directory: str | Path, info: dict[str, Any], given: str | Path | None = None, fallback: str | Path | None = None
) -> Path:
    """The dataset to use with a model: ``given`` (one the user named on the command line) where it
    holds one and has the model's training runs (the caller checks task and layout with
    :func:`check_compatible`), else the dataset at the recorded path relative to the model directory
    (in a run folder that was copied or moved whole, the copy's own), else the recorded absolute
    path, else ``fallback`` (where the config's ``out`` keeps its dataset)."""
    meta = info.get("meta", {})
    if given and (Path(given) / "spec.json").is_file():
        _check_has_runs(Path(given), meta.get("train_runs", []) + meta.get("test_runs", []))
        return Path(given)
    recorded = meta.get("dataset")
    relative = meta.get("dataset_relative") and Path(directory) / meta["dataset_relative"]
    if relative and (relative / "spec.json").is_file():  # named as recorded where it is that same folder
        same = recorded and (Path(recorded) / "spec.json").is_file() and os.path.samefile(relative, recorded)
        relative = Path(recorded) if same else relative.resolve()
    for path in [relative, recorded, fallback]:
        if path and (Path(path) / "spec.json").is_file():
            if given:
                warnings.warn(f"{given} holds no dataset (no spec.json); using the model's own at {path}", stacklevel=2)
            return Path(path)
    raise ModelFileError(
        f"the dataset of model {directory} is not at {meta.get('dataset')}"
        + (f" and {given} holds none" if given else "")
        + "; pass its location (sweep: dataset=PATH, generate: --dataset PATH)"
    )


def _check_has_runs(dataset: Path, runs: list[int]) -> None:
    """Refuse a dataset that lacks runs the model was split over: its ids would index other data."""
    missing = sorted(set(runs) - set(CheckpointDataset(dataset).run_slices()))
    if missing:
        raise ModelFileError(
            f"{dataset} lacks runs {missing[:5]}{' ...' if len(missing) > 5 else ''} that the model was trained "
            "or held out on; pass the dataset the model was trained on"
        )


def same_task(spec: dict[str, Any], task_name: str | None, env_id: str | None, kind: str = "rl") -> bool:
    """Whether a dataset or model ``spec`` is of the named task. A supervised task's env id is its
    data set's name, recorded from the network, so only RL tasks compare it."""
    return spec["task"].get("name") == task_name and (kind != "rl" or spec.get("env_id") == env_id)


def metric_mismatch(spec: dict[str, Any], metric: str | None, higher_is_better: bool | None) -> str | None:
    """How a config's ``task.metric`` / ``task.higher_is_better`` differ from what ``spec``'s data
    measure (e.g. ``task.metric: 'test_loss' -> 'test_error'``), or None where they agree, where the
    spec does not say, or where a value is not given (None)."""
    recorded = spec.get("metric") or {}
    changes = [
        f"{key}: {recorded[field]!r} -> {mine!r}"
        for key, field, mine in (
            ("task.metric", "name", metric),
            ("task.higher_is_better", "higher_is_better", higher_is_better),
        )
        if mine is not None and recorded.get(field) is not None and recorded[field] != mine
    ]
    return ", ".join(changes) or None


def recorded_metric_settings(spec: dict[str, Any]) -> str:
    """The overrides that name ``spec``'s metric, e.g. ``task.metric=test_loss task.higher_is_better=false``."""
    recorded = spec.get("metric") or {}
    parts = [f"task.metric={recorded['name']}"] if "name" in recorded else []
    if "higher_is_better" in recorded:
        parts.append(f"task.higher_is_better={str(recorded['higher_is_better']).lower()}")
    return " ".join(parts)


def check_config_task(
    info: dict[str, Any],
    task_name: str,
    env_id: str,
    kind: str = "rl",
    metric: str | None = None,
    higher_is_better: bool | None = None,
) -> None:
    """Refuse a config written for another task than the model's: its sampler and prompt settings
    (guidance, averaging, metric range) would be applied to the wrong generator without a word.
    A supervised task's env id is its data set's name, recorded from the network, so only RL tasks
    compare it."""
    mine = info["spec"]
    name = mine["task"].get("name")
    if not same_task(mine, task_name, env_id, kind):
        from rl_gpt.config.presets import PRESETS

        # a task named on the command line (task.name=hopper) has no preset of that name to suggest
        preset = f" or its task's preset, `{name}`" if (PRESETS / f"{name}.yaml").is_file() else ""
        raise ModelFileError(
            f"the model was trained for {name} ({mine.get('env_id')}) but the config is for {task_name} ({env_id}); "
            f"pass the config it was trained with (its config.yaml is used when no config is given){preset}"
        )
    changed = metric_mismatch(mine, metric, higher_is_better)
    if changed:  # prompts and metric_range would be read in another metric than the model's
        raise ModelFileError(
            f"the model was trained on {mine['metric']['name']} prompts, but the config asks for another metric "
            f"({changed}); pass {recorded_metric_settings(mine)}"
        )


def check_compatible(info: dict[str, Any], spec: dict[str, Any]) -> None:
    """Refuse a model trained for another task or parameter layout, in one line."""
    mine, theirs = info["spec"], spec
    if mine.get("env_id") != theirs.get("env_id") or mine["task"].get("name") != theirs["task"].get("name"):
        raise ModelFileError(
            f"model was trained for {mine['task'].get('name')} ({mine.get('env_id')}), not "
            f"{theirs['task'].get('name')} ({theirs.get('env_id')}); use a model trained on this task"
        )
    changed = metric_mismatch(
        theirs, (mine.get("metric") or {}).get("name"), (mine.get("metric") or {}).get("higher_is_better")
    )
    if changed:  # the model's prompts are in one metric, the dataset would score its outputs in another
        raise ModelFileError(
            f"model was trained on {mine['metric']['name']} prompts, but the dataset measures "
            f"{theirs['metric']['name']} ({changed}); use a dataset of the model's metric"
        )
    if mine["layout"] != theirs["layout"]:
        raise ModelFileError(
            f"model's parameter layout ({mine['layout']['numel']} parameters) does not match this network's "
            f"({theirs['layout']['numel']}); the policy architecture differs from the training data's"
        )


def open_dataset(
    directory: str | Path,
    info: dict[str, Any],
    given: str | Path | None = None,
    fallback: str | Path | None = None,
    task: TaskConfig | None = None,
    data_root: str | Path | None = None,
) -> CheckpointDataset:
    """The dataset to use with the model in ``directory`` (see :func:`model_dataset`), checked to fit
    the model and, where ``task`` is given, the config's task too. A supervised dataset's data files are
    looked for in ``data_root`` (one the command names), else where they were collected."""
    ds = CheckpointDataset(model_dataset(directory, info, given, fallback))
    check_compatible(info, ds.spec)
    if task is not None:
        check_config_task(info, task.name, task.env_id, task.kind, task.metric, task.higher_is_better)
    use_data_root(ds.spec, data_root)
    return ds


def _warn_if_unfinished(directory: str | Path, info: dict[str, Any]) -> None:
    """A model saved before its last step (stopped, or still training) is usable but says so."""
    meta = info.get("meta", {})
    planned = meta.get("config", {}).get("train", {}).get("steps")
    step = meta.get("step")
    if isinstance(planned, int) and isinstance(step, int) and step < planned:
        warnings.warn(
            f"{directory} holds a generator saved at step {step} of train.steps={planned} (stopped early, or still "
            "training); run its `rl-gpt train` command again to finish it",
            stacklevel=3,
        )


def _check_sizes(weights: Path, config: ModelConfig, layout: Layout) -> None:
    """Refuse a model.json that asks for another network than its weights file holds before building it:
    model.json's sizes (width, depth, the layout) decide how much memory the build takes, so a damaged or
    hostile file could ask for hundreds of gigabytes. Compares the file's header with a build on the meta
    device (shapes without storage)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as exc:  # truncated, or not a safetensors file at all (nothing is unpickled)
        raise ModelFileError(f"{weights} is not a readable safetensors file ({exc}); restore it or retrain") from None
    stored = sum(math.prod(shape) for shape in have.values())
    if layout.numel > stored:  # every denoiser holds at least one weight per generated parameter
        raise ModelFileError(
            f"{weights} holds {stored} values, too few for model.json's layout of {layout.numel} parameters; "
            "restore the folder or retrain"
        )
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(config, layout).state_dict().items()}
    if want != have:
        wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        raise ModelFileError(
            f"{weights} does not fit its model.json ({len(wrong)} tensor(s) differ, first {wrong[0]}: "
            f"{have.get(wrong[0])} in the file, {want.get(wrong[0])} for model.json); restore the folder or retrain"
        )


def load_generator(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ParameterGenerator, dict]:
    """Rebuild the generator from a model directory alone: the :class:`ParameterGenerator` (its raw sampler
    and loss) and the model's ``info``, ``model.json`` as read: ``layout`` and ``spec`` (the dataset's, as
    the model trained on it), ``model`` (the denoiser's config), ``diffusion``, ``normalizer`` and
    ``meta`` (the resolved ``config``, the ``step``, ``train_runs``/``test_runs`` and the ``dataset``)."""
    info = read_model_info(directory)
    layout = Layout.from_dict(info["layout"])
    config = ModelConfig.from_dict(info["model"])
    weights = Path(directory) / "model.safetensors"
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing; the model directory is incomplete")
    steps = info["diffusion"].get("steps", 1000) if isinstance(info["diffusion"], dict) else None
    if not isinstance(steps, int) or not 1 <= steps <= _MOST_DIFFUSION_STEPS:  # its schedule is built as a list
        raise ModelFileError(
            f"{Path(directory) / 'model.json'}: diffusion steps {steps!r} is not 1..{_MOST_DIFFUSION_STEPS}; "
            "restore the folder or retrain"
        )
    _check_sizes(weights, config, layout)
    model = build_model(config, layout)
    try:
        state = load_file(str(weights))
    except SafetensorError as exc:  # truncated, or not a safetensors file at all (nothing is unpickled)
        raise ModelFileError(f"{weights} is not a readable safetensors file ({exc}); restore it or retrain") from None
    if not pair_matches(weights, info):
        raise ModelFileError(
            f"{weights} and its model.json come from different saves (a save stopped between the two, or a "
            "training saving right now: then try again); run the same `rl-gpt train` command again to save them "
            "together"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # torch's first line only names the class; the second says which tensor differs
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc).splitlines()[0]
        raise ModelFileError(f"{weights} does not fit its model.json ({detail[:200]})") from None
    if any(not torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ModelFileError(f"{weights} contains NaN/inf weights; retrain or use an earlier checkpoint")
    _warn_if_unfinished(directory, info)
    diffusion = GaussianDiffusion(**info["diffusion"])
    gen = ParameterGenerator(
        model,
        diffusion,
        Normalizer.from_dict(info["normalizer"]),
        layout,
        info["target"],
        info.get("prompt_dropout", 0.1),
        info.get("condition_on_theta", True),  # files written before the flag existed were all θ-conditioned
    )
    return gen.to(device), info
