"""Training pairs (θ, m, θ', m') from one run, a run-level train/test split, and normalisation.

The sampler indexes the memory-mapped dataset row by row; it never loads the dataset whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from rl_gpt.dataset.store import CheckpointDataset, DatasetError
from rl_gpt.layout import Layout

__all__ = ["Normalizer", "PairSampler", "split_runs"]


def split_runs(runs: list[int], test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/test split *by run* (hash of run id and seed), so test runs stay unseen."""
    if not runs:
        return [], []
    ranked = sorted(runs, key=lambda r: zlib.crc32(f"{seed}:{r}".encode()))
    n_test = min(len(runs) - 1, round(len(runs) * test_fraction)) if test_fraction > 0 else 0
    test = sorted(ranked[:n_test])
    return sorted(set(runs) - set(test)), test


@dataclass
class Normalizer:
    """Per-tensor (optionally per-input-feature) parameter standardisation and a [-1, 1] metric scale.

    Fitted on training runs only and stored with the model. ``delta_std`` scales updates
    θ' − θ when the generator is trained on updates instead of parameters.
    """

    mean: torch.Tensor  # (D,) each parameter tensor's mean, broadcast over its entries
    std: torch.Tensor  # (D,)
    delta_std: torch.Tensor  # (D,) per-tensor std of θ' − θ over sampled pairs
    metric_low: float
    metric_high: float

    @classmethod
    def fit(
        cls,
        params: torch.Tensor,
        metric: torch.Tensor,
        layout: Layout,
        delta: torch.Tensor,
        input_columns: bool = False,
    ) -> Normalizer:
        """Fit from training rows ``params`` (N, D), ``metric`` (N,) and sample updates ``delta`` (M, D).

        ``input_columns``: the weights of layers that read the input get one mean/std per input
        feature instead of one per tensor. Features can differ in scale by an order of magnitude
        (a folded VecNormalize divides each column by its own σ), and one std would leave the small
        columns near zero in normalised units.
        """
        mean, std, dstd = (torch.zeros(layout.numel) for _ in range(3))
        by_column = {f"{layer.prefix}.weight" for layer in layout.layers if layer.in_group is None}
        for p in layout.params:
            span = slice(p.offset, p.stop)
            block, dblock = params[:, span].double(), delta[:, span].double()
            if input_columns and p.name in by_column:
                mean[span], std[span] = _column_stats(block, p.shape)
                dstd[span] = _column_stats(dblock, p.shape)[1]
                continue
            mean[span] = block.mean()
            std[span] = block.std().clamp_min(1e-6)
            dstd[span] = dblock.std().clamp_min(1e-6)
        finite = metric[torch.isfinite(metric)]
        low, high = float(finite.min()), float(finite.max())
        if high <= low:
            high = low + 1.0
        return cls(mean, std, dstd, low, high)

    def params(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unparams(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def delta(self, d: torch.Tensor) -> torch.Tensor:
        return d / self.delta_std

    def undelta(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.delta_std

    def metric(self, m: torch.Tensor) -> torch.Tensor:
        return 2 * (m - self.metric_low) / (self.metric_high - self.metric_low) - 1

    def unmetric(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1) / 2 * (self.metric_high - self.metric_low) + self.metric_low

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "delta_std": self.delta_std.tolist(),
            "metric_low": self.metric_low,
            "metric_high": self.metric_high,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        t = lambda k: torch.tensor(d[k], dtype=torch.float32)  # noqa: E731
        return cls(t("mean"), t("std"), t("delta_std"), float(d["metric_low"]), float(d["metric_high"]))


def _column_stats(block: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per input feature (axis 1 of ``shape``) of rows ``block`` (N, prod(shape)), flat."""
    w = block.reshape(len(block), shape[0], shape[1], -1)  # (N, out, in, kernel)
    mean = w.mean(dim=(0, 1, 3), keepdim=True)
    std = w.std(dim=(0, 1, 3), keepdim=True).clamp_min(1e-6)
    return mean.expand(1, *w.shape[1:]).reshape(-1), std.expand(1, *w.shape[1:]).reshape(-1)


class PairSampler:
    """Samples (θ, m, θ', m') from the same run, as TensorDict batches.

    θ' is drawn balanced over ``bins`` metric bins, so rare high (or low) returns are not drowned
    by the common ones; θ is the run's initialisation with probability ``init_fraction`` (what
    the generator sees at test time), otherwise any valid checkpoint of the same run.
    """

    def __init__(
        self,
        dataset: CheckpointDataset,
        runs: list[int],
        init_fraction: float = 0.5,
        bins: int = 10,
        seed: int = 0,
    ):
        self.dataset, self.init_fraction = dataset, init_fraction
        self.generator = torch.Generator().manual_seed(seed)
        slices = dataset.run_slices()
        missing = [r for r in runs if r not in slices]
        if missing:
            raise DatasetError(f"runs {missing} are not in the dataset")
        valid = dataset.valid_mask()
        rows, run_of, first_of, kept = [], [], [], []
        for r in runs:
            s = slices[r]
            idx = torch.arange(s.start, s.stop)[valid[s]]
            if len(idx) == 0:
                continue
            rows.append(idx)
            run_of.append(torch.full((len(idx),), len(first_of)))
            first_of.append(int(idx[0]))
            kept.append(r)
        if not rows:
            raise DatasetError("no valid (finite, evaluated) checkpoints in the training runs; collect again")
        if max(len(r) for r in rows) < 2:
            raise DatasetError(
                "every training run has a single valid checkpoint, so there is no update to learn; collect with "
                "collect.checkpoint_every well below collect.timesteps (supervised: task.hyperparams.steps)"
            )
        self.rows = torch.cat(rows)  # (R,) dataset row of every usable checkpoint, grouped by run
        self.run_pos = torch.cat(run_of)  # (R,) position of its run in the lists below
        counts = torch.tensor([len(r) for r in rows])
        self.run_start = torch.cumsum(counts, 0) - counts  # (runs,) first position in self.rows
        self.run_count = counts
        self.run_first_row = torch.tensor(first_of)  # (runs,) the run's earliest valid row (its init)
        self.run_ids = torch.tensor(kept)  # (runs,) dataset run id
        metric = dataset.data["metric"][self.rows].float()
        lo, hi = float(metric.min()), float(metric.max())
        edges = torch.linspace(lo, hi + 1e-6, bins + 1)
        bin_of = torch.bucketize(metric, edges[1:-1])
        order = torch.argsort(bin_of, stable=True)
        self.by_bin = order  # positions sorted by bin
        bin_counts = torch.bincount(bin_of, minlength=bins)
        self.bin_start = (torch.cumsum(bin_counts, 0) - bin_counts)[bin_counts > 0]
        self.bin_count = bin_counts[bin_counts > 0]

    def __len__(self) -> int:
        return len(self.rows)

    def sample_positions(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (into ``self.rows``) of θ and θ' for ``batch`` pairs."""
        g = self.generator
        b = torch.randint(len(self.bin_count), (batch,), generator=g)
        target = self.by_bin[self.bin_start[b] + (torch.rand(batch, generator=g) * self.bin_count[b]).long()]
        run = self.run_pos[target]
        any_row = self.run_start[run] + (torch.rand(batch, generator=g) * self.run_count[run]).long()
        use_init = torch.rand(batch, generator=g) < self.init_fraction
        source = torch.where(use_init, self.run_start[run], any_row)
        return source, target

    def sample(self, batch: int) -> TensorDict:
        """A batch of raw (unnormalised) pairs: theta, metric, theta_next, metric_next, run."""
        source, target = self.sample_positions(batch)
        data = self.dataset.data
        src_rows, tgt_rows = self.rows[source], self.rows[target]
        return TensorDict(
            {
                "theta": data["params"][src_rows].float(),  # (B, D)
                "metric": data["metric"][src_rows].float(),  # (B,)
                "theta_next": data["params"][tgt_rows].float(),  # (B, D)
                "metric_next": data["metric"][tgt_rows].float(),  # (B,)
                "run": data["run"][tgt_rows],  # (B,)
            },
            batch_size=[batch],
        )

    def init_rows(self) -> torch.Tensor:
        """The dataset row of each run's initialisation (step 0 where valid)."""
        return self.run_first_row
