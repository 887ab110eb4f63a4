"""The sweep figure: prompted vs achieved (with y = x and the baselines), and one-step returns per init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl_gpt.io import atomic_save_figure, shade_outside

__all__ = ["plot_sweep"]


INIT_SOURCES = {"unseen": "unseen random inits", "train": "training runs' inits", "heldout": "held-out runs' inits"}


def describe_inits(report: dict[str, Any]) -> str:
    """What the sweep's inits were, in words: "unseen random inits" unless ``sweep.init_source`` says otherwise."""
    return INIT_SOURCES[(report.get("config") or {}).get("init_source", "unseen")]


def plot_sweep(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    prompts = torch.tensor(report["prompts"])
    achieved = torch.tensor(report["achieved"])  # (K, P, S)
    per_prompt = achieved.permute(1, 0, 2).reshape(len(prompts), -1)  # (P, K*S)
    mean = per_prompt.nanmean(1)
    std = torch.tensor(
        [row[torch.isfinite(row)].std().item() if torch.isfinite(row).sum() > 1 else 0.0 for row in per_prompt]
    )
    name = report["metric"]["name"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(prompts, prompts, "k--", lw=1, label="y = x")
    ax1.plot(prompts, mean, "o-", color="C0", label=f"generator (R² {report['prompt_alignment_r2']:.2f})")
    ax1.fill_between(prompts, mean - std, mean + std, color="C0", alpha=0.2)
    rerank = report.get("rerank")
    if rerank:  # the same draws without the ranker's choice
        u = rerank["without_rerank"]
        label = f"unranked draws (R² {u['prompt_alignment_r2']:.2f})"
        ax1.plot(prompts, u["achieved_mean"], ".-", color="C0", alpha=0.45, label=label)
    for i, (base, style) in enumerate((("retrieval", "s:"), ("noise", "^:"), ("identity", "x:"))):
        b = report["baselines"][base]
        ax1.plot(
            prompts, b["achieved_mean"], style, color=f"C{i + 1}", label=f"{base} (R² {b['prompt_alignment_r2']:.2f})"
        )
    shade_outside(ax1, prompts.tolist(), (report.get("calibration") or {}).get("clamp_range"))
    ax1.set_xlabel(f"prompted {name}")
    ax1.set_ylabel(f"achieved {name}")
    average = int((report.get("config") or {}).get("average", 1))
    mean_of = f", means of {average} samples" if average > 1 else ""
    mean_of += f", best of {rerank['candidates']} by the ranker" if rerank else ""
    calibrated = ", prompts calibrated" if (report.get("calibration") or {}).get("applied") else ""
    ax1.set_title(f"{report['task']}: {report['inits']} {describe_inits(report)}{mean_of}{calibrated}", fontsize=10)
    ax1.legend(fontsize=8)
    best = prompts.tolist().index(report["one_step"]["prompt"])
    one = achieved[:, best]  # (K, S)
    inits = torch.tensor(report["init_metric"])
    ax2.scatter(torch.arange(len(inits)), inits, marker="x", color="C3", label="init (θ)")
    for s in range(one.shape[1]):
        ax2.scatter(torch.arange(len(inits)), one[:, s], color="C0", alpha=0.7, label="one step" if s == 0 else None)
    ax2.set_xlabel(describe_inits(report)[:-1])  # singular
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # inits are numbered: no 0.5 ticks
    ax2.set_ylabel(name)
    ax2.set_title(f"one generated update at prompt {report['one_step']['prompt']:.4g}", fontsize=10)
    ax2.legend(fontsize=8)
    return atomic_save_figure(fig, path)
