"""Benchmark supervised collection: runs trained together (stacked weights) against one at a time.

Collects the same runs of a supervised preset twice through ``rl_gpt.collect``, once with
``collect.batch_runs=1`` (one nn-sized training loop per run, how collection worked before) and once
with the preset's batch, and prints wall time, runs/s and the speed-up. Both include evaluating every
checkpoint on the test split and writing the dataset.

    python scripts/bench_supervised_collect.py --preset digits --runs 128 --workers 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from rl_gpt.collect import collect
from rl_gpt.config import load_config


def bench(preset: str, runs: int, workers: int, batch_runs: int | None, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if batch_runs is None else [f"collect.batch_runs={batch_runs}"]
        cfg = load_config(
            preset,
            [f"runs={runs}", f"workers={workers}", f"out={tmp}", "wandb.mode=disabled", *extra, *overrides],
            command="collect",
        )
        start = time.perf_counter()
        root = collect(cfg, progress=False)
        wall = time.perf_counter() - start
        meta = json.loads((root / "runs.json").read_text())
    largest = max(m.get("runs_in_batch", 1) for m in meta.values())  # batches are also capped by runs / workers
    return {"runs_per_job": largest, "wall_s": round(wall, 2), "runs_per_s": round(runs / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--runs", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    alone = bench(args.preset, args.runs, args.workers, 1, args.overrides)
    together = bench(args.preset, args.runs, args.workers, None, args.overrides)
    result = {
        "preset": args.preset,
        "runs": args.runs,
        "workers": args.workers,
        "one_at_a_time": alone,
        "batched": together,
        "speedup": round(alone["wall_s"] / together["wall_s"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
