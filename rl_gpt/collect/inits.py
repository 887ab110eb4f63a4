"""Unseen starting networks: fresh draws from the task's own initialiser, as collection starts its runs."""

from __future__ import annotations

import torch

from rl_gpt.config import TaskConfig
from rl_gpt.dataset import CheckpointDataset

__all__ = ["random_inits", "training_init_matches"]


def random_inits(task: TaskConfig, count: int, first_seed: int) -> torch.Tensor:
    """``count`` networks from the task's own initialiser (SB3's for policies) with seeds ``first_seed ...`` (K, D)."""
    if task.kind == "supervised":
        from rl_gpt.supervised import build_classifier, classifier_layout

        layout = classifier_layout(task.network)
        rows = []
        for k in range(count):
            torch.manual_seed(first_seed + k)
            rows.append(layout.flatten(build_classifier(task.network).state_dict()).detach())
        return torch.stack(rows)
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.sb3_policy import actor_layout, read_actor

    rows = []
    for k in range(count):
        model = build_model(task, seed=first_seed + k)
        rows.append(read_actor(model.policy, actor_layout(model.policy, task.algo)))
    return torch.stack(rows)


def training_init_matches(inits: torch.Tensor, ds: CheckpointDataset, runs: list[int]) -> dict[int, int]:
    """``{init k: run}`` for each of ``inits`` (K, D) that is one of ``runs``' own step-0 networks in
    ``ds``, up to float rounding (a folded normalisation rescales a stored init by 1/sqrt(1 + eps)).
    A generator has learnt from those: they are not unseen, whatever their seed."""
    if not len(inits) or not runs:
        return {}
    slices = ds.run_slices()
    run_inits = ds.data["params"][[slices[r].start for r in runs]].float()  # (R, D)
    distance = torch.cdist(inits.double(), run_inits.double())  # (K, R)
    scale = inits.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    nearest, index = (distance / scale).min(1)
    return {k: runs[int(index[k])] for k in range(len(inits)) if nearest[k] < 1e-5}
