"""G.pt's desired-versus-observed protocol: prompt many targets from given inits, evaluate, fit.

Shared by the training probe, ``rl-gpt sweep`` and the demo.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate import EvalResult, PolicySpec, evaluate_params
from rl_gpt.evaluate.alignment import alignment_r2
from rl_gpt.train.generator import ParameterGenerator

__all__ = [
    "evaluate_flat",
    "label_protocol",
    "obs_stats",
    "prompt_grid",
    "quick_alignment",
    "run_prompts",
    "start_metric",
]


def prompt_grid(spec: dict[str, Any], gen: ParameterGenerator, count: int) -> torch.Tensor:
    """``count`` prompts evenly over the task's metric range (or the training data's)."""
    rng = spec["task"].get("metric_range")
    low, high = rng if rng else (gen.normalizer.metric_low, gen.normalizer.metric_high)
    return torch.linspace(float(low), float(high), count)


def obs_stats(ds: CheckpointDataset, runs: list[int]) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """Observation-normalisation statistics for generated policies of a VecNormalize task.

    Generated parameters come without running statistics, so they are evaluated with the mean
    statistics of the training runs' final checkpoints.
    """
    if not ds.spec["policy"].get("normalize_obs"):
        return None, None
    slices = ds.run_slices()
    last = torch.tensor([slices[r].stop - 1 for r in runs])
    return ds.data["obs_mean"][last].float().mean(0), ds.data["obs_var"][last].float().mean(0)


def evaluate_flat(
    ds: CheckpointDataset,
    params: torch.Tensor,
    episodes: int,
    seed: int,
    stats_runs: list[int],
    deterministic: bool = True,
    stats_rows: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """The dataset's metric for raw flat networks (B, D): returns for policies, test loss/error for classifiers.

    ``episodes``/``seed`` apply to policies; classifiers are evaluated on the full test split
    (``std`` is 0 and ``returns`` holds the one value). For a VecNormalize task, ``stats_rows`` (B,)
    names the dataset row whose observation statistics each network uses (a retrieved checkpoint
    fits only its own); without it all use the mean of ``stats_runs``' final checkpoints. Rollouts
    run on ``device`` where the task has torch dynamics.
    """
    if ds.spec["task"].get("kind") == "supervised":
        from rl_gpt.collect.supervised_run import supervised_metric

        metric = supervised_metric(ds.spec, params)["metric"].double()
        return EvalResult(metric, torch.zeros_like(metric), metric[:, None], torch.zeros(len(metric), 1))
    spec = PolicySpec.from_dict(ds.spec["policy"])
    mean, var = obs_stats(ds, stats_runs)
    if mean is not None and stats_rows is not None:
        mean, var = ds.data["obs_mean"][stats_rows].float(), ds.data["obs_var"][stats_rows].float()  # (B, obs)
    finite = torch.isfinite(params).all(1)
    res = evaluate_params(
        torch.where(finite[:, None], params, torch.zeros_like(params)),
        ds.layout,
        spec,
        ds.spec["env_id"],
        episodes=episodes,
        deterministic=deterministic,
        seed=seed,
        obs_mean=mean,
        obs_var=var,
        device=device,
    )
    if finite.all():
        return res
    nan = torch.tensor(float("nan"))
    return EvalResult(
        torch.where(finite, res.mean, nan),
        torch.where(finite, res.std, nan),
        torch.where(finite[:, None], res.returns, nan),
        res.lengths,
    )


def label_protocol(spec: dict[str, Any], fallback_episodes: int) -> tuple[int, int]:
    """(episodes, seed) with which the dataset labelled its checkpoints (RL tasks); a fallback for old specs."""
    ev = spec.get("evaluation") or {}
    return int(ev.get("episodes", fallback_episodes)), int(ev.get("seed", 10_000))


def start_metric(
    ds: CheckpointDataset,
    params: torch.Tensor,
    stats_runs: list[int],
    fallback_episodes: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The metric m of networks handed to the generator (B,), measured as the dataset labelled its checkpoints.

    The generator reads m as a precise number (its frequency embedding resolves ~0.1 % of the metric
    range), and every init it trained on carries a label from the collection's protocol (its episode
    count and evaluation seed). An init measured any other way looks like no training input: on
    InvertedPendulum the same model and inits gave R² 0.77 with m = 25.6 (the protocol's value) and
    0.33 with m = 27.1 (16 episodes from another seed; docs/results.md).
    """
    episodes, seed = label_protocol(ds.spec, fallback_episodes)
    return evaluate_flat(ds, params, episodes, seed, stats_runs, device=device).mean


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
) -> torch.Tensor:
    """Sample θ' for every init × prompt × sample: returns (K, P, S, D) raw parameters on the CPU.

    Each sample is the mean of ``average`` draws (see :meth:`ParameterGenerator.sample`). Sampling
    runs where the network is (a model on CUDA takes CPU inputs here).
    """
    k, d = theta.shape
    p = prompts.numel()
    device = next((gen.model if model is None else model).parameters()).device
    th = theta[:, None, None].expand(k, p, samples, d).reshape(-1, d).to(device)
    m = metric[:, None, None].expand(k, p, samples).reshape(-1).to(device)
    pr = prompts[None, :, None].expand(k, p, samples).reshape(-1).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = gen.sample(th, m, pr, steps=steps, guidance=guidance, generator=g, model=model, average=average)
    return out.reshape(k, p, samples, d).cpu()


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
) -> float:
    """Mean per-init prompt-alignment R² from the inits (step 0) of ``runs``; one sample per prompt.

    ``stats_runs`` supply VecNormalize statistics (use training runs, so held-out runs stay unseen).
    """
    slices = ds.run_slices()
    rows = torch.tensor([slices[r].start for r in runs])
    theta, metric = ds.data["params"][rows].float(), ds.data["metric"][rows].float()
    grid = prompt_grid(ds.spec, gen, prompts)
    out = run_prompts(gen, model, theta, metric, grid, 1, steps, guidance, seed)
    res = evaluate_flat(ds, out.reshape(-1, out.shape[-1]), episodes, seed + 12345, stats_runs or runs)
    achieved = res.mean.reshape(len(runs), prompts)
    worst = float(grid.min() if ds.spec["metric"]["higher_is_better"] else grid.max())  # NaN counts as worst
    return float(alignment_r2(grid, torch.nan_to_num(achieved, nan=worst)).mean())
