"""Benchmark checkpoint collection with 1 and 2 worker processes.

Reports environment steps/s, checkpoints/min, parallel efficiency (speed-up over 1 worker divided
by the worker count) and the share of each run's time spent evaluating its checkpoints.

    python scripts/bench_collect.py --preset cartpole --runs 4 --timesteps 16384
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rl_gpt.collect import collect
from rl_gpt.config import load_config


def bench(preset: str, runs: int, timesteps: int, workers: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            preset,
            [
                f"runs={runs}",
                f"timesteps={timesteps}",
                f"workers={workers}",
                f"out={tmp}",
                "wandb.mode=disabled",
                *overrides,
            ],
            command="collect",
        )
        start = time.perf_counter()
        root = collect(cfg, progress=False)
        wall = time.perf_counter() - start
        meta = json.loads((Path(root) / "runs.json").read_text())
        from rl_gpt.dataset import CheckpointDataset

        n_ckpt = len(CheckpointDataset(root))
    train = sum(m["train_time"] for m in meta.values())
    evaluate = sum(m["eval_time"] for m in meta.values())
    return {
        "workers": workers,
        "wall_s": wall,
        "env_steps_per_s": runs * timesteps / wall,
        "checkpoints_per_min": 60 * n_ckpt / wall,
        "eval_share": evaluate / (train + evaluate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cartpole")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--timesteps", type=int, default=16_384)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    rows = [bench(args.preset, args.runs, args.timesteps, w, args.overrides) for w in (1, 2)]
    base = rows[0]["wall_s"]
    print(f"preset={args.preset} runs={args.runs} timesteps/run={args.timesteps}")
    print("| workers | wall s | env steps/s | checkpoints/min | speed-up | parallel efficiency | eval share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = base / r["wall_s"]
        print(
            f"| {r['workers']} | {r['wall_s']:.1f} | {r['env_steps_per_s']:.0f} | {r['checkpoints_per_min']:.0f} "
            f"| {speedup:.2f}x | {speedup / r['workers']:.0%} | {r['eval_share']:.1%} |"
        )


if __name__ == "__main__":
    main()
