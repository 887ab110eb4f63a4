"""Prompt alignment (G.pt): how well achieved metrics follow prompted ones."""

from __future__ import annotations

import torch

__all__ = [
    "alignment_r2",
    "better_half",
    "count_failed_as",
    "mean_ci95",
    "score_failures",
    "worst_prompt",
]


def worst_prompt(prompts: torch.Tensor, higher_is_better: bool) -> float:
    """The prompt grid's worst end: its lowest return, or its highest loss or error."""
    return float(prompts.min() if higher_is_better else prompts.max())


def count_failed_as(worst: float, achieved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``achieved`` with each failed sample (no finite metric: NaN or ±inf) scored as ``worst``, and the
    failed mask. For one number per network (the one-step mean, recursive prompting): a failure
    achieved nothing."""
    failed = ~torch.isfinite(achieved)
    return torch.where(failed, worst, achieved), failed


def score_failures(prompts: torch.Tensor, achieved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``achieved`` (K, P) or (K, P, S) with each failed sample scored at whichever end of the prompt
    grid lies farther from its prompt, and the failed mask.

    A failure then misses its prompt by the most any sample in range could, so it never counts as a
    hit. Scored as the worst prompt (until session 35) it was a perfect hit at the worst prompt. At the
    best prompt the farther end is the worst one, so the one-step mean still counts a failure as the
    worst prompt.
    """
    failed = ~torch.isfinite(achieved)
    low, high = prompts.min(), prompts.max()
    far = torch.where((prompts - low).abs() >= (high - prompts).abs(), low, high).to(achieved)  # (P,)
    far = far.view(1, -1, *([1] * (achieved.dim() - 2)))
    return torch.where(failed, far, achieved), failed


def better_half(prompts: torch.Tensor, higher_is_better: bool) -> torch.Tensor:
    """Mask (P,) of the prompts in the grid's better half: at or past the middle of its range, towards
    the best end. Inits sit at the worst end, so these are the prompts an update must travel far for;
    R² over all prompts is carried partly by the easy ones near an init's own metric."""
    middle = (prompts.min() + prompts.max()) / 2
    return prompts >= middle if higher_is_better else prompts <= middle


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
