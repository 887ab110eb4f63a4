"""A learned predictor of a network's metric from what it does, used to rank generated candidates.

Samples drawn for the same init and prompt differ: on the CartPole ``full`` model half of the
squared prompt error came from sample-to-sample spread (docs/results.md). Drawing N candidates per
requested network and keeping the one whose *predicted* metric is closest to the prompt removes
much of it. The predictor reads the network's outputs on fixed probe inputs (the function-space
loss's probes: states the training runs' policies visit, or training images), so hidden-unit
permutations cannot change its answer. It is fitted on the training runs' checkpoints and the
metrics the dataset recorded for them: ranking never runs the environment, never sees the
held-out runs or the sweep's inits, and reads no test image. (A classifier's recorded metric is its
test-split loss, so the targets themselves come from the test split: docs/architecture.md.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rl_gpt.config import ConfigError
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.policy import PolicySpec
from rl_gpt.io import atomic_save_pair, pair_matches
from rl_gpt.layout import Layout
from rl_gpt.train.function_loss import FunctionProbe, function_probe
from rl_gpt.train.modelfile import ModelFileError

__all__ = [
    "RANKER_FILE",
    "MetricRanker",
    "data_fingerprint",
    "fit_ranker",
    "load_ranker",
    "ranker_cache_dir",
    "ranker_for",
]

RANKER_FILE = "ranker.safetensors"
_META_FILE = "ranker.json"
_ELEMENTS = 1 << 26  # activations held at once while probing (the batched classifier evaluation's budget, ×2)


class MetricRanker(nn.Module):
    """``predict(params (B, D)) -> (B,)`` metric of flat networks; ``choose`` keeps the candidate nearest a target."""

    def __init__(self, probe: FunctionProbe, low: float, high: float, hidden: int = 256) -> None:
        super().__init__()
        self.probe, self.low, self.high, self.hidden = probe, float(low), float(high), hidden
        outputs = probe(torch.zeros(1, probe.layout.numel)).shape[-1]
        self.net = nn.Sequential(
            nn.Linear(len(probe.inputs) * outputs, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )
        self.fit_info: dict[str, Any] = {}

    def features(self, params: torch.Tensor) -> torch.Tensor:
        """(B, N·K): each network's outputs on the N probe inputs, flattened."""
        with torch.no_grad():
            return torch.cat([self.probe(chunk.float()).flatten(1) for chunk in params.split(self._chunk())])

    def _chunk(self) -> int:
        """Networks probed at once, so that their activations stay within a fixed memory budget."""
        probe = self.probe
        if probe.kind == "classifier":
            from rl_gpt.supervised.evaluate import activation_numel

            widest = activation_numel(probe.network)
        else:
            widest = max(spec.shape[0] for spec in (probe.layout[n] for n in probe.layout.names))
        return max(1, min(4096, _ELEMENTS // (len(probe.inputs) * widest)))

    def _scaled(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)

    @torch.no_grad()
    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """(B,) predicted metric of raw flat networks; NaN for a network with a non-finite weight."""
        finite = torch.isfinite(params).all(-1)
        safe = torch.where(finite[:, None], params, torch.zeros_like(params))
        pred = torch.cat([self._scaled(self.features(chunk)) for chunk in safe.split(self._chunk())])
        pred = pred.double() * (self.high - self.low) + self.low
        return torch.where(finite, pred, torch.full_like(pred, float("nan")))

    def choose(self, candidates: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep, for each target, the candidate whose predicted metric is nearest it.

        ``candidates`` (..., N, D) and ``targets`` (...): returns the chosen networks (..., D) and
        their predicted metrics (...), as the regression gives them: it can overshoot the training rows'
        range (a CartPole return of -2.7), which :meth:`within_range` holds in for display. A candidate
        with a non-finite weight is chosen only if all are.
        """
        *batch, n, d = candidates.shape
        pred = self.predict(candidates.reshape(-1, d)).reshape(*batch, n)
        gap = (pred - targets.to(pred.dtype).unsqueeze(-1)).abs().nan_to_num(float("inf"))
        pick = gap.argmin(-1)
        chosen = candidates.gather(-2, pick[..., None, None].expand(*batch, 1, d)).squeeze(-2)
        return chosen, pred.gather(-1, pick[..., None]).squeeze(-1)

    def within_range(self, predicted: torch.Tensor) -> torch.Tensor:
        """Predictions held within the training rows' range, as a user reads them: a return of -2.7 is
        no network's. The raw values stay what the ranker's error is measured on."""
        return predicted.clamp(self.low, self.high)

    def save(self, model_dir: str | Path) -> Path:
        """Write ``ranker.safetensors`` (weights and probe inputs) and ``ranker.json`` into ``model_dir``."""
        model_dir = Path(model_dir)
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors["probe_inputs"] = self.probe.inputs.detach().float().contiguous()
        path = model_dir / RANKER_FILE
        probe = self.probe
        meta = {
            "kind": probe.kind,
            "policy": None if probe.spec is None else probe.spec.to_dict(),
            "network": probe.network,
            "low": self.low,
            "high": self.high,
            "hidden": self.hidden,
            "fit": self.fit_info,
        }
        atomic_save_pair(tensors, path, model_dir / _META_FILE, meta)
        return path


def load_ranker(model_dir: str | Path, layout: Layout) -> MetricRanker | None:
    """The ranker stored in ``model_dir``, or None where it has none."""
    model_dir = Path(model_dir)
    path, meta_path = model_dir / RANKER_FILE, model_dir / _META_FILE
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(path))
        if not pair_matches(path, meta):  # a save stopped between its renames: fitted again, as if missing
            warnings.warn(f"{path} and {meta_path} come from different saves; the ranker is fitted again", stacklevel=2)
            return None
        spec = None if meta["policy"] is None else PolicySpec.from_dict(meta["policy"])
        probe = FunctionProbe(layout, tensors.pop("probe_inputs"), meta["kind"], spec=spec, network=meta["network"])
        hidden, first = int(meta["hidden"]), tensors.get("net.0.weight")
        if first is None or first.shape[0] != hidden:  # checked before building: the width sets the memory
            width = None if first is None else first.shape[0]
            raise ValueError(f"ranker.json's hidden {hidden} is not the weights' {width}")
        ranker = MetricRanker(probe, meta["low"], meta["high"], hidden)
        ranker.net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
        ranker.fit_info = dict(meta.get("fit", {}))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        hint = f"delete {path} and {meta_path} to fit it again"
        raise ModelFileError(f"{path} is not a readable ranker ({err}); {hint}") from err
    return ranker.eval()


def _rows(ds: CheckpointDataset, runs: list[int]) -> torch.Tensor:
    """Rows of ``runs`` with a valid network and a finite metric (none for no runs: a model may hold none out)."""
    slices = ds.run_slices()
    rows = torch.cat(
        [torch.arange(slices[r].start, slices[r].stop) for r in runs] or [torch.zeros(0, dtype=torch.long)]
    )
    return rows[ds.valid_mask()[rows] & torch.isfinite(ds.data["metric"][rows].float())]


def data_fingerprint(ds: CheckpointDataset, train_runs: list[int]) -> str:
    """SHA-256 of what a ranker learns from: the layout, and the training runs' rows, weights and metrics.

    A dataset collected again, or another one passed with ``--dataset``, gets a ranker of its own.
    """
    rows = _rows(ds, train_runs)
    digest = hashlib.sha256(json.dumps(ds.layout.to_dict(), sort_keys=True).encode())
    step = max(1, 2**22 // max(1, ds.layout.numel))  # the same bytes as one update, ~16 MB at a time
    for column in ("params", "metric"):
        for i in range(0, len(rows), step):
            digest.update(ds.data[column][rows[i : i + step]].float().contiguous().numpy())
    return digest.hexdigest()


def fit_ranker(
    ds: CheckpointDataset,
    train_runs: list[int],
    test_runs: list[int],
    steps: int = 4_000,
    seed: int = 0,
    probes: int = 256,
    max_rows: int = 50_000,
) -> MetricRanker:
    """Fit a ranker on the checkpoints of ``train_runs``; ``test_runs`` only measure its error.

    An MLP reads the outputs on ``probes`` inputs and regresses the recorded metric (scaled to the
    training rows' range) with AdamW and a cosine schedule, on at most ``max_rows`` checkpoints (a
    random subset of larger datasets, whose features would not fit in memory). Takes ~20 s for
    CartPole's 3,300 rows on one CPU thread.
    """
    start = time.time()
    rows, held = _rows(ds, train_runs), _rows(ds, test_runs)
    if not len(rows):
        raise ConfigError(
            "the training runs hold no valid checkpoint with a finite metric to fit the ranker on; "
            "sample without ranking (sweep.rerank=1, generate --rerank 1)"
        )
    g = torch.Generator().manual_seed(seed)
    if len(rows) > max_rows:
        rows = rows[torch.randperm(len(rows), generator=g)[:max_rows]].sort().values
    if len(held) > max_rows:
        held = held[torch.randperm(len(held), generator=g)[:max_rows]].sort().values
    probe = function_probe(ds, train_runs, count=probes, seed=seed)
    metric = ds.data["metric"]
    y_raw = metric[rows].double()
    low, high = float(y_raw.min()), float(y_raw.max())
    scale = high - low if high > low else 1.0
    with torch.random.fork_rng(devices=[]):  # seeded weights, and the caller's global RNG left as it was
        torch.manual_seed(seed)
        ranker = MetricRanker(probe, low, low + scale)
    x = ranker.features(ds.data["params"][rows])
    y = ((y_raw - low) / scale).float()
    opt = torch.optim.AdamW(ranker.net.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(256, len(x)),), generator=g)
        loss = (ranker._scaled(x[idx]) - y[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    ranker.eval()

    def rmse(r: torch.Tensor) -> float | None:
        if not len(r):
            return None
        return float((ranker.predict(ds.data["params"][r].float()) - metric[r].double()).pow(2).mean().sqrt())

    ranker.fit_info = {
        "train_runs": list(train_runs),
        "data_sha256": data_fingerprint(ds, train_runs),
        "rows": len(rows),
        "rmse_train": rmse(rows),
        "rmse_heldout_runs": rmse(held),
        "heldout_runs": len(test_runs),
        "steps": steps,
        "seed": seed,
        "probes": probes,
        "seconds": round(time.time() - start, 1),
    }
    return ranker


def ranker_cache_dir(fingerprint: str) -> Path | None:
    """Where a ranker lives when its model folder is read-only: the user's cache, keyed by what it learnt
    from (``$XDG_CACHE_HOME/rl_gpt/rankers/``, else ``~/.cache/rl_gpt/rankers/``); None without a home."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    try:  # the XDG specification ignores a relative XDG_CACHE_HOME
        base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    except RuntimeError:  # no home directory to be found (a container's arbitrary user)
        return None
    return base / "rl_gpt" / "rankers" / fingerprint[:32]


def ranker_for(
    model_dir: str | Path,
    ds: CheckpointDataset,
    layout: Layout,
    train_runs: list[int],
    test_runs: list[int],
    say: Callable[[str], Any] = print,
) -> MetricRanker:
    """The model's stored ranker if it was fitted on these training runs of this data; else fit one and store it.

    A model folder that cannot be written keeps its ranker in the user's cache instead (``ranker_cache_dir``),
    so a shared, read-only model fits it once per user rather than once per command."""
    fingerprint = data_fingerprint(ds, train_runs)
    cache = ranker_cache_dir(fingerprint)
    for folder in (Path(model_dir), *([cache] if cache is not None else [])):
        try:
            ranker = load_ranker(folder, layout)
        except ModelFileError:
            ranker = None  # a damaged file is fitted again
        if (
            ranker is not None
            and ranker.fit_info.get("train_runs") == list(train_runs)
            and ranker.fit_info.get("data_sha256") == fingerprint
        ):
            return ranker
    say(f"fitting the ranker (metric predictor) on {len(train_runs)} training runs' checkpoints ...")
    ranker = fit_ranker(ds, train_runs, test_runs)
    try:
        ranker.save(model_dir)
        kept = f"written to {Path(model_dir) / RANKER_FILE}"
    except OSError as exc:  # a read-only model folder: keep it in the user's cache
        try:
            if cache is None:
                raise OSError(errno.ENOENT, "no home directory for a cache")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.mkdir(mode=0o700, exist_ok=True)  # the user's own: a ranker chooses which candidates are kept
            ranker.save(cache)
            kept = f"kept in {cache} ({model_dir}: {exc.strerror})"
        except OSError as cache_exc:
            where = f"{exc.strerror}: {model_dir}; {cache_exc.strerror}: {cache}"
            kept = f"not kept ({where}), so later commands fit it again"
    info = ranker.fit_info
    heldout = info["rmse_heldout_runs"]
    say(
        f"ranker: rmse {info['rmse_train']:.4g} on training checkpoints"
        + ("" if heldout is None else f", {heldout:.4g} on held-out runs")
        + f" ({info['seconds']:.0f}s), {kept}"
    )
    return ranker
