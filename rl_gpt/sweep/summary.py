"""What a sweep reports of achieved metrics: prompt alignment and one-step success per method, a
classifier's test loss and error beside the data's references, and real training's curve for scale."""

from __future__ import annotations

import math
from typing import Any

import torch

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.alignment import alignment_r2, better_half, mean_ci95, score_failures
from rl_gpt.supervised.metric import supervised_metric

__all__ = ["classifier_metrics", "summarize", "training_curve", "training_equivalent"]


def summarize(
    prompts: torch.Tensor, achieved: torch.Tensor, best: int, threshold: float | None, higher: bool
) -> dict[str, Any]:
    """Alignment and one-step success of achieved (K, P, S) metrics.

    A failed sample (no finite metric) is scored at the end of the prompt grid farther from its prompt
    in R² (:func:`~rl_gpt.evaluate.alignment.score_failures`): at the best prompt that is the worst
    one, so the one-step mean counts it as the worst prompt, and as unsolved, as ``rl-gpt compare``
    does; ``failed_fraction`` says how many there were. ``prompt_alignment_r2_better_half`` is R² over
    the prompts in the better half of the grid only (:func:`~rl_gpt.evaluate.alignment.better_half`),
    where the updates are long; ``achieved_mean`` (the plot's curve) is over the finite samples.
    """
    scored, failed = score_failures(prompts, achieved)
    r2 = alignment_r2(prompts, scored)
    half = better_half(prompts, higher)
    half_r2 = alignment_r2(prompts[half], scored[:, half]) if int(half.sum()) >= 2 else torch.full_like(r2, math.nan)
    at_best = achieved[:, best]  # (K, S)
    if threshold is None:
        solved = float("nan")
    else:
        solved = float(((at_best >= threshold) if higher else (at_best <= threshold)).float().mean())
    undefined = [math.nan, math.nan]  # every sample failed: a zero-width interval would claim certainty
    return {
        "prompt_alignment_r2": float(r2.mean()),
        "prompt_alignment_r2_ci95": undefined if failed.all() else list(mean_ci95(r2)),
        "r2_per_init": r2.tolist(),
        "prompt_alignment_r2_better_half": float(half_r2.mean()),
        "prompt_alignment_r2_better_half_ci95": undefined if failed.all() else list(mean_ci95(half_r2)),
        "better_half_prompts": int(half.sum()),
        "one_step": {
            "prompt": float(prompts[best]),
            "mean_return": float(scored[:, best].mean()),
            "solved_fraction": solved,
            "failed_fraction": float(failed[:, best].double().mean()),
        },
        "failed_fraction": float(failed.double().mean()),
        "achieved_mean": achieved.nanmean(dim=(0, 2)).tolist(),
    }


def classifier_metrics(ds: CheckpointDataset, params: torch.Tensor, heldout_runs: list[int]) -> dict[str, Any]:
    """Test loss and error of generated classifiers (B, D), next to the dataset's best checkpoint of each
    and to where real training ends: the median final checkpoint of the held-out runs.

    A model prompts one metric; users judge a classifier by both (a loss-prompted network's error is
    what they deploy it for). The held-out runs started from inits the generator never saw and ran
    the whole recipe, so they are what one generated step competes with.
    """
    measured = supervised_metric(ds.spec, params)
    best, final, ended, rows = {}, {}, {}, ds.valid_mask()
    slices = ds.run_slices()
    for key in ("test_loss", "test_error"):
        if key not in ds.data:
            continue
        values = ds.data[key].float()
        usable = rows & torch.isfinite(values)  # the other field of a valid row may still be NaN
        if usable.any():
            best[key] = float(values[usable].min())
        # A run's end is its last usable checkpoint (a diverged run's last one before it diverged).
        last = [values[s][usable[s]][-1] for r in heldout_runs if usable[(s := slices[r])].any()]
        if last:
            final[key] = float(torch.stack(last).double().quantile(0.5))  # the middle two's mean if even
            ended[key] = len(last)
    failed = ~(torch.isfinite(measured["test_loss"]) & torch.isfinite(measured["test_error"]))
    return {
        # over the classifiers that computed a finite loss; failed_fraction says how many did not
        "test_loss": float(measured["test_loss"].nanmean()),
        "test_error": float(measured["test_error"].nanmean()),
        "failed_fraction": float(failed.double().mean()),
        "dataset_best": best,  # over every valid checkpoint, held-out runs' included
        # median over held-out runs of their last usable checkpoint; empty without held-out runs
        "heldout_final": final,
        "heldout_runs": ended,  # how many held-out runs that median is over, per metric
    }


def training_equivalent(ds: CheckpointDataset, runs: list[int], value: float, higher: bool) -> float | None:
    """Median steps (the dataset's ``step``) its runs needed to first reach ``value`` (None if most never did)."""
    slices, steps = ds.run_slices(), []
    for r in runs:
        s = slices[r]
        m, st = ds.data["metric"][s], ds.data["step"][s]
        hit = torch.nonzero((m >= value) if higher else (m <= value)).flatten()
        steps.append(float(st[hit[0]]) if len(hit) else float("inf"))
    steps.sort()
    med = steps[len(steps) // 2] if steps else float("inf")
    return None if med == float("inf") else med


def training_curve(ds: CheckpointDataset, runs: list[int], slices: dict[int, slice]) -> dict[str, list[float]]:
    """The dataset's mean metric per checkpoint index over ``runs``: real training's learning curve."""
    length = min(slices[r].stop - slices[r].start for r in runs)
    metric = torch.stack([ds.data["metric"][slices[r]][:length] for r in runs]).float()
    steps = ds.data["step"][slices[runs[0]]][:length].float()
    return {"step": steps.tolist(), "mean_return": metric.nanmean(0).tolist()}
