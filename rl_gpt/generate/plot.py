"""The figure of a return sweep from one start: each target against what its policies achieved."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch

from rl_gpt.io import atomic_save_figure, shade_outside

__all__ = ["plot_targets"]


def plot_targets(summary: dict[str, Any], achieved: torch.Tensor, path: str | Path) -> Path:
    """Plot ``achieved`` (T, N): N policies per target, against ``summary['target_return']`` (T,) and y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = torch.tensor(summary["target_return"], dtype=torch.float64)
    order = targets.argsort()  # lines join the targets in ascending order, however they were typed
    targets, achieved = targets[order], achieved[order]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(targets, targets, "k--", lw=1, label="y = x")
    for i in range(achieved.shape[1]):
        ax.scatter(targets, achieved[:, i], color="C0", alpha=0.6, label="generated" if i == 0 else None)
    num = achieved.shape[1]
    ax.plot(targets, achieved.nanmean(1), "-", color="C0", lw=1, label=f"mean of {num}" if num > 1 else None)
    bounds = summary.get("training_range")
    if summary.get("extrapolate") and bounds:  # prompts are given as typed: mark where the data ends
        for i, bound in enumerate(bounds):
            ax.axvline(
                bound, color="0.5", ls="-.", lw=1, label="training range (--extrapolate past it)" if not i else None
            )
    else:
        shade_outside(ax, targets.tolist(), bounds)
    start = summary["start_return"]
    ax.axhline(start, color="C3", lw=1, ls=":", label=f"start ({start:.4g})")
    name = summary.get("metric", "return").replace("_", " ")  # test_loss -> test loss, as sweep.png writes it
    episodes = summary.get("episodes") if name == "return" else None
    ax.set_xlabel(f"target {name}")
    ax.set_ylabel(f"achieved {name}" + (f" (mean of {episodes} episodes)" if episodes else ""))
    average, rerank = int(summary.get("average") or 1), int(summary.get("rerank") or 1)
    sampler = f", each the mean of {average} draws" if average > 1 else ""
    sampler += f", best of {rerank} by the ranker" if rerank > 1 else ""
    calibrated = ", prompts calibrated" if summary["calibrated"] else ""
    # Wrapped: a start such as "random init (SB3's initialiser, seed ...)" is wider than the axes.
    title = textwrap.fill(f"{summary['task']} from {summary['start']}{sampler}{calibrated}", width=70)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return atomic_save_figure(fig, path)
