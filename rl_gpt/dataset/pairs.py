"""Training pairs (θ, m, θ', m') from one run, a run-level train/test split, and normalisation.

The sampler indexes the memory-mapped dataset row by row; it never loads the dataset whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
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
        rows: torch.Tensor | None = None,
    ) -> Normalizer:
        """Fit from training rows ``params`` (N, D), ``metric`` (N,) and sample updates ``delta`` (M, D).

        ``rows``: ``params`` is a whole (memory-mapped) column and these are the training rows; they are
        read a chunk at a time, so fitting on millions of checkpoints takes no more memory than on a few.

        ``input_columns``: the weights of layers that read the input get one mean/std per input
        feature instead of one per tensor. Features can differ in scale by an order of magnitude
        (a folded VecNormalize divides each column by its own σ), and one std would leave the small
        columns near zero in normalised units.
        """
        group, groups = _stat_groups(layout, input_columns)
        if rows is None:
            rows = torch.arange(len(params))
        mean, std = _group_stats(lambda: _chunks(params, rows, layout.numel), group, groups)
        dstd = _group_stats(lambda: iter([delta]), group, groups)[1]
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


def _stat_groups(layout: Layout, input_columns: bool) -> tuple[torch.Tensor, int]:
    """(D,) the statistics group of every parameter, and how many groups: one per tensor, or with
    ``input_columns`` one per input feature (axis 1) of the weights of layers that read the input."""
    reads_input = [layer for layer in layout.layers if layer.in_group is None] if input_columns else []
    by_column = {f"{layer.prefix}.weight" for layer in reads_input}
    group, n = torch.empty(layout.numel, dtype=torch.long), 0
    for p in layout.params:
        span = slice(p.offset, p.stop)
        if p.name in by_column:
            out, features = p.shape[0], p.shape[1]
            feature = torch.arange(features).reshape(1, -1, 1).expand(out, -1, p.numel // (out * features))
            group[span], n = n + feature.reshape(-1), n + features
        else:
            group[span], n = n, n + 1
    return group, n


_CHUNK_NUMBERS = 2**22  # parameters read at a time when fitting on a memory-mapped column


def _chunks(params: torch.Tensor, rows: torch.Tensor, width: int) -> Iterator[torch.Tensor]:
    """``params[rows]`` ~4M numbers at a time."""
    step = max(1, _CHUNK_NUMBERS // max(1, width))
    for i in range(0, len(rows), step):
        yield params[rows[i : i + step]]


def _group_stats(
    chunks: Callable[[], Iterator[torch.Tensor]], group: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of each group's entries over all rows, each broadcast to its (D,) entries.

    Two passes in float64 (the mean, then squared deviations from it), as exact as one ``.std()``
    over the whole block, without holding the block: ``chunks()`` yields it again for the second pass.
    """
    total, count = torch.zeros(groups, dtype=torch.float64), 0
    for x in chunks():
        total.index_add_(0, group, x.double().sum(0))
        count += len(x)
    size = torch.bincount(group, minlength=groups).double() * count
    mean = total / size
    spread = torch.zeros(groups, dtype=torch.float64)
    for x in chunks():
        spread.index_add_(0, group, (x.double() - mean[group]).pow_(2).sum(0))
    std = (spread / (size - 1)).sqrt().clamp_min(1e-6)
    return mean[group].float(), std[group].float()


class PairSampler:
    """Samples (θ, m, θ', m') from the same run, as TensorDict batches.

    θ' is drawn balanced over ``bins`` metric bins, so rare high (or low) returns are not drowned
    by the common ones; θ is the run's initialisation with probability ``init_fraction`` (what
    the generator sees at test time), otherwise any valid checkpoint of the same run, before or
    after θ' (as in G.pt: the generator also learns updates toward a worse metric, which a prompt
    below the start's asks for).
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
        # Every row of the runs, in the order given, then the valid ones: whole-tensor steps, not one per run.
        starts = torch.tensor([slices[r].start for r in runs], dtype=torch.long)
        lengths = torch.tensor([slices[r].stop - slices[r].start for r in runs], dtype=torch.long)
        of_run = torch.repeat_interleave(torch.arange(len(runs)), lengths)  # (rows,) index into runs
        rows = starts[of_run] + torch.arange(len(of_run)) - (torch.cumsum(lengths, 0) - lengths)[of_run]
        usable = dataset.valid_mask()[rows]
        rows, of_run = rows[usable], of_run[usable]
        counts = torch.bincount(of_run, minlength=len(runs))
        if not len(rows):
            raise DatasetError("no valid (finite, evaluated) checkpoints in the training runs; collect again")
        if int(counts.max()) < 2:
            raise DatasetError(
                "every training run has a single valid checkpoint, so there is no update to learn; collect with "
                "collect.checkpoint_every well below collect.timesteps (supervised: task.hyperparams.steps)"
            )
        kept = counts > 0  # runs without a valid checkpoint are left out
        counts = counts[kept]
        self.rows = rows  # (R,) dataset row of every usable checkpoint, grouped by run
        self.run_pos = (torch.cumsum(kept, 0) - 1)[of_run]  # (R,) position of its run in the tensors below
        self.run_start = torch.cumsum(counts, 0) - counts  # (runs,) first position in self.rows
        self.run_count = counts
        self.run_first_row = rows[self.run_start]  # (runs,) the run's earliest valid row (its init)
        self.run_ids = torch.tensor(runs, dtype=torch.long)[kept]  # (runs,) dataset run id
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
