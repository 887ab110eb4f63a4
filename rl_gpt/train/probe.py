"""G.pt's desired-versus-observed protocol: prompt many targets from given inits, evaluate, fit.

Shared by the training probe (``loop.py``), ``rl-gpt sweep``, ``rl-gpt calibrate`` and the demo; the
evaluation itself is :mod:`rl_gpt.evaluate.dataset_metric`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rl_gpt.config import ConfigError
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.alignment import alignment_r2, score_failures
from rl_gpt.evaluate.dataset_metric import evaluate_flat
from rl_gpt.evaluate.seeds import Purpose, evaluation_seed
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.ranker import MetricRanker

__all__ = ["choose_candidates", "prompt_grid", "prompt_range", "quick_alignment", "run_prompts", "sample_candidates"]


def prompt_range(
    spec: dict[str, Any],
    low: float,
    high: float,
    metric_range: Sequence[float] | str | None = None,
    clamped: bool = True,
) -> tuple[float, float]:
    """The range prompts span: ``metric_range``, else the task's range in the dataset's spec, else
    the training data's [low, high] (also what ``metric_range="data"`` asks for, over a spec's range).

    A set range may reach past the data's ends: the RL presets prompt their environment's whole
    range, beyond the best return a short collection reached and below its inits' returns. A range
    that misses the data altogether is refused: every prompt would be clamped to the data's nearest
    end (a preset's range kept after another ``task.env_id``); not where prompts are not clamped
    (``sweep.clamp_prompts=false``: extrapolation asked for). For a lower-is-better metric (a
    classifier's loss or error) the data's worst value is about the inits', and a range reaching far
    above it is refused: it is another metric's (the mnist preset's loss range kept after
    ``task.metric=test_error``) or a typo.
    """
    rng = metric_range or spec["task"].get("metric_range")
    if not rng or rng == "data":
        return low, high
    a, b = float(rng[0]), float(rng[1])
    metric = spec.get("metric", {})
    if clamped and (b < low or a > high):  # every prompt would be clamped to one end: another task's range
        raise ConfigError(
            f"task.metric_range [{a:.4g}, {b:.4g}] lies wholly outside the training data's "
            f"{metric.get('name', 'metric')} [{low:.4g}, {high:.4g}] (a preset's range kept for another env?); set "
            "task.metric_range=data to prompt the data's range, or a range that overlaps it (at collect: "
            "task.metric_range=null)"
        )
    if not metric.get("higher_is_better", True) and b > high + 0.5 * (high - low):  # some margin stays allowed
        raise ConfigError(
            f"task.metric_range [{a:.4g}, {b:.4g}] reaches far above the worst {metric.get('name', 'metric')} the "
            f"training data holds ({high:.4g}; the data span [{low:.4g}, {high:.4g}]); set "
            f"task.metric_range=[{low:.4g}, {high:.4g}] or a range that ends near {high:.4g}"
        )
    return a, b


def prompt_grid(
    spec: dict[str, Any],
    gen: ParameterGenerator,
    count: int,
    metric_range: Sequence[float] | str | None = None,
    clamped: bool = True,
) -> torch.Tensor:
    """``count`` prompts evenly over :func:`prompt_range`."""
    low, high = prompt_range(spec, gen.normalizer.metric_low, gen.normalizer.metric_high, metric_range, clamped)
    return torch.linspace(low, high, count)


@torch.no_grad()
def run_prompts(
    gen: ParameterGenerator,
    model: nn.Module | None,
    theta: torch.Tensor,
    metric: torch.Tensor,
    prompts: torch.Tensor,
    samples: int,
    steps: int,
    guidance: float,
    seed: int = 0,
    average: int = 1,
    ranker: MetricRanker | None = None,
    rerank: int = 1,
) -> torch.Tensor:
    """Sample θ' for every init × prompt × sample: returns (K, P, S, D) raw parameters on the CPU.

    Each sample is the mean of ``average`` draws (see :meth:`ParameterGenerator.sample`). With
    ``rerank`` N > 1 each sample is the one of N such candidates whose metric, as ``ranker``
    predicts it, is nearest the prompt it was conditioned on (so a calibration measured with ranking
    maps what the user asks for to that prompt). Sampling runs where the network is (a model on
    CUDA takes CPU inputs here).
    """
    cands = sample_candidates(gen, model, theta, metric, prompts, samples, steps, guidance, seed, average, rerank)
    if rerank == 1:
        return cands[..., 0, :]
    return choose_candidates(cands, prompts, ranker)[0]


@torch.no_grad()
def sample_candidates(
    gen: ParameterGenerator,
    model: nn.Module | None,
    theta: torch.Tensor,
    metric: torch.Tensor,
    prompts: torch.Tensor,
    samples: int,
    steps: int,
    guidance: float,
    seed: int = 0,
    average: int = 1,
    candidates: int = 1,
) -> torch.Tensor:
    """``candidates`` draws for every init × prompt × sample: (K, P, S, C, D) raw parameters on the CPU."""
    k, d = theta.shape
    p = prompts.numel()
    n = samples * candidates
    device = next((gen.model if model is None else model).parameters()).device
    th = theta[:, None, None].expand(k, p, n, d).reshape(-1, d).to(device)
    m = metric[:, None, None].expand(k, p, n).reshape(-1).to(device)
    pr = prompts[None, :, None].expand(k, p, n).reshape(-1).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = gen.sample(th, m, pr, steps=steps, guidance=guidance, generator=g, model=model, average=average)
    return out.reshape(k, p, samples, candidates, d).cpu()


def choose_candidates(
    candidates: torch.Tensor, targets: torch.Tensor, ranker: MetricRanker | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranked choice of (K, P, S, C, D) candidates for targets (P,): (K, P, S, D) and predicted (K, P, S)."""
    if ranker is None:
        raise ValueError("ranking candidates needs the model's ranker (see rl_gpt.train.ranker.ranker_for)")
    k, p, s = candidates.shape[:3]
    return ranker.choose(candidates, targets.double()[None, :, None].expand(k, p, s))


def quick_alignment(
    gen: ParameterGenerator,
    model: nn.Module | None,
    ds: CheckpointDataset,
    runs: list[int],
    prompts: int = 8,
    episodes: int = 4,
    steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
    stats_runs: list[int] | None = None,
    metric_range: Sequence[float] | str | None = None,
) -> float:
    """Mean per-init prompt-alignment R² from the inits (step 0) of ``runs``; one sample per prompt.

    ``stats_runs`` supply VecNormalize statistics (use training runs, so held-out runs stay unseen).
    Prompts span :func:`prompt_range` (``metric_range``: ``task.metric_range``); those outside the
    training data's range are conditioned on its nearest end, as sweeps do.
    """
    slices = ds.run_slices()
    rows = torch.tensor([slices[r].start for r in runs])
    theta, metric = ds.data["params"][rows].float(), ds.data["metric"][rows].float()
    grid = prompt_grid(ds.spec, gen, prompts, metric_range)
    cond = grid.clamp(gen.normalizer.metric_low, gen.normalizer.metric_high)
    out = run_prompts(gen, model, theta, metric, cond, 1, steps, guidance, seed)
    at = evaluation_seed(seed, Purpose.TRAINING_PROBE)
    res = evaluate_flat(ds, out.reshape(-1, out.shape[-1]), episodes, at, stats_runs or runs)
    achieved = res.mean.reshape(len(runs), prompts)
    return float(alignment_r2(grid, score_failures(grid, achieved)[0]).mean())  # failures scored as the sweep does
