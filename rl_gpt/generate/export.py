"""Exports of generated parameters: SB3 ``.zip`` policies and safetensors state dicts."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rl_gpt.config import TaskConfig
from rl_gpt.io import atomic_save_safetensors, write_then_rename
from rl_gpt.layout import Layout

__all__ = ["export_sb3", "export_safetensors"]


def export_sb3(task: TaskConfig, layout: Layout, flat: torch.Tensor, path: str | Path, seed: int = 0) -> Path:
    """Save ``flat`` (D,), one network in ``layout``, as an SB3 model that ``PPO.load``/``SAC.load`` opens.

    Only the actor is generated; the critic keeps SB3's fresh initialisation (it is not needed to act,
    but continuing training with ``.learn()`` starts from an untrained critic).
    """
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.sb3_policy import actor_layout, load_actor

    if task.kind == "supervised":
        raise ValueError(f"{task.name} is a classifier task: export its networks with export_safetensors")
    _refuse_a_batch(layout, flat)
    with warnings.catch_warnings():  # the rollout buffer's size is irrelevant to a policy that is only saved
        warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
        model = build_model(task, seed=seed)
    if actor_layout(model.policy, task.algo) != layout:
        raise ValueError("the task's SB3 policy does not match the generated parameters' layout")
    load_actor(model.policy, layout, flat)
    # a full disk or a Ctrl-C leaves no half-written zip behind
    return write_then_rename(path, model.save)


def export_safetensors(
    layout: Layout, flat: torch.Tensor, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save ``flat`` (D,), one network in ``layout``, as a named state dict (the network's own parameter names).

    ``metadata`` (strings) goes into the file's header; generated classifiers carry their network and
    data set there (``rl_gpt.supervised.classifier_metadata``), so ``rl-gpt evaluate FILE`` can measure
    them alone."""
    _refuse_a_batch(layout, flat)
    if not torch.isfinite(flat).all():
        raise ValueError("refusing to export non-finite (NaN/inf) parameters")
    state = {k: v.contiguous() for k, v in layout.unflatten(flat.detach().cpu()).items()}
    return atomic_save_safetensors(state, path, metadata)


def _refuse_a_batch(layout: Layout, flat: torch.Tensor) -> None:
    """An export writes one network: a batch (N, D) would be written as one file of stacked tensors
    (safetensors) or fail inside torch's load_state_dict (SB3)."""
    if tuple(flat.shape) != (layout.numel,):
        raise ValueError(
            f"parameters of shape {tuple(flat.shape)}: an export takes one network ({layout.numel},); "
            "export one file per network (e.g. out.params[j, k] of generate_params)"
        )
