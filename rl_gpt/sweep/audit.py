"""The sweep's audit of what its networks are: how far from the training checkpoints (novelty), in
weights and in behaviour, and how near their own init (init fidelity), each beside what an
independent training run scores. The measures themselves are :mod:`rl_gpt.sweep.novelty` and
:mod:`rl_gpt.sweep.behaviour`; this module chooses what they compare."""

from __future__ import annotations

import math
from typing import Any

import torch

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate import PolicySpec
from rl_gpt.evaluate.dataset_metric import obs_stats
from rl_gpt.supervised.data import load_dataset_cached
from rl_gpt.sweep.novelty import canonical_scale, init_fidelity, nearest_aligned, proxy_features

__all__ = ["FIDELITY_OTHER_INITS", "FIDELITY_RUNS", "NOVELTY_POOL_FLOATS", "novelty_audit"]


# The training checkpoints the novelty audit compares with: all of them up to this many weights (float32).
NOVELTY_POOL_FLOATS = 250_000_000


def novelty_audit(
    ds: CheckpointDataset,
    methods: dict[str, tuple[torch.Tensor, torch.Tensor]],
    inits: torch.Tensor,
    pool_rows: torch.Tensor,
    train_runs: list[int],
    test_runs: list[int],
    seed: int = 0,
) -> dict[str, Any]:
    """Novelty, behavioural novelty and init fidelity of each method's networks.

    ``methods``: name -> (networks (K, D), the metric each achieved (K,)), the generator's first. Every
    network is compared after :func:`~rl_gpt.sweep.novelty.canonical_scale`, so a copy rescaled unit by
    unit (the same function) scores as a copy. A method's novelty is its mean aligned distance to the
    nearest training checkpoint over the same for held-out checkpoints of the metric its networks
    achieved (per network, the held-out checkpoint nearest in metric): a worse network lies nearer the
    random inits than a trained one does, so final checkpoints would flatter it. The ratio against the
    held-out runs' final checkpoints (the reference until session 35) is kept beside it.
    """
    layout, slices = ds.layout, ds.run_slices()
    held_runs = test_runs
    if not held_runs:  # no held-out runs (train.test_fraction=0): two training runs stand in, outside the pool
        # (inside it, their own checkpoints would be their nearest: every ratio 0/0); one of two, so one stays in it
        held_runs = train_runs[-2:] if len(train_runs) > 2 else train_runs[-1:] if len(train_runs) == 2 else []
        if held_runs:
            stand_ins = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in held_runs])
            pool_rows = pool_rows[~torch.isin(pool_rows, stand_ins)]
    if not held_runs or not len(pool_rows):  # one run in all: nothing to be novel against and nothing to compare
        return {"novelty_skipped": f"{len(train_runs)} training and {len(test_runs)} held-out runs: collect more runs"}
    g = torch.Generator().manual_seed(0)
    # Every training checkpoint, so that a copy of one scores 0; a random subset only past ~1 GB of weights.
    cap = max(5000, NOVELTY_POOL_FLOATS // layout.numel)
    if len(pool_rows) > cap:
        pool_rows = pool_rows[torch.randperm(len(pool_rows), generator=g)[:cap]]

    def canonical(rows: torch.Tensor) -> torch.Tensor:
        return canonical_scale(layout, ds.data["params"][rows].float(), in_place=True)

    pool = canonical(pool_rows)
    held_final = canonical(torch.tensor([slices[r].stop - 1 for r in held_runs]))
    held_init = canonical(torch.tensor([slices[r].start for r in held_runs]))
    held_rows = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in held_runs])
    held_rows = held_rows[ds.valid_mask()[held_rows] & torch.isfinite(ds.data["metric"][held_rows])]
    held_metric = ds.data["metric"][held_rows].double()
    reference: dict[str, Any] = {}
    out: dict[str, Any] = {"novelty": {"final_checkpoint_reference": reference}, "init_fidelity": {}}
    pairs = {}  # method -> (networks, their nearest training checkpoints) for behavioural novelty
    features = proxy_features(layout, pool)  # once: on MNIST's 26,000 checkpoints it takes seconds and GBs
    final_dist = nearest_aligned(layout, held_final, pool, pool_features=features)[0].mean()
    generated, achieved = methods["generator"]
    live = torch.isfinite(generated).all(1) & torch.isfinite(achieved)  # one mask for every measure below
    for name, (networks, metric) in methods.items():
        usable = torch.isfinite(networks).all(1) & torch.isfinite(metric)
        if not usable.any():  # every network failed: nothing to measure
            out["novelty"][name] = reference[name] = math.nan
            continue
        dist, index = nearest_aligned(layout, canonical_scale(layout, networks[usable]), pool, pool_features=features)
        reference[name] = _ratio(dist.mean(), final_dist)
        pairs[name] = (networks[usable], ds.data["params"][pool_rows[index]].float())
        if not len(held_rows):  # no usable held-out checkpoint: no matched reference
            out["novelty"][name] = math.nan
            continue
        matched = _matched_rows(held_rows, held_metric, metric[usable], torch.Generator().manual_seed(seed))
        matched_dist, matched_index = nearest_aligned(layout, canonical(matched), pool, pool_features=features)
        out["novelty"][name] = _ratio(dist.mean(), matched_dist.mean())
        if name == "generator":  # behaviour's reference: held-out checkpoints as good as the generated networks
            out["novelty"]["matched_heldout_rows"] = matched.tolist()
            pairs["heldout"] = (ds.data["params"][matched].float(), ds.data["params"][pool_rows[matched_index]].float())
    out["novelty"]["nn_dist_heldout"] = float(final_dist)
    if "retrieval" in pairs:
        pairs["retrieval"] = tuple(v[:1] for v in pairs["retrieval"])  # one checkpoint, repeated per init
    own = canonical_scale(layout, inits)  # the inits, for behaviour's identity row and for init fidelity
    init_index = nearest_aligned(layout, own, pool, pool_features=features)[1]
    pairs["identity"] = (inits, ds.data["params"][pool_rows[init_index]].float())
    out["behavioural_novelty"] = _behavioural(ds, pairs, train_runs, seed)

    def fidelity(*args: torch.Tensor) -> float | None:
        try:
            return init_fidelity(layout, *args)["fidelity"]
        except ValueError:  # fewer than two inits: no "other init" to compare with
            return None

    # Real training's reference aligns every held-out run with every training init: runs² alignments
    # (~60M, an hour, at 20,000 runs). Its mean is as well estimated from a fixed sample of each.
    held = _sample(len(held_runs), FIDELITY_RUNS, g)
    others = [train_runs[i] for i in _sample(len(train_runs), FIDELITY_OTHER_INITS, g).tolist()]
    train_inits = canonical(torch.tensor([slices[r].start for r in others]))
    mine = canonical_scale(layout, generated[live]) if live.any() else None
    out["init_fidelity"] = {
        "generator": None if mine is None else fidelity(mine, own[live], own),
        "real_training": fidelity(held_final[held], held_init[held], train_inits),
        "real_training_runs": len(held),
        "real_training_other_inits": len(others),
    }
    return out


def _matched_rows(rows: torch.Tensor, metric: torch.Tensor, wanted: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each ``wanted`` metric (W,), one of ``rows`` (N,) whose ``metric`` (N,) is nearest it, drawn
    with ``g`` among the ties: CartPole's many checkpoints at 500, or errors counted in test images,
    would otherwise all match the first such row."""
    gap = (metric[None] - wanted.double()[:, None]).abs()  # (W, N)
    tied = gap <= gap.min(1, keepdim=True).values
    pick = torch.multinomial(tied.double(), 1, generator=g).squeeze(1)  # uniform among each row's ties
    return rows[pick]


def _ratio(distance: torch.Tensor, reference: torch.Tensor) -> float:
    """``distance`` in units of ``reference``; undefined (NaN) where the reference copies the pool."""
    return float(distance / reference) if float(reference) > 0 else math.nan


# Real training's init fidelity: at most this many held-out runs, each against at most this many training inits.
FIDELITY_RUNS, FIDELITY_OTHER_INITS = 256, 512


def _sample(n: int, most: int, g: torch.Generator) -> torch.Tensor:
    """Sorted positions of ``most`` of ``n`` items drawn with ``g``; all of them if there are no more."""
    return torch.arange(n) if n <= most else torch.randperm(n, generator=g)[:most].sort().values


def _behavioural(
    ds: CheckpointDataset, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], stats_runs: list[int], seed: int
) -> dict[str, dict[str, Any]]:
    """Behavioural novelty of each method's networks against their nearest training checkpoints.

    Per method: ``fraction`` (mean over its networks, also ``per_policy``), ``compared``
    (``"actions"``: on states from each policy's own deterministic rollouts, different when
    discrete actions are unequal or a continuous one differs by more than ``tolerance`` × the
    action range; ``"predictions"``: predicted classes on ``states`` test inputs, at most
    ``STATES``, a fixed random subset), ``states`` (the fewest compared for any of its networks) and
    ``policies`` (how many networks). See :mod:`rl_gpt.sweep.behaviour`.
    """
    from rl_gpt.sweep.behaviour import STATES, TOLERANCE, action_disagreement, prediction_disagreement

    names = list(pairs)
    params = torch.cat([pairs[n][0] for n in names]).float()
    partners = torch.cat([pairs[n][1] for n in names]).float()
    spec = ds.spec
    if spec["task"].get("kind") == "supervised":
        policy = spec["policy"]
        root = spec["task"].get("data_root")
        x_test = load_dataset_cached(policy["dataset"], None if root is None else str(root))[2]
        pick = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(seed))[:STATES]
        fraction = prediction_disagreement(ds.layout, policy["network"], params, partners, x_test[pick])
        seen, tol, compared = torch.full((len(params),), len(pick)), None, "predictions"
    else:
        pspec = PolicySpec.from_dict(spec["policy"])
        mean, var = obs_stats(ds, stats_runs)
        fraction, seen = action_disagreement(
            ds.layout, pspec, spec["env_id"], params, partners, seed=seed, obs_mean=mean, obs_var=var
        )
        tol, compared = (None if pspec.discrete else TOLERANCE), "actions"
    out, start = {}, 0
    for n in names:
        stop = start + len(pairs[n][0])
        f, c = fraction[start:stop], seen[start:stop]
        out[n] = {
            "fraction": float(f.mean()) if len(f) else float("nan"),
            "compared": compared,
            "tolerance": tol,
            "states": int(c.min()) if len(c) else 0,
            "policies": len(f),
            "per_policy": f.tolist(),
        }
        start = stop
    return out
