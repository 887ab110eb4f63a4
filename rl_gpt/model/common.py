"""Input checks shared by every denoiser, so a wrong shape fails with a message instead of deep in a matmul."""

from __future__ import annotations

import torch

__all__ = ["check_inputs"]


def check_inputs(
    numel: int,
    x_t: torch.Tensor,
    theta: torch.Tensor,
    t: torch.Tensor,
    metric: torch.Tensor,
    prompt: torch.Tensor,
    cond_drop: torch.Tensor | None,
) -> None:
    """Refuse inputs that are not x_t, theta (B, numel) and t, metric, prompt, cond_drop (B,)."""
    if theta.dim() != 2 or theta.shape[1] != numel or x_t.shape != theta.shape:
        raise ValueError(
            f"x_t and theta must both be (B, {numel}) for this layout, got {tuple(x_t.shape)} and {tuple(theta.shape)}"
        )
    batch = theta.shape[0]
    for name, s in (("t", t), ("metric", metric), ("prompt", prompt), ("cond_drop", cond_drop)):
        if s is not None and tuple(s.shape) != (batch,):
            raise ValueError(f"{name} must be ({batch},), one scalar per row, got {tuple(s.shape)}")
