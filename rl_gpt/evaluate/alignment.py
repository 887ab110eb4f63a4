"""Prompt alignment (G.pt): how well achieved metrics follow prompted ones."""

from __future__ import annotations

import torch

__all__ = ["alignment_r2", "bootstrap_ci"]


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


def bootstrap_ci(values: torch.Tensor, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap confidence interval of the mean of ``values`` (K,); undefined (NaN, written as null)
    for fewer than two values, which have no spread to resample (a zero-width interval would claim certainty)."""
    values = values.double().flatten()
    if values.numel() < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(values.numel(), (n, values.numel()), generator=g)
    means = values[idx].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))
