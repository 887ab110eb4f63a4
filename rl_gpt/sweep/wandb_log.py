"""A sweep as a W&B run: the settings to compare sweeps by, the headline numbers as its summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rl_gpt.config import ExperimentConfig

__all__ = ["log_sweep", "one_step_logged", "sweep_summary"]


def one_step_logged(report: dict[str, Any]) -> dict[str, float]:
    """The one-step numbers under names that say what they are: ``one_step_<metric>`` (a classifier's
    test loss and error both), the solved fraction where the task has a threshold, and a classifier
    task's references (the data's best checkpoint, the held-out runs' median end)."""
    one = report["one_step"]
    logged = {f"one_step_{report['metric']['name']}": one["mean_return"]}
    solved = one.get("solved_fraction")
    if isinstance(solved, float) and math.isfinite(solved):  # undefined without a threshold: not logged as NaN
        logged["solved_fraction"] = solved
    classifier = one.get("classifier") or {}
    for metric in ("test_loss", "test_error"):
        if metric in classifier:
            logged[f"one_step_{metric}"] = classifier[metric]
        for reference in ("dataset_best", "heldout_final"):
            value = (classifier.get(reference) or {}).get(metric)
            if value is not None:
                logged[f"{reference}_{metric}"] = value
    return logged


def log_sweep(
    cfg: ExperimentConfig, report: dict[str, Any], out: Path, model_config: dict[str, Any], dataset_dir: Path
) -> None:
    """The sweep as a W&B run: config to compare sweeps by (the model's own settings with its dataset's
    task and collect sections, which weights were swept, the sweep's settings), its headline numbers as
    the summary, and the plot. Grouped with the model's experiment (the folder holding ``model/``), which
    a saved config's ``out`` may no longer name. The report is saved before this: if W&B fails, say so
    and keep the sweep's result."""
    from rl_gpt.wandb_run import log_result, with_dataset_sections

    model = {"path": report["model"], "step": report.get("model_step"), "save_id": report.get("model_save_id")}
    config = with_dataset_sections({k: v for k, v in model_config.items() if k != "wandb"}, dataset_dir)
    config |= {"sweep": report["config"], "model": model}
    experiment = Path(report["model"]).parent.name or None
    images = {"sweep": out / "sweep.png"}
    log_result(
        cfg,
        "sweep",
        out,
        config,
        sweep_summary(report),
        images,
        experiment,
        f"the sweep is saved in {out} (report.json)",
        {"dataset": dataset_dir, "model": report["model"]},
    )


def sweep_summary(report: dict[str, Any]) -> dict[str, float]:
    """A sweep report's headline numbers, flat and finite, as W&B logs them: R² and its interval, the
    one-step result, R² over the better half of the prompts, the baselines' R², novelty, init fidelity and
    the share of failed networks."""
    logged: dict[str, Any] = {"prompt_alignment_r2": report["prompt_alignment_r2"], **one_step_logged(report)}
    low, high = report.get("prompt_alignment_r2_ci95") or (None, None)
    logged |= {"prompt_alignment_r2_ci95_low": low, "prompt_alignment_r2_ci95_high": high}
    logged["prompt_alignment_r2_better_half"] = report.get("prompt_alignment_r2_better_half")  # older reports: none
    logged["failed_fraction"] = report.get("failed_fraction")
    unranked = (report.get("rerank") or {}).get("without_rerank") or {}
    logged["prompt_alignment_r2_unranked"] = unranked.get("prompt_alignment_r2")
    for name, baseline in (report.get("baselines") or {}).items():
        logged[f"{name}/prompt_alignment_r2"] = baseline.get("prompt_alignment_r2")
    for name, value in (report.get("novelty") or {}).items():
        if isinstance(value, dict):  # final_checkpoint_reference: the ratios against the reference before session 35
            logged |= {f"novelty/{name}/{method}": ratio for method, ratio in value.items()}
        else:
            logged[f"novelty/{name}"] = value
    for name, value in (report.get("behavioural_novelty") or {}).items():
        logged[f"behavioural_novelty/{name}"] = (value or {}).get("fraction")
    fidelity = report.get("init_fidelity") or {}
    logged |= {f"init_fidelity/{k}": fidelity.get(k) for k in ("generator", "real_training")}
    recursive = (report.get("recursive") or {}).get("mean_return") or []
    logged |= {f"recursive/step_{i}": v for i, v in enumerate(recursive)}
    return {k: float(v) for k, v in logged.items() if isinstance(v, (int, float)) and math.isfinite(v)}
