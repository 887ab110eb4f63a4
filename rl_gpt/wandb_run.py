"""One way every stage opens a Weights & Biases run (offline unless the config asks otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_gpt.config import ExperimentConfig

__all__ = ["CollectionLog", "start_run"]


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


class CollectionLog:
    """One W&B run for a whole collection, fed by the main process as runs finish.

    A run per collection run cost ~1 s of wandb start-up and shutdown each (more than a digits run
    trains) and buried the project in thousands of runs; here each finished run is one logged step
    (its final metric and timings), and the curves of the first ``MAX_CURVES`` runs are one chart.
    """

    MAX_CURVES = 64

    def __init__(self, cfg: ExperimentConfig, directory: str | Path, step_name: str) -> None:
        from rl_gpt.config import to_dict

        name = cfg.task.name
        self.run = start_run(cfg, f"collect-{name}", f"collect-{name}", directory, {"experiment": to_dict(cfg)})
        self.step_name = step_name
        self.finished = 0
        self.curves: dict[str, list[tuple[int, list[int], list[float]]]] = {}

    def add(self, run: int, steps: list[int], series: Mapping[str, list[float]], summary: Mapping[str, Any]) -> None:
        """Log one finished run: ``summary`` as a step, ``series`` (per checkpoint) kept for the chart."""
        if self.run is None:
            return
        self.finished += 1
        self.run.log({"run": run, "runs_finished": self.finished, **summary}, step=self.finished)
        for key, values in series.items():
            kept = self.curves.setdefault(key, [])
            if len(kept) < self.MAX_CURVES:
                kept.append((run, list(steps), list(values)))

    def finish(self) -> None:
        if self.run is None:
            return
        import wandb

        for key, kept in self.curves.items():
            if kept:
                chart = wandb.plot.line_series(
                    xs=[steps for _, steps, _ in kept],
                    ys=[values for _, _, values in kept],
                    keys=[f"run {run}" for run, _, _ in kept],
                    title=f"{key} per checkpoint (first {len(kept)} runs)",
                    xname=self.step_name,
                )
                self.run.log({f"curves/{key}": chart})
        self.run.finish()
        self.run = None
