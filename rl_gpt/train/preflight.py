"""What training checks around its steps: that the data and a saved run are the config's task, that
the data's metric has a spread to learn, and whether a saved run is already finished."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from rl_gpt.config import ConfigError, ExperimentConfig, TrainConfig
from rl_gpt.dataset import CheckpointDataset, collected_otherwise
from rl_gpt.io import pair_matches
from rl_gpt.train.checkpoint import saved_state
from rl_gpt.train.modelfile import (
    ModelFileError,
    metric_mismatch,
    read_model_info,
    recorded_metric_settings,
    same_task,
)

__all__ = ["check_tasks", "finished", "warn_if_metric_is_constant"]


def warn_if_metric_is_constant(ds: CheckpointDataset, rows: torch.Tensor) -> None:
    """Every training checkpoint scoring alike (MountainCar's -200 before any run learns) leaves the
    prompt nothing to select: say so before the training, not after it as an R² of -8."""
    values = ds.data["metric"][rows].double()
    if len(values) and float(values.max() - values.min()) <= 1e-9 * max(1.0, float(values.abs().max())):
        name = ds.spec.get("metric", {}).get("name", "metric")
        warnings.warn(
            f"every training checkpoint has {name} {float(values[0]):.6g}: with no spread in the data the "
            "generator cannot learn to follow a prompt; collect runs that learn (more timesteps, other "
            "hyperparameters) before training on them",
            stacklevel=3,
        )


def finished(out: Path, tc: TrainConfig, step: int) -> bool:
    """Whether the run saved at ``step`` wrote its model files (from one save) and, if asked for, measured
    alignment.json there."""
    try:
        info = read_model_info(out)
    except ModelFileError:
        return False
    if not pair_matches(out / "model.safetensors", info):
        return False  # a save stopped between its renames: the last checkpoint() writes both again
    if info.get("meta", {}).get("step") != step:
        return False  # stopped between the training state's save and the model's: the model is a save behind
    if not tc.final_probe:
        return True
    try:
        measured = json.loads((out / "alignment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing or cut short
        return False
    # Files written before alignment.json recorded its step were only ever measured at the end of a run.
    return isinstance(measured, dict) and measured.get("step", step) == step


def check_tasks(cfg: ExperimentConfig, ds: CheckpointDataset, out: Path, resume: bool) -> None:
    """Refuse data of another task than the config's, and a run to resume that learnt another task.

    Otherwise the first difference found downstream is reported (a metric range, a train.* field),
    which names a symptom instead of the mix-up."""
    task, spec = cfg.task, ds.spec
    if not same_task(spec, task.name, task.env_id, task.kind):
        raise ConfigError(
            f"{cfg.dataset_dir} holds {spec['task'].get('name')} ({spec.get('env_id')}) checkpoints but the config "
            f"is for {task.name} ({task.env_id}); pass dataset= the folder of a {task.name} collection, or train with "
            f"the config it was collected with ({Path(cfg.dataset_dir) / 'config.yaml'})"
        )
    changed = metric_mismatch(spec, task.metric, task.higher_is_better)
    if changed:  # the model would learn the data's metric while its config.yaml claims another
        raise ConfigError(
            f"{cfg.dataset_dir} holds checkpoints measured by {spec['metric']['name']}, but the config asks for "
            f"another metric ({changed}); pass {recorded_metric_settings(spec)}, or collect the other metric into "
            f"another {cfg.dataset_option} directory"
        )
    if resume and (saved_state(out / "train_state") / "state.json").is_file() and (out / "model.json").is_file():
        saved = read_model_info(out)["spec"]
        if not same_task(saved, task.name, task.env_id, task.kind) or metric_mismatch(
            saved, task.metric, task.higher_is_better
        ):
            raise ConfigError(
                f"{out} holds a generator trained for {saved['task'].get('name')} ({saved.get('env_id')}, "
                f"{saved.get('metric', {}).get('name')}), not {task.name} ({task.metric}); use another out= "
                "directory, or --restart to replace it"
            )
        changed = collected_otherwise(saved, spec)
        if changed:  # another collection's runs would go on training it, under the first one's split and normaliser
            began = read_model_info(out).get("meta", {}).get("dataset")
            keep = f"pass dataset={began} to go on with that run, " if isinstance(began, str) else ""
            if isinstance(began, str) and Path(began).resolve() == Path(cfg.dataset_dir).resolve():
                keep = "its collection is no longer there (collected again in that folder); "  # not the fix
            raise ConfigError(
                f"{out} holds a run started on a dataset collected otherwise than {cfg.dataset_dir} "
                f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); {keep}train again with "
                "--restart (it replaces that run) or use another out= directory"
            )
