"""Beta schedules, their derived tables, and respacing to fewer steps.

Tables are computed in float64 (products of 1000 numbers near 1 lose digits in float32) and cast
to float32 where they meet data. Follows improved-DDPM (Nichol & Dhariwal 2021, arXiv:2102.09672):
``get_named_beta_schedule``, ``space_timesteps`` and ``SpacedDiffusion``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

__all__ = ["ScheduleName", "NoiseSchedule", "cosine_betas", "linear_betas", "make_betas", "space_timesteps"]

ScheduleName = Literal["linear", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def linear_betas(steps: int) -> torch.Tensor:
    """DDPM's linear betas 1e-4..0.02, rescaled so any ``steps`` matches the 1000-step process."""
    scale = 1000 / steps  # keeps the total noise (and alphas_cumprod[-1]) about the same
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)  # (T,)


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)  # (T,); max_beta avoids a singular last step


def make_betas(name: ScheduleName, steps: int) -> torch.Tensor:
    """Betas of the named schedule (``linear`` or ``cosine``) over ``steps`` steps, float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name == "linear":
        return linear_betas(steps)
    if name == "cosine":
        return cosine_betas(steps)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def space_timesteps(num_steps: int, steps: int) -> torch.Tensor:
    """``steps`` increasing indices into 0..num_steps-1, evenly spaced, first 0 and last num_steps-1."""
    if not 1 <= steps <= num_steps:
        raise ValueError(f"sampling steps must be in 1..{num_steps} (the training steps), got {steps}")
    if steps == 1:
        return torch.tensor([num_steps - 1])  # one step: straight from pure noise to x0
    # Including the last index starts sampling at the noisiest level the model was trained on.
    return torch.linspace(0, num_steps - 1, steps, dtype=torch.float64).round().long()  # (K,)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete forward process and its posterior q(x_{t-1} | x_t, x0); all tables (T,) float64."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor  # alphas_cumprod shifted right, 1.0 first
    posterior_variance: torch.Tensor  # beta-tilde, DDPM eq. 7
    posterior_mean_coef1: torch.Tensor  # multiplies x0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Derive every table from betas (T,)."""
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return cls(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            posterior_variance=betas * (1.0 - ac_prev) / (1.0 - ac),
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        )

    @classmethod
    def named(cls, name: ScheduleName, steps: int = 1000) -> NoiseSchedule:
        """The schedule ``linear`` or ``cosine`` over ``steps`` steps."""
        return cls.from_betas(make_betas(name, steps))

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per step, (T,)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def respace(self, timesteps: torch.Tensor) -> NoiseSchedule:
        """The process that visits only ``timesteps`` (increasing) with the same alphas_cumprod there.

        Its betas are 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}], as improved-DDPM's ``SpacedDiffusion``.
        """
        timesteps = timesteps.long().cpu()
        if timesteps.ndim != 1 or timesteps.numel() == 0 or not bool((timesteps.diff() > 0).all()):
            raise ValueError("timesteps must be a non-empty, strictly increasing 1-D tensor")
        ac = self.alphas_cumprod[timesteps]  # (K,)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return NoiseSchedule.from_betas(1.0 - ac / ac_prev)
