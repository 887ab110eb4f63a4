"""What a large checkpoint dataset costs before training starts, in units of one read of its weights.

Writes a synthetic dataset of the digits classifier's shape (760 weights a row, 51 checkpoints a run)
in the open format, then times the steps that read the whole data before `rl-gpt train` starts
(opening it, the weight check `valid_mask`, the pair sampler's index, the normaliser's statistics)
and the ranker's data fingerprint that `sweep`, `calibrate` and `generate` compute. The sweep's
novelty search and init fidelity are not timed here: their cost is capped, and docs/benchmarks.md
has them measured end to end. The baseline is the cheapest thing any tool must do with the data,
one pass over the params column; each step is reported as a multiple of it, with its peak memory
(each step runs in a fresh process: VmHWM, which counts the mapped file pages it read too).

    python scripts/bench_dataset_scale.py [--rows 100000 1000000] [--dir /tmp/bench-scale]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import torch
from tensordict import TensorDict

from rl_gpt.dataset import CheckpointDataset, DatasetWriter
from rl_gpt.dataset.pairs import PairSampler, split_runs
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.train.loop import fit_normalizer
from rl_gpt.train.ranker import data_fingerprint

LAYOUT = Layout.build(
    {"net.0.weight": (10, 64), "net.0.bias": (10,), "net.2.weight": (10, 10), "net.2.bias": (10,)},
    [LayerSpec("net.0", None, "h0", "tanh"), LayerSpec("net.2", "h0", None)],
)
PER_RUN = 51


def build(root: Path, rows: int) -> None:
    """A consolidated dataset of ``rows`` rows (runs of 51 checkpoints), written a chunk at a time."""
    if root.exists():
        shutil.rmtree(root)
    spec = {"task": {"name": "bench"}, "metric": {"name": "test_loss", "higher_is_better": False}}
    writer = DatasetWriter(root, spec | {"layout": LAYOUT.to_dict(), "policy": {"head": "classifier"}})
    small = {"params": torch.zeros(2, LAYOUT.numel), "metric": torch.ones(2), "step": torch.arange(2)}
    writer.add_run(0, small | {"valid": torch.ones(2, dtype=torch.bool)}, {})
    writer.consolidate()  # spec.json and runs.json as a collection writes them; data/ is replaced below
    tmp = root / ".bench-data"
    out = TensorDict(batch_size=[rows]).memmap_(tmp)
    for key, shape, dtype in (
        ("params", (rows, LAYOUT.numel), torch.float32),
        ("metric", (rows,), torch.float32),
        ("step", (rows,), torch.int64),
        ("run", (rows,), torch.int64),
        ("valid", (rows,), torch.bool),
    ):
        out.make_memmap(key, shape, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    step = 1 << 16
    for i in range(0, rows, step):
        n = min(step, rows - i)
        index = torch.arange(i, i + n)
        out["params"][i : i + n] = torch.randn(n, LAYOUT.numel, generator=g)
        out["metric"][i : i + n] = torch.rand(n, generator=g)
        out["step"][i : i + n] = index % PER_RUN
        out["run"][i : i + n] = index // PER_RUN
        out["valid"][i : i + n] = True
    shutil.rmtree(root / "data")
    tmp.rename(root / "data")


def _one_pass(root: Path) -> None:
    params = CheckpointDataset(root).data["params"]
    step = 1 << 14
    for i in range(0, len(params), step):
        params[i : i + step].sum()


def _open(root: Path) -> None:
    CheckpointDataset(root)


def _valid_mask(root: Path) -> None:
    CheckpointDataset(root).valid_mask()


def _sampler(root: Path) -> None:
    ds = CheckpointDataset(root)
    PairSampler(ds, split_runs(sorted(ds.run_slices()), 0.2)[0])


def _normaliser(root: Path) -> None:
    ds = CheckpointDataset(root)
    fit_normalizer(ds, PairSampler(ds, split_runs(sorted(ds.run_slices()), 0.2)[0]))


def _fingerprint(root: Path) -> None:
    ds = CheckpointDataset(root)
    data_fingerprint(ds, split_runs(sorted(ds.run_slices()), 0.2)[0])


STEPS = {
    "one pass over params (baseline)": _one_pass,
    "open": _open,
    "open + valid_mask": _valid_mask,
    "open + PairSampler": _sampler,
    "open + PairSampler + fit_normalizer": _normaliser,
    "open + data_fingerprint": _fingerprint,
}


def _child(name: str, root: str, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    STEPS[name](Path(root))
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0)
    queue.put((seconds, peak / 1024))


def measure(name: str, root: Path) -> tuple[float, float]:
    """(seconds, peak MB) of one step in a fresh process (spawned: nothing inherited or cached)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, str(root), queue))
    proc.start()
    try:
        result = queue.get(timeout=3600)
    except Exception as exc:  # the child died (out of memory, say) without an answer
        raise SystemExit(f"{name}: the measuring process ended with code {proc.exitcode} and no result") from exc
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dir", default="/tmp/bench-dataset-scale")
    args = parser.parse_args()
    for rows in args.rows:
        root = Path(args.dir) / f"rows{rows}"
        build(root, rows)
        size = (root / "data" / "params.memmap").stat().st_size / 2**20
        print(f"\n{rows:,} rows ({rows // PER_RUN:,} runs), params column {size:,.0f} MB")
        print(f"{'step':<40} {'seconds':>8} {'x one pass':>10} {'peak MB':>8}")
        base = None
        for name in STEPS:
            seconds, peak = measure(name, root)
            base = base or seconds
            print(f"{name:<40} {seconds:>8.2f} {seconds / base:>10.1f} {peak:>8,.0f}")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
