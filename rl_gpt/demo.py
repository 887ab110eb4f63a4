"""``rl-gpt demo``: the README's main job, from nothing to a sweep report on the embedded default."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl_gpt.collect import collect
from rl_gpt.config import PRESETS, load_config
from rl_gpt.sweep.calibrate import ensure_calibrated
from rl_gpt.sweep.run import sweep
from rl_gpt.sweep.table import format_table
from rl_gpt.train import train

__all__ = ["default_demo_folder", "run_demo"]


def default_demo_folder(config: str | None = None) -> str:
    """Where ``rl-gpt demo`` writes without ``--out``: ``runs/demo`` for the embedded default,
    ``runs/demo-NAME`` for a preset or a file ``NAME.yaml``. A file named as a preset (a user's
    ``my/cartpole.yaml``) also takes its folder's name, ``runs/demo-my-cartpole``: the preset's demo
    folder holds another experiment, which the file's must not resume."""
    if not config:
        return "runs/demo"
    path = Path(config)
    preset = PRESETS / f"{path.stem}.yaml"
    if path.is_file() and preset.is_file() and preset.resolve() != path.resolve():
        return f"runs/demo-{path.resolve().parent.name or 'file'}-{path.stem}"
    return f"runs/demo-{path.stem}"


def run_demo(
    out: str | Path = "runs/demo",
    config: str | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Collect → train (→ calibrate, with ``train.calibrate``) → sweep into ``out``; each stage resumes.

    ``restart`` trains the generator afresh even if ``out`` holds a saved training state (the dataset is kept).
    """
    cfg = load_config(config, [f"out={out}", *overrides], command="demo")
    out = Path(cfg.out)  # an out= override names the folder for every stage, the sweep's report included
    if progress:  # the only line for the minutes collection takes: an installed rl-gpt writes under the cwd
        where = out if out.is_absolute() else f"{out} (in {Path.cwd()})"
        print(f"demo: writing to {where}: dataset/, model/, report.json, sweep.png; the same command resumes it")
    start = time.time()
    stages = {}
    collect(cfg, progress=progress)
    stages["collect_s"] = time.time() - start
    t = time.time()
    train(cfg, progress=progress, resume=not restart)
    stages["train_s"] = time.time() - t
    if cfg.train.calibrate:
        t = time.time()
        ensure_calibrated(cfg, cfg.model_dir, progress=progress)
        stages["calibrate_s"] = time.time() - t
    t = time.time()
    report = sweep(cfg, cfg.model_dir, out, progress=progress)
    stages["sweep_s"] = time.time() - t
    stages["total_s"] = time.time() - start
    if progress:
        print(format_table(report, stages))
        print(f"\nreport: {Path(out) / 'report.json'}\nplot:   {Path(out) / 'sweep.png'}")
    return report | {"demo_timings": stages}
