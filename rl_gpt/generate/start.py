"""The network ``generate`` starts from: a file, one's own weights, or the sweep's unseen random init."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rl_gpt.config import ConfigError, SweepConfig, TaskConfig
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.layout import Layout
from rl_gpt.train.modelfile import ModelFileError

__all__ = ["init_seed", "load_start", "refuse_a_training_init", "start_tensor"]


def _architecture(layout: dict[str, Any]) -> str:
    """A layout as its layers read, e.g. ``4->16 tanh, 16->2`` (in -> out features, then the activation)."""
    shapes = {p["name"]: p["shape"] for p in layout["params"]}
    parts = []
    for layer in layout.get("layers", []):
        weight = shapes.get(f"{layer['prefix']}.weight")
        if weight is not None and len(weight) >= 2:
            parts.append(f"{weight[1]}->{weight[0]}" + (f" {layer['activation']}" if layer.get("activation") else ""))
    return ", ".join(parts) or f"{layout['numel']} parameters"


def init_seed(info: dict[str, Any], seed: int) -> int:
    """The initialiser's seed of ``generate --seed seed``: the model's sweep's unseen init number
    ``seed`` (``sweep.init_seed + seed``). Collections seed run r with ``collect.seed + r``, so a plain
    ``seed`` would start from a training run's own init, which the generator has learnt."""
    swept = info.get("meta", {}).get("config", {}).get("sweep", {})
    return int(swept.get("init_seed", SweepConfig.init_seed)) + seed


def load_start(info: dict[str, Any], from_zip: str | None, seed: int) -> torch.Tensor:
    """The starting network θ (D,): an SB3 policy file (a classifier's safetensors for supervised
    tasks), or the task's own random initialiser (SB3's for policies) at the unseen init
    :func:`init_seed` picks for ``seed``."""
    from rl_gpt.collect.inits import random_inits
    from rl_gpt.config import task_config

    task = task_config(info["spec"]["task"])
    if from_zip is None:
        return random_inits(task, 1, init_seed(info, seed))[0]
    kind = "a classifier's .safetensors" if task.kind == "supervised" else "an SB3 policy .zip"
    if not Path(from_zip).is_file():
        what = "is a folder" if Path(from_zip).is_dir() else "does not exist"
        raise ModelFileError(f"--from {from_zip} {what}; pass {kind} to start from (or --random-init)")
    if task.kind == "supervised":  # a classifier's safetensors, e.g. one generate wrote (re-prompting it)
        return _classifier_start(task, from_zip)
    return _sb3_start(info, task, from_zip)


def _classifier_start(task: TaskConfig, from_zip: str) -> torch.Tensor:
    from rl_gpt.supervised.files import read_classifier_file

    classifier = read_classifier_file(from_zip, default_network=task.network)
    if classifier.network != task.network:
        raise ModelFileError(
            f"{from_zip} holds a {classifier.network} classifier; the model generates {task.network} classifiers"
        )
    return classifier.params


def _sb3_start(info: dict[str, Any], task: TaskConfig, from_zip: str) -> torch.Tensor:
    from rl_gpt.evaluate import load_sb3_policy
    from rl_gpt.sb3_policy import actor_layout, read_actor

    env_id = task.env_id
    if ":" in env_id:  # the model's own config names a module that registers its env: import it, as collect did
        from rl_gpt.collect.sb3_run import check_env_id

        check_env_id(env_id)
        env_id = env_id.partition(":")[2]
    try:  # read without unpickling: the file may come from anyone
        file, _, policy = load_sb3_policy(from_zip, env_id=env_id)
    except ValueError as err:
        raise ModelFileError(f"{err} (the model generates {task.algo} actors for {task.env_id})") from err
    algo = file.algo
    layout = actor_layout(policy, algo)
    if layout.to_dict() != info["layout"] or algo != task.algo:
        raise ModelFileError(
            f"{from_zip} is a {algo} policy ({_architecture(layout.to_dict())}); the model generates "
            f"{task.algo} actors ({_architecture(info['layout'])}) for {task.env_id}"
        )
    if info["spec"].get("obs_normalisation"):
        warnings.warn(
            f"this model's policies read raw observations (VecNormalize statistics folded into the first "
            f"layer); {from_zip} is taken as one too: fold a VecNormalize-trained policy's statistics in "
            "first (rl_gpt.evaluate.fold_obs_normalisation)",
            stacklevel=3,  # the caller of load_start
        )
    return read_actor(policy, layout)


def start_tensor(start: Any, layout: Layout) -> torch.Tensor:
    """A network's weights given in memory (a tensor, a numpy array) as the flat float start θ (D,)."""
    if isinstance(start, Mapping):
        raise ValueError(
            "start is a state dict: pass one flat network, layout.flatten(state_dict) (the layout of the "
            "model's dataset, CheckpointDataset(...).layout), or a file"
        )
    theta = torch.as_tensor(start).detach().cpu()
    if theta.shape != (layout.numel,):
        raise ValueError(
            f"start has shape {tuple(theta.shape)}; the model generates networks of {layout.numel} parameters: pass "
            "one flat network (layout.flatten(state_dict) gives one from a state dict)"
        )
    if not theta.is_floating_point() or not torch.isfinite(theta).all():
        raise ValueError("start holds non-finite (NaN/inf) or non-float values; pass a network's real weights")
    return theta.float()


def refuse_a_training_init(ds: CheckpointDataset, info: dict[str, Any], theta: torch.Tensor, seed: int) -> None:
    """The random init ``--seed`` picks must not be a training run's own (a dataset collected with
    seeds in the sweep's range): the generator learnt from it, and its result would pass as unseen."""
    from rl_gpt.collect.inits import training_init_matches

    seen = training_init_matches(theta[None], ds, info["meta"]["train_runs"])
    if seen:
        raise ConfigError(
            f"--seed {seed} gives the random init of seed {init_seed(info, seed)}, which is training run {seen[0]}'s "
            "own step-0 network (its dataset was collected with those seeds); pick another --seed, or pass the "
            "network with --from to start from it on purpose"
        )
