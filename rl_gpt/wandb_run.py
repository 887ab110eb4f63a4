"""One way every stage opens a Weights & Biases run (offline unless the config asks otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_gpt.config import ExperimentConfig

__all__ = ["log_series", "start_run"]


def start_run(cfg: ExperimentConfig, group: str, name: str, directory: str | Path, config: Mapping[str, Any]) -> Any:
    """A ``wandb`` run for this stage, or None when ``wandb.mode=disabled`` (wandb is then never imported)."""
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    return wandb.init(
        mode=cfg.wandb.mode,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=group,
        name=name,
        config=dict(config),
        dir=str(directory),
        reinit="create_new",
    )


def log_series(
    cfg: ExperimentConfig,
    run: int,
    series: Mapping[str, list[float]],
    steps: list[int],
    step_name: str,
    meta: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> None:
    """Log one collection run's per-checkpoint values against its step counter, then close the run."""
    from rl_gpt.config import to_dict

    wb = start_run(
        cfg,
        f"collect-{cfg.task.name}",
        f"{cfg.task.name}-run{run:05d}",
        cfg.dataset_dir.parent,
        {"experiment": to_dict(cfg), "run": run, **meta},
    )
    if wb is None:
        return
    for i, step in enumerate(steps):
        wb.log({**{k: v[i] for k, v in series.items()}, step_name: step}, step=step)
    wb.summary.update(dict(summary))
    wb.finish()
