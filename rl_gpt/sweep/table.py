"""The text table of a sweep report: the generator against the baselines, with the lines under it.

``rl-gpt sweep`` prints it when a sweep ends, ``rl-gpt info`` for a saved report, and ``rl-gpt demo``
with its stages' wall times.
"""

from __future__ import annotations

import math
from typing import Any

from rl_gpt.sweep.plot import describe_inits

__all__ = ["format_table"]


def _r2(value: float | None) -> str:
    """An R² for the table; blank where undefined or not recorded (reports before session 35)."""
    return "" if value is None or value != value else f"{value:.3f}"


def _value_formats(prompts: list[float], rl: bool) -> tuple[str, str]:
    """How the table writes a metric, and the recursive curve's coarser form: losses and errors to 3
    decimals; returns to 1 (whole numbers in the curve) where prompts span 100 or more, finer for
    tasks whose returns lie near 0 (a short HalfCheetah run's -0.26 and -0.34 are not both -0.3)."""
    if not rl:
        return "{:.3f}", "{:.3f}"
    span = (max(prompts) - min(prompts)) if prompts else 0.0
    decimals = 1 if span >= 100 else 2 if span >= 1 else 3
    return f"{{:.{decimals}f}}", "{:.0f}" if span >= 100 else f"{{:.{decimals}f}}"


def format_table(report: dict[str, Any], stages: dict[str, float] | None = None) -> str:
    """A short text table of the generator against the baselines."""
    rerank = report.get("rerank") or {}
    unranked = [("unranked", rerank["without_rerank"])] if rerank else []  # the same draws without the ranker
    rows = [("generator", report), *unranked] + [(k, v) for k, v in report["baselines"].items()]
    nov = report.get("novelty") or {}
    beh = report.get("behavioural_novelty") or {}
    rl = (report.get("metric") or {}).get("name", "return") == "return"
    value, whole = _value_formats(report["prompts"], rl)

    def solved(fraction: float) -> str:
        return "-" if fraction != fraction else f"{fraction:.0%}"  # NaN: the task has no threshold

    # A task without a reward threshold (classifiers, or reward_threshold=null) has no "solved" column.
    thresholded = any(not math.isnan(r["one_step"]["solved_fraction"]) for _, r in rows)
    average = int((report.get("config") or {}).get("average", 1))
    samples = (report.get("config") or {}).get("samples")  # reports without a config: not said
    lines = [
        f"{report['task']} ({report['env_id']}), {report['inits']} {describe_inits(report)}"
        + (f" x {samples} samples" if samples else "")
        + (f", each generated network the mean of {average} draws" if average > 1 else "")
        + (f", ranked: the ranker's pick of {rerank['candidates']} candidates" if rerank else ""),
        f"{'method':<10} {'R2':>7} {'better half':>11} {'one-step':>9}"
        + (f" {'solved':>7}" if thresholded else "")
        + f" {'novelty':>8} {'behaviour':>9}",
    ]
    for name, r in rows:
        n, b = nov.get(name), (beh.get(name) or {}).get("fraction")
        lines.append(
            f"{name:<10} {r['prompt_alignment_r2']:>7.3f} {_r2(r.get('prompt_alignment_r2_better_half')):>11} "
            f"{value.format(r['one_step']['mean_return']):>9}"
            + (f" {solved(r['one_step']['solved_fraction']):>7}" if thresholded else "")
            + f" {'' if n is None else f'{n:.2f}':>8} {'' if b is None else f'{b:.0%}':>9}"
        )
    failed = [(name, r["failed_fraction"]) for name, r in rows if r.get("failed_fraction")]  # older reports: none
    if failed:
        lines.append(
            "failed (no finite metric; scored at the prompt range's end farther from its prompt): "
            + ", ".join(f"{name} {fraction:.1%}" for name, fraction in failed)
        )
    half = report.get("better_half_prompts")
    if half and math.isfinite(report.get("prompt_alignment_r2_better_half") or math.nan):  # undefined below 2
        lines.append(
            f"better half: R2 over the {half} of {len(report['prompts'])} prompts in the better half of the range, "
            "far from where an init starts"
        )
    metric = report.get("metric") or {}
    higher = metric.get("higher_is_better")
    direction = "" if higher is None else f" ({'higher' if higher else 'lower'} is better)"
    lines.append(
        f"one-step: mean {metric.get('name', 'return').replace('_', ' ')}{direction} at the best prompt, "
        + value.format(report["one_step"]["prompt"])
    )
    first = next((v for v in beh.values() if v), None)
    if first:
        if first.get("compared") == "predictions":
            what = "test inputs where a network predicts another class than"
        else:
            what = "own-rollout states per policy where it acts unlike"
        tol = first.get("tolerance")
        lines.append(
            f"behaviour: share of {first['states']} {what} its nearest training checkpoint"
            + ("" if tol is None else f" (by > {tol:.0%} of the action range)")
        )
    held = (beh.get("heldout") or {}).get("fraction")
    if "final_checkpoint_reference" in nov:  # reports before session 35: the final checkpoints were the reference
        lines.append(
            "novelty: distance to the nearest training checkpoint over the same for held-out checkpoints as good "
            "(1: as new as real training)" + ("" if held is None else f"; their behaviour: {held:.0%}")
        )
    fid = report.get("init_fidelity") or {}
    if fid and None not in fid.values():
        lines.append(f"init fidelity: generator {fid['generator']:.2f}, real training {fid['real_training']:.2f}")
    clf = report["one_step"].get("classifier")
    if clf:
        shown = {"test_loss": "{:.3f}", "test_error": "{:.1%}"}
        best = [fmt.format(clf["dataset_best"][k]) for k, fmt in shown.items() if k in clf["dataset_best"]]
        final = clf.get("heldout_final") or {}  # absent in reports written before it
        ended = [fmt.format(final[k]) for k, fmt in shown.items() if k in final]
        context = ([f"held-out runs end at {', '.join(ended)}, median"] if ended else []) + (
            [f"the dataset's best, chosen on these test images: {', '.join(best)}"] if best else []
        )
        failed = clf.get("failed_fraction") or 0.0  # older reports: not recorded
        lines.append(
            f"one-step classifiers: test loss {clf['test_loss']:.3f}, test error {clf['test_error']:.1%}"
            + (f" of the {1 - failed:.0%} with a finite loss" if failed else "")
            + (f" ({'; '.join(context)})" if context else "")
        )
    rec = report["recursive"]["mean_return"]
    lines.append("recursive prompting: " + " -> ".join(whole.format(v) for v in rec))
    if stages:
        lines.append("wall time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in stages.items()))
    return "\n".join(lines)
