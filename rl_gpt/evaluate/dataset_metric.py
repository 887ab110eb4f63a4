"""The dataset's metric for raw flat networks: episode returns for policies, test loss/error for classifiers.

Measured as the dataset labelled its checkpoints, so generated networks, retrieved checkpoints and
the inits handed to the generator are comparable with the training data. Used by the training
probe, sweeps, calibration and ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.policy import PolicySpec
from rl_gpt.evaluate.rollout import EvalResult, evaluate_params
from rl_gpt.supervised.metric import supervised_metric

__all__ = ["evaluate_flat", "label_protocol", "obs_stats", "start_metric"]


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

    The generator reads m as a precise number (at ``metric_frequency`` 1000, digits', its embedding
    resolves ~0.1 % of the metric range; at the default 30, ~3 %), and every init it trained on carries a label from the
    collection's protocol (its episode count and evaluation seed). An init measured any other way
    looks like no training input: on InvertedPendulum the same model and inits gave R² 0.77 with
    m = 25.6 (the protocol's value) and 0.33 with m = 27.1 (16 episodes from another seed;
    docs/results.md).
    """
    episodes, seed = label_protocol(ds.spec, fallback_episodes)
    return evaluate_flat(ds, params, episodes, seed, stats_runs, device=device).mean
