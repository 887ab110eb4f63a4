"""What ``rl-gpt evaluate`` does: an SB3 .zip or dataset rows through the batched evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["evaluate_target"]


def _parse_rows(text: str, n: int) -> torch.Tensor:
    """``""`` (all), ``5`` (one row) or ``0:100`` (a slice) of a dataset with ``n`` rows."""
    from rl_gpt.dataset import DatasetError

    if not text:
        return torch.arange(n)
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            idx = torch.arange(n)[slice(int(start) if start else None, int(stop) if stop else None)]
        else:
            row = int(text)
            idx = torch.tensor([row if row >= 0 else n + row]) if -n <= row < n else torch.arange(0)
    except ValueError:
        raise DatasetError(f"rows {text!r}: give a row (5) or a range (0:100) of whole numbers") from None
    if len(idx) == 0:
        raise DatasetError(f"rows {text!r} select nothing: the dataset has rows 0 to {n - 1}")
    return idx


def evaluate_target(target: str, episodes: int, device: str, seed: int, stochastic: bool) -> dict[str, Any]:
    """Evaluate ``POLICY.zip`` or ``DATASET[:rows]``; returns printable text and a JSON record."""
    from rl_gpt.evaluate import evaluate_sb3_file

    if target.endswith(".zip"):
        if not Path(target).is_file():
            raise FileNotFoundError(f"no policy file {target}")
        res = evaluate_sb3_file(target, episodes=episodes, deterministic=not stochastic, seed=seed, device=device)
        rows = [target]
    else:
        from rl_gpt.dataset import CheckpointDataset
        from rl_gpt.evaluate import PolicySpec, evaluate_params

        root, _, sel = target.partition(":") if not Path(target).exists() else (target, "", "")
        ds = CheckpointDataset(root)
        idx = _parse_rows(sel, len(ds))
        spec = PolicySpec.from_dict(ds.spec["policy"])
        extra = {}
        if spec.normalize_obs:
            extra = {"obs_mean": ds.data["obs_mean"][idx].float(), "obs_var": ds.data["obs_var"][idx].float()}
        res = evaluate_params(
            ds.data["params"][idx].float(),
            ds.layout,
            spec,
            ds.spec["env_id"],
            episodes=episodes,
            deterministic=not stochastic,
            seed=seed,
            device=device,
            **extra,
        )
        rows = [f"row {int(i)}" for i in idx]
    lines = [f"{name}: {m:.2f} +- {s:.2f}" for name, m, s in zip(rows, res.mean.tolist(), res.std.tolist())]
    record = {
        "target": target,
        "episodes": episodes,
        "deterministic": not stochastic,
        "seed": seed,
        "policies": [
            {"name": n, "mean": float(m), "std": float(s), "returns": r}
            for n, m, s, r in zip(rows, res.mean, res.std, res.returns.tolist())
        ],
    }
    return {"text": "\n".join(lines), "json": record}
