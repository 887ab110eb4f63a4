"""Paired comparison of sweep reports: did a change help, beyond the noise of which inits were drawn?

Two sweeps of the same task over the same unseen inits (same ``init_seed`` and count) and the same
prompts can be compared init by init. The per-init differences cancel most of the init-to-init
spread, which on 16-64 inits is larger than most training changes are worth, so the paired 95 %
interval is far narrower than the two unpaired ones. It covers the sampling of inits only: two
training seeds of the same CartPole config differed by +0.033 [+0.002, +0.064] on 48 inits, so a
change to training needs several seeds on each side. The intervals are Student's t over the per-init
differences (a percentile bootstrap covered too little on 16 inits; see
:func:`rl_gpt.evaluate.alignment.mean_ci95`); each report's own R² interval is the one its sweep
recorded. One init gives no interval at all.

The bias share splits the squared error that R² counts into the part every init shares (the mean
achieved metric per prompt minus the prompt: what ``rl-gpt calibrate`` can remove) and the spread
of inits around that mean (what it cannot).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rl_gpt.evaluate.alignment import alignment_r2, better_half, mean_ci95, score_failures
from rl_gpt.io import nulls_as_nan

__all__ = [
    "ReportError",
    "SweepComparison",
    "bias_share",
    "compare_reports",
    "comparison_json",
    "format_comparison",
    "load_report",
    "measurement_settings",
]


class ReportError(ValueError):
    """A file that is not a sweep report, or reports that cannot be paired; the message says what to do."""


@dataclass
class SweepComparison:
    """One report's numbers, and its paired differences from the first report (None for the first)."""

    path: str
    metric: str
    higher_is_better: bool
    inits: int
    prompts: int
    samples: int
    r2: float
    r2_ci95: tuple[float, float] | None  # report.json's own interval, where it has one
    one_step: float
    bias_share: float
    r2_delta: float | None = None
    r2_delta_ci95: tuple[float, float] | None = None
    one_step_delta: float | None = None
    one_step_delta_ci95: tuple[float, float] | None = None
    measured: dict[str, Any] | None = None  # the sampler and evaluation settings (see measurement_settings)
    # R² over the better half of the prompts (where updates are long), recomputed from `achieved`
    r2_better_half: float = math.nan
    r2_better_half_delta: float | None = None
    r2_better_half_delta_ci95: tuple[float, float] | None = None


def measurement_settings(report: dict[str, Any]) -> dict[str, Any]:
    """How a report's networks were drawn and scored: settings two paired reports may differ in (a
    comparison of ranked against unranked draws is one), which the table then names beside the deltas."""
    sweep = report.get("config") or {}
    calibration = report.get("calibration") or {}
    rerank = report.get("rerank") or {}
    return {
        "calibrated": bool(calibration.get("applied", False)),
        "rerank": int(rerank.get("candidates", 0) or sweep.get("rerank", 1) or 1),
        "average": int(sweep.get("average", 1) or 1),
        "samples": sweep.get("samples"),
        "guidance": sweep.get("guidance"),
        "sampling steps": sweep.get("steps"),
        "episodes": sweep.get("episodes") if report["metric"].get("name") == "return" else None,
        # reports before session 35 scored a failed sample as the worst prompt and rolled the inits out
        # on other start states than the rest (their r2_per_init is kept as they computed it)
        "scoring": (report.get("scoring") or {}).get("failures", "worst prompt (an older rl_gpt's reports)"),
        # the weights swept (reports since session 28): the same model folder trained on between two sweeps
        "model weights": _model_weights(report),
        "_model": report.get("model"),  # not shown: which folder, so that only the same one's saves are compared
    }


def _model_weights(report: dict[str, Any]) -> str:
    save_id = report.get("model_save_id")
    return f"step {report.get('model_step')} (save {save_id[:8]})" if isinstance(save_id, str) else "not recorded"


def _measured_differently(rows: list[SweepComparison]) -> list[str]:
    """The settings the rows differ in. Other models are what a comparison compares; one model folder's
    weights at two saves (a sweep, more training, a sweep) are a setting. Reports written before saves
    were recorded differ in nothing known."""

    def values(key: str) -> set[str]:
        return {str((r.measured or {}).get(key)) for r in rows}

    saves: dict[str, set[str]] = {}
    for r in rows:
        weights = (r.measured or {}).get("model weights")
        if weights not in (None, "not recorded"):
            saves.setdefault(str((r.measured or {}).get("_model")), set()).add(weights)
    keys = [k for k in rows[0].measured or {} if not k.startswith("_") and len(values(k)) > 1]
    return [k for k in keys if k != "model weights" or any(len(v) > 1 for v in saves.values())]


def load_report(path: str | Path) -> dict[str, Any]:
    """A sweep's ``report.json``, given the file or the directory that holds it."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise ReportError(f"{p}: no sweep report here; give a report.json or the --out directory of `rl-gpt sweep`")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        hint = "give a report.json or a sweep --out directory"
        raise ReportError(f"{p} is not a sweep report (not text); {hint}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ReportError(f"{p} is not a sweep report ({e}); rerun `rl-gpt sweep`") from None
    if not isinstance(report, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(report), "a number")
        raise ReportError(f"{p} holds {kind}, not a sweep report's JSON object; rerun `rl-gpt sweep`")
    report = _undefined_as_nan(report)
    missing = {"prompts", "achieved", "r2_per_init", "metric", "config", "task"} - set(report)
    if missing:
        raise ReportError(f"{p} lacks {', '.join(sorted(missing))}: not a sweep report, or one from an older rl_gpt")
    try:
        prompts = torch.tensor(report["prompts"], dtype=torch.float64)
        achieved = torch.tensor(report["achieved"], dtype=torch.float64)
        k = len(report["r2_per_init"])
        bool(report["metric"]["higher_is_better"]), dict(report["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(
            f"{p} is not a well-formed sweep report ({type(e).__name__}: {e}); rerun `rl-gpt sweep`"
        ) from None
    if achieved.dim() != 3 or achieved.shape[:2] != (k, len(prompts)):
        raise ReportError(
            f"{p}: achieved has shape {tuple(achieved.shape)}, expected ({k}, {len(prompts)}, samples); "
            "rerun `rl-gpt sweep`"
        )
    report["_path"] = str(p)
    return report


def _undefined_as_nan(report: dict[str, Any]) -> dict[str, Any]:
    """NaN for the nulls a report's JSON holds where a number was undefined (an R² of flat
    prompts, the solved fraction of a task without a threshold), as the sweep computed them."""
    report = nulls_as_nan(report)
    rows = [report, *(report.get("baselines") or {}).values(), (report.get("rerank") or {}).get("without_rerank")]
    for row in rows:
        if not isinstance(row, dict):
            continue
        if row.get("prompt_alignment_r2", 0) is None:
            row["prompt_alignment_r2"] = math.nan
        one = row.get("one_step")
        clf = one.get("classifier") if isinstance(one, dict) else None
        for block, keys in ((one, ("mean_return", "solved_fraction")), (clf, ("test_loss", "test_error"))):
            for key in keys:
                if isinstance(block, dict) and key in block and block[key] is None:
                    block[key] = math.nan
    return report


def _achieved(report: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (P,) and achieved (K, P, S) with each failed sample scored at the prompt grid's end farther
    from its prompt, as the sweep scores it (at the best prompt: the worst one)."""
    prompts = torch.tensor(report["prompts"], dtype=torch.float64)
    achieved = torch.tensor(report["achieved"], dtype=torch.float64)
    return prompts, score_failures(prompts, achieved)[0]


def bias_share(report: dict[str, Any]) -> float:
    """Share of the mean per-init squared error (achieved − prompt) that the across-init mean explains."""
    prompts, achieved = _achieved(report)
    samples = achieved.shape[2]
    residual = (achieved - prompts[None, :, None]).pow(2).sum((1, 2)).mean()  # per init, averaged
    bias = samples * (achieved.mean((0, 2)) - prompts).pow(2).sum()
    return float(bias / residual) if residual > 0 else float("nan")


def _one_step_per_init(report: dict[str, Any]) -> torch.Tensor:
    """Mean achieved metric at the best prompt, per init (K,); a failed sample counts as the worst prompt.

    Counting failures keeps an init that broke in the pairing (as R² does). Sweeps before session 32
    left them out of their own ``one_step.mean_return``, so for those the two differ where a sample failed.
    """
    prompts, achieved = _achieved(report)
    best = int(prompts.argmax() if report["metric"]["higher_is_better"] else prompts.argmin())
    return achieved[:, best].mean(-1)


def _better_half_per_init(report: dict[str, Any]) -> torch.Tensor:
    """R² per init (K,) over the prompts in the better half of the grid, failures scored as the sweep scores
    them; computed from ``achieved``, so reports written before it was recorded have it too."""
    prompts, achieved = _achieved(report)
    half = better_half(prompts, bool(report["metric"]["higher_is_better"]))
    if int(half.sum()) < 2:
        return torch.full((achieved.shape[0],), math.nan, dtype=torch.float64)
    return alignment_r2(prompts[half], achieved[:, half])


def _pairing_fields(report: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two reports to be compared init by init, by the setting that controls it."""
    sweep = report["config"]
    return {
        "task": report["task"],
        "metric": report["metric"].get("name"),
        "direction": "higher is better" if report["metric"]["higher_is_better"] else "lower is better",
        "sweep.inits": int(sweep.get("inits", len(report["r2_per_init"]))),
        "sweep.init_seed": sweep.get("init_seed"),
        "sweep.init_source": sweep.get("init_source", "unseen"),
        "sweep.prompts": len(report["prompts"]),
        # the grid spans the model's metric range unless task.metric_range fixes it
        "prompt values": [round(float(p), 4) for p in report["prompts"]],
        # the init networks of dataset runs (run 2 of another dataset or split is another network). Not for
        # unseen inits: their seeds pair them, and an initialiser's floats may differ in the last bit across
        # machines. Reports written before the hash was recorded: their source and count above.
        "init networks": report.get("init_sha256") if sweep.get("init_source", "unseen") != "unseen" else None,
    }


def _own_interval(report: dict[str, Any], r2: torch.Tensor) -> tuple[float, float] | None:
    """A report's R² interval, computed here as the deltas' are (Student's t over its inits: reports before
    session 32 recorded a percentile bootstrap's); None for one init."""
    if len(r2) < 2:
        return None
    return mean_ci95(r2)


def compare_reports(paths: list[str | Path]) -> list[SweepComparison]:
    """Each report's R², one-step metric and bias share, paired against the first report's inits.

    Raises ReportError when the reports were not measured on the same task, inits and prompts, since
    differences per init then mean nothing.
    """
    if not paths:
        raise ReportError("give at least one sweep report")
    reports = [load_report(p) for p in paths]
    base = reports[0]
    want = _pairing_fields(base)
    for r in reports[1:]:
        got = _pairing_fields(r)
        for key in want:
            if key == "init networks" and None in (got[key], want[key]):
                continue  # an older report: not on record
            if key == "init networks" and got[key] != want[key]:
                raise ReportError(
                    f"{base['_path']} and {r['_path']} start from other init networks (the same "
                    f"init_ids {base.get('init_ids')} of another dataset or split?), so they cannot be paired; "
                    "sweep both models on one dataset's runs, or on unseen inits"
                )
            if got[key] != want[key]:
                hint = {
                    "task": "task",
                    "metric": "task.metric",
                    "direction": "task.higher_is_better",
                    "prompt values": "task.metric_range",
                }.get(key, key)
                raise ReportError(
                    f"{base['_path']} has {key} {want[key]}, {r['_path']} has {got[key]}: not the same inits "
                    f"and prompts, so they cannot be paired; sweep both with the same {hint}"
                )
    k = len(base["r2_per_init"])
    base_r2 = torch.tensor(base["r2_per_init"], dtype=torch.float64)
    base_one = _one_step_per_init(base)
    base_half = _better_half_per_init(base)
    rows = []
    for r in reports:
        r2 = torch.tensor(r["r2_per_init"], dtype=torch.float64)
        one = _one_step_per_init(r)
        half = _better_half_per_init(r)
        k_, p_, s_ = torch.tensor(r["achieved"]).shape
        metric = r["metric"]
        row = SweepComparison(
            r["_path"],
            str(metric.get("name", "metric")),
            bool(metric["higher_is_better"]),
            k_,
            p_,
            s_,
            float(r2.mean()),
            _own_interval(r, r2),
            float(one.mean()),
            bias_share(r),
            measured=measurement_settings(r),
            r2_better_half=float(half.mean()),
        )
        if r is not base:
            row.r2_delta = float((r2 - base_r2).mean())
            row.one_step_delta = float((one - base_one).nanmean())
            row.r2_better_half_delta = float((half - base_half).mean())
            if k > 1:  # one init has no spread: no interval, rather than a zero-width one
                row.r2_delta_ci95 = mean_ci95(r2 - base_r2)
                row.one_step_delta_ci95 = mean_ci95(one - base_one)
                row.r2_better_half_delta_ci95 = mean_ci95(half - base_half)
        rows.append(row)
    return rows


def _signed(value: float | None, ci: tuple[float, float] | None, digits: int) -> str:
    if value is None or ci is None or math.isnan(value) or any(math.isnan(c) for c in ci):
        return "–"
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _shown(path: str) -> str:
    p = Path(path)
    return str(p.parent) if p.name == "report.json" else str(p)


def format_comparison(rows: list[SweepComparison]) -> str:
    """A plain-text table: one line per report, deltas paired against the first."""
    first = rows[0]
    better = "higher" if first.higher_is_better else "lower"
    lines = [f"{first.metric} ({better} is better), {first.inits} inits x {first.prompts} prompts, paired init by init"]
    digits = 4 if all(abs(r.one_step) < 10 for r in rows) else 1
    names = [_shown(r.path) for r in rows]
    width = max(len("sweep"), *(len(n) for n in names))
    head = f"{'sweep':<{width}}  {'R2':>6} {'[95% CI]':<16} {'ΔR2 paired [95% CI]':<26} {'one-step':>9} "
    head += f"{'Δ one-step paired [95% CI]':<32} {'bias':>5}"
    lines.append(head)
    for name, r in zip(names, rows, strict=True):
        ci = "–" if r.r2_ci95 is None else f"[{r.r2_ci95[0]:.3f}, {r.r2_ci95[1]:.3f}]"
        lines.append(
            f"{name:<{width}}  {r.r2:6.3f} {ci:<16} {_signed(r.r2_delta, r.r2_delta_ci95, 3):<26} "
            f"{r.one_step:9.{digits}f} {_signed(r.one_step_delta, r.one_step_delta_ci95, digits):<32} "
            f"{r.bias_share:5.2f}"
        )
    has_half = any(math.isfinite(r.r2_better_half) for r in rows)
    if has_half:
        lines.append("over the better half of the prompts (where the updates are long):")
        for name, r in zip(names, rows, strict=True):
            delta = _signed(r.r2_better_half_delta, r.r2_better_half_delta_ci95, 3)
            lines.append(f"{name:<{width}}  {r.r2_better_half:6.3f} {'':<16} {delta}")
    differ = _measured_differently(rows)
    if differ:  # a fair comparison only of what differs: e.g. calibrated against not
        lines.append("measured differently: the deltas include these settings")
        for name, r in zip(names, rows, strict=True):
            lines.append(f"  {name:<{width}}  " + ", ".join(f"{k} {(r.measured or {}).get(k)}" for k in differ))
    lines.append("Δ: against the first report, over the same inits (95 % t intervals over inits;")
    lines.append("   they cover which inits were drawn, not the training seed: compare retrained models over seeds)")
    lines.append("one-step: mean at the best prompt, a failed sample counted as the worst prompt")
    if has_half:
        lines.append("better half: R² over the prompts at or past the middle of the range, towards the best end")
    lines.append("bias: share of the squared error that all inits share (what `rl-gpt calibrate` can remove)")
    if first.inits < 16:
        lines.append(f"only {first.inits} inits: the intervals are coarse; sweep more inits to trust them")
    return "\n".join(lines)


def comparison_json(rows: list[SweepComparison]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts, with null for numbers that are not defined (NaN)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return [{k: clean(v) for k, v in asdict(r).items()} for r in rows]
