"""Prompt alignment (G.pt): how well achieved metrics follow prompted ones."""

from __future__ import annotations

import torch

__all__ = ["alignment_r2", "mean_ci95"]


def alignment_r2(prompts: torch.Tensor, achieved: torch.Tensor) -> torch.Tensor:
    """R² of ``achieved`` against the line y = prompt, per init.

    ``prompts`` (P,), ``achieved`` (K, P) or (K, P, S) (S samples per prompt, flattened into the fit).
    Returns (K,): 1 − Σ(achieved − prompt)² / Σ(prompt − mean(prompt))², the coefficient of
    determination with the prompts as ground truth (G.pt: ``r2_score(prompts, achieved)``). It is 1
    for perfect alignment and negative when the achieved values are further from the prompts than
    the prompts' own mean is; a generator that ignores its prompt cannot score above 0.
    """
    if achieved.dim() == 2:
        achieved = achieved.unsqueeze(-1)
    k, p, s = achieved.shape
    target = prompts.to(achieved).view(1, p, 1).expand(k, p, s).reshape(k, -1).double()
    y = achieved.reshape(k, -1).double()
    ss_res = (y - target).pow(2).sum(1)
    ss_tot = (target - target.mean(1, keepdim=True)).pow(2).sum(1).clamp_min(1e-12)
    return 1 - ss_res / ss_tot


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """95 % confidence interval of the mean of ``values`` (K,), Student's t over the finite ones.

    Inits are the independent units, and sweeps have 16-64 of them. At 16 a percentile bootstrap
    covered the true mean ~90 % of the time in simulation, the t interval ~94 % (at 48, 91 % and 93 %:
    ``scripts/interval_coverage.py``); where a few inits fail badly no method reaches 95 % on 16
    (docs/results.md, session 32).
    Undefined (NaN, written as null) for fewer than two values, which have no spread (a zero-width
    interval would claim certainty).
    """
    values = values.double().flatten()
    values = values[torch.isfinite(values)]
    k = values.numel()
    if k < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean = float(values.mean())
    half = float(t.ppf(0.975, k - 1)) * float(values.std()) / k**0.5  # torch's std: the k - 1 estimate
    return mean - half, mean + half
