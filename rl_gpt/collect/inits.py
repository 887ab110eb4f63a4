"""Unseen starting networks: fresh draws from the task's own initialiser, as collection starts its runs."""

from __future__ import annotations

import torch

from rl_gpt.config import TaskConfig

__all__ = ["random_inits"]


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
