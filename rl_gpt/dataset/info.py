"""A human-readable summary of a checkpoint dataset (``rl-gpt info``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rl_gpt.dataset.store import CheckpointDataset

__all__ = ["describe", "text_histogram"]


def text_histogram(values: torch.Tensor, bins: int = 10, width: int = 40) -> str:
    """A small horizontal text histogram of finite ``values``."""
    values = values[torch.isfinite(values)].double()
    if values.numel() == 0:
        return "  (no finite values)"
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        hi = lo + 1.0
    counts = torch.histc(values, bins=bins, min=lo, max=hi).long()
    top = int(counts.max()) or 1
    edges = torch.linspace(lo, hi, bins + 1)
    lines = []
    for i, c in enumerate(counts.tolist()):
        bar = "#" * max(1 if c else 0, round(width * c / top))
        lines.append(f"  [{edges[i]:9.2f}, {edges[i + 1]:9.2f}) {c:7d} {bar}")
    return "\n".join(lines)


def _timing_line(spec: dict) -> list[str]:
    """When an RL dataset's checkpoints were copied, where that is not what a collection does now."""
    sb3 = spec.get("algo") in ("ppo", "sac")  # a classifier's is its optimiser's name
    if not sb3 or spec.get("checkpoint_timing") == "after_update":  # a classifier's, another tool's, or now's
        return []
    timing = spec.get("checkpoint_timing")
    if timing == "mixed":
        said = "mixed: older runs copied each policy before the update on its rollout (a run's last update is "
        return [f"checkpoints  {said}missing), newer runs after it"]
    return ["checkpoints  copied before the update on each rollout (an older rl_gpt; a run's last update is missing)"]


def _collection_lines(spec: dict, root: Path) -> list[str]:
    """How the runs were trained and checkpointed, from the spec's ``collect`` and ``task`` sections."""
    collect, task = spec.get("collect"), spec.get("task")
    if not isinstance(collect, dict) or not isinstance(task, dict):  # written by another tool: nothing to say
        return []
    hyper = task.get("hyperparams") if isinstance(task.get("hyperparams"), dict) else {}
    every = collect.get("checkpoint_every", "?")
    if task.get("kind") == "supervised":
        optimiser = f"{hyper['optimizer']} " if isinstance(hyper.get("optimizer"), str) else ""
        length = f"{hyper.get('steps', '?')} {optimiser}steps (batch {hyper.get('batch_size', '?')}) per run"
        every = f"{every} steps"
    else:
        length = f"{collect.get('timesteps', '?')} timesteps per run ({task.get('n_envs', '?')} envs)"
        every = f"{every} timesteps"
    # a supervised spec written before dd82534 still holds the RL-only eval_episodes: a classifier has no episodes
    rl = task.get("kind") != "supervised"
    episodes = f"; each evaluated on {collect['eval_episodes']} episodes" if rl and collect.get("eval_episodes") else ""
    lines = [f"collected    {length}, a checkpoint every {every}{episodes}"]
    sampled = collect.get("sample_hyperparams") or {}
    if isinstance(sampled, dict) and sampled:
        lines.append(f"sampled      per run, log-uniformly: {', '.join(f'{k} in {v}' for k, v in sampled.items())}")
    if (root / "config.yaml").is_file():
        lines.append(f"config       {root / 'config.yaml'} (every setting of the last collect; --spec: spec.json)")
    return lines


def describe(root: str | Path, show_spec: bool = False) -> str:
    ds = CheckpointDataset(root)
    spec, data = ds.spec, ds.data
    metric = data["metric"].clone()
    valid = ds.valid_mask()
    slices = ds.run_slices()
    finals = torch.stack([metric[s.stop - 1] for s in slices.values()]) if slices else torch.empty(0)
    task = spec["task"]
    direction = "higher" if spec["metric"]["higher_is_better"] else "lower"
    shapes = ", ".join(f"{p.name} {list(p.shape)}" for p in ds.layout.params)
    lines = [
        f"dataset      {Path(root).resolve()}",
        f"task         {task['name']} ({spec.get('env_id', '')}, {spec.get('algo', '')})",
        f"metric       {spec['metric']['name']} ({direction} is better)",
        f"runs         {len(slices)}",
        *_collection_lines(spec, Path(root).resolve()),
        f"checkpoints  {len(ds)} ({int((~valid).sum())} invalid: NaN/inf/exploding or unevaluated)",
        f"parameters   {ds.layout.numel} per checkpoint ({shapes})",
        f"hidden units {dict(ds.layout.groups)}",
        f"fields       {', '.join(sorted(data.keys()))}",
        *_timing_line(spec),
        f"memmap       {ds.data_dir}  (TensorDict.load_memmap)",
        "",
        f"{spec['metric']['name']} over all checkpoints: mean {metric[valid].mean():.2f}, "
        f"min {metric[valid].min():.2f}, max {metric[valid].max():.2f}"
        if valid.any()
        else "no valid checkpoints",
        text_histogram(metric[valid]),
        "",
        f"final checkpoint of each run: mean {finals.nanmean():.2f}" if finals.numel() else "",
        text_histogram(finals) if finals.numel() else "",
    ]
    if show_spec:
        lines += ["", json.dumps(spec, indent=2)]
    return "\n".join(lines)
