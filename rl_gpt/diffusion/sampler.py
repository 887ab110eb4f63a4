"""Few-step samplers over a respaced process: DDIM (Song et al. 2021) and strided ancestral DDPM.

Both visit K of the T training steps (``space_timesteps``: evenly spaced, first 0, last T-1) and
call the model with those original step indices. Each step turns the model's output into an x0
estimate (optionally clipped), then moves to the previous visited step:

- ``ddim``: x_prev = sqrt(ab_prev)·x0 + sqrt(1 - ab_prev - σ²)·eps + σ·z with
  σ = eta·sqrt((1 - ab_prev)/(1 - ab))·sqrt(1 - ab/ab_prev); eta 0 is deterministic.
- ``ddpm``: the posterior q(x_prev | x_t, x0) of the *respaced* process (betas
  1 - ab[t_k]/ab[t_{k-1}], as improved-DDPM's ``SpacedDiffusion``), variance beta-tilde.
  It equals DDIM with eta = 1 in distribution.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch

from .gaussian import GaussianDiffusion, ModelFn
from .schedule import space_timesteps

__all__ = ["SampleMethod", "sample"]

SampleMethod = Literal["ddim", "ddpm"]


@torch.no_grad()
def sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: tuple[int, ...] | torch.Size,
    steps: int = 50,
    method: SampleMethod = "ddim",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: torch.Tensor | None = None,
    clip: float | None = None,
    progress: bool = False,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Draw x0 of ``shape`` (B, D) in ``steps`` model calls; ``generator`` must live on ``device``."""
    if method not in get_args(SampleMethod):
        raise ValueError(f"unknown method {method!r}; choose 'ddim' or 'ddpm'")
    if method == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to method='ddim' only (ddpm is ddim with eta=1)")
    shape = tuple(shape)
    if x_T is None:
        x = torch.randn(shape, generator=generator, device=device)  # (B, D)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T.to(device) if device is not None else x_T

    timesteps = space_timesteps(diffusion.num_steps, steps)  # (K,) original indices
    spaced = diffusion.schedule.respace(timesteps)  # float64 tables over the K visited steps
    order = range(len(timesteps) - 1, -1, -1)
    if progress:
        from rl_gpt.progress import progress_bar

        order = progress_bar(order, desc=f"{method} sampling")

    for k in order:
        t = torch.full((shape[0],), float(timesteps[k]), device=x.device, dtype=x.dtype)  # (B,)
        pred = model_fn(x, t, **model_kwargs)  # (B, D)
        x0 = diffusion.predict_x0(x, t, pred)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        # Scalars in float64 (Python floats): the same for the whole batch at this step.
        ab, ab_prev = float(spaced.alphas_cumprod[k]), float(spaced.alphas_cumprod_prev[k])
        if method == "ddim":
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)  # from the (clipped) x0
            sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        else:
            c1, c2 = float(spaced.posterior_mean_coef1[k]), float(spaced.posterior_mean_coef2[k])
            x = c1 * x0 + c2 * x
            sigma = math.sqrt(float(spaced.posterior_variance[k]))
        if k > 0 and sigma > 0.0:  # the last step (to t = -1) is noiseless: beta-tilde_0 = 0
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x
