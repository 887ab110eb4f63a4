"""The sweep figure: prompted vs achieved (with y = x and the baselines), and one-step returns per init."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch

from rl_gpt.io import atomic_save_figure, shade_outside

__all__ = ["describe_inits", "plot_calibration", "plot_sweep"]


INIT_SOURCES = {"unseen": "unseen random inits", "train": "training runs' inits", "heldout": "held-out runs' inits"}


def describe_inits(report: dict[str, Any]) -> str:
    """What the sweep's inits were, in words: "unseen random inits" unless ``sweep.init_source`` says otherwise."""
    return INIT_SOURCES[(report.get("config") or {}).get("init_source", "unseen")]


def _nan_reduce(rows: torch.Tensor, reduce: Any) -> torch.Tensor:
    """``reduce`` (torch.amin / amax) of each row's finite values (NaN where a row has none)."""
    finite = [r[torch.isfinite(r)] for r in rows]
    return torch.tensor([reduce(f).item() if len(f) else float("nan") for f in finite])


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
    name = report["metric"]["name"].replace("_", " ")  # test_loss -> test loss
    episodes = (report.get("config") or {}).get("episodes") if name == "return" else None
    measured = f"{name} (mean of {episodes} episodes)" if episodes else name
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(prompts, prompts, "k--", lw=1, label="y = x")
    # The curve is over finite samples; R² scores a failed one at the prompt range's far end (the table's line).
    failed = report.get("failed_fraction") or 0.0
    left_out = f"; {failed:.1%} failed, not drawn" if failed else ""
    label = f"generator (R² {report['prompt_alignment_r2']:.3f}{left_out})"
    ax1.plot(prompts, mean, "o-", color="C0", label=label)
    # Held within what was achieved: a band past CartPole's 500 would show returns that never happened.
    low = torch.maximum(mean - std, _nan_reduce(per_prompt, torch.amin))
    high = torch.minimum(mean + std, _nan_reduce(per_prompt, torch.amax))
    ax1.fill_between(prompts, low, high, color="C0", alpha=0.2, label="generator ± 1 std (inits, samples)")
    rerank = report.get("rerank")
    if rerank:  # the same draws without the ranker's choice
        u = rerank["without_rerank"]
        label = f"unranked draws (R² {u['prompt_alignment_r2']:.3f})"
        ax1.plot(prompts, u["achieved_mean"], ".--", color="C7", label=label)  # grey: apart from the generator
    for i, (base, style) in enumerate((("retrieval", "s:"), ("noise", "^:"), ("identity", "x:"))):
        b = report["baselines"][base]
        ax1.plot(
            prompts, b["achieved_mean"], style, color=f"C{i + 1}", label=f"{base} (R² {b['prompt_alignment_r2']:.3f})"
        )
    shade_outside(ax1, prompts.tolist(), (report.get("calibration") or {}).get("clamp_range"))
    ax1.set_xlabel(f"prompted {name}")
    ax1.set_ylabel(f"achieved {measured}")
    average = int((report.get("config") or {}).get("average", 1))
    mean_of = f", each the mean of {average} draws" if average > 1 else ""
    mean_of += f", best of {rerank['candidates']} by the ranker" if rerank else ""
    calibrated = ", prompts calibrated" if (report.get("calibration") or {}).get("applied") else ""
    # Wrapped: with means, ranking and calibration the title is wider than the axes.
    networks = f"{report['inits']} {describe_inits(report)} x {achieved.shape[2]} samples"
    title = f"{report['task']}: {networks}{mean_of}{calibrated}"
    ax1.set_title(textwrap.fill(title, width=60), fontsize=10)
    ax1.legend(fontsize=8)
    best = prompts.tolist().index(report["one_step"]["prompt"])
    one = achieved[:, best]  # (K, S)
    inits = torch.tensor(report["init_metric"])
    ax2.scatter(torch.arange(len(inits)), inits, marker="x", color="C3", label="init (θ)")
    for s in range(one.shape[1]):
        ax2.scatter(torch.arange(len(inits)), one[:, s], color="C0", alpha=0.7, label="one step" if s == 0 else None)
    _classifier_references(ax2, report)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # inits are numbered: no 0.5 ticks
    ax2.set_xlabel(_init_axis(ax2, report))
    higher = report["metric"].get("higher_is_better")  # absent from reports that name no direction
    ax2.set_ylabel(measured if higher is None else f"{measured}, {'higher' if higher else 'lower'} is better")
    step = report["one_step"]
    title = f"one generated update at prompt {step['prompt']:.4g}: mean {step['mean_return']:.4g}"
    if step.get("failed_fraction"):  # no point for them; the mean scores them at the worst prompt, as the table
        title += f"\n{step['failed_fraction']:.0%} failed (no finite metric; counted at the worst prompt, not drawn)"
    ax2.set_title(title, fontsize=10)
    ax2.legend(fontsize=8)
    return atomic_save_figure(fig, path)


def _classifier_references(ax: Any, report: dict[str, Any]) -> None:
    """On a classifier's one-step panel, the two levels the table prints under it: where the held-out runs'
    training ends (their median final checkpoint) and the dataset's best checkpoint. Reports without them
    (RL tasks, older reports) draw neither."""
    clf = report["one_step"].get("classifier") or {}
    key = report["metric"]["name"]
    shown = "{:.1%}" if key == "test_error" else "{:.3f}"  # as the table prints them
    final, runs = (clf.get("heldout_final") or {}).get(key), (clf.get("heldout_runs") or {}).get(key)
    # Grey, not a colour of the left panel's rows: neither is a method of this sweep.
    if final is not None:
        label = f"held-out runs' final checkpoint, median{f' of {runs}' if runs else ''} ({shown.format(final)})"
        ax.axhline(final, color="0.35", ls="--", lw=1, label=label)
    best = (clf.get("dataset_best") or {}).get(key)
    if best is not None:
        label = f"dataset's best checkpoint, chosen on these test images ({shown.format(best)})"
        ax.axhline(best, color="0.35", ls=":", lw=1, label=label)


def _init_axis(ax: Any, report: dict[str, Any]) -> str:
    """The one-step panel's x label, naming the inits as ``report.json``'s ``init_ids`` does: a seed
    offset for unseen inits, the dataset's run ids for the model's own runs (as ticks, where they fit)."""
    kind = describe_inits(report)[:-1]  # singular
    ids = report.get("init_ids") or {}
    seeds, runs = ids.get("seeds"), ids.get("runs")
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{kind}: seed {seeds[0]} + x"
    if runs and len(runs) <= 20:
        ax.set_xticks(range(len(runs)), [str(r) for r in runs])
        return f"{kind} (dataset run)"
    if runs:
        return f"{kind} (x: index into report.json's init_ids)"
    return kind


def plot_calibration(cal: Any, metric: str, path: str | Path) -> Path:
    """The calibration map: the mean achieved metric at each prompt, its monotone fit and y = x.

    ``cal`` is a :class:`~rl_gpt.train.calibration.PromptCalibration`; sweeps and ``generate``
    condition on the prompt whose fitted value is the one asked for.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = metric.replace("_", " ")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(cal.prompts, cal.prompts, "k--", lw=1, label="y = x")
    ax.plot(cal.prompts, cal.achieved, "o", color="C0", label="mean achieved")
    ax.plot(cal.prompts, cal.fitted, "-", color="C1", label="monotone fit (what prompts are mapped through)")
    meta = cal.meta or {}
    episodes = meta.get("episodes") if metric == "return" else None
    ax.set_xlabel(f"prompted {name}")
    ax.set_ylabel(f"achieved {name}" + (f" (mean of {episodes} episodes)" if episodes else ""))
    what = f"{meta.get('inits', '?')} training runs' inits x {meta.get('samples', '?')} samples"
    # The sampler it holds for, worded as sweep.png's title: a sweep sampling otherwise does not use it.
    average, rerank = int(cal.sampler.get("average", 1)), int(cal.sampler.get("rerank", 1))
    what += f", each the mean of {average} draws" if average > 1 else ""
    what += f", best of {rerank} by the ranker" if rerank > 1 else ""
    ax.set_title(textwrap.fill(f"prompt calibration: {what}", width=60), fontsize=10)
    ax.legend(fontsize=8)
    return atomic_save_figure(fig, path)
