"""``rl-gpt sweep``: prompt sweeps from unseen random inits (or the model's own runs' inits), with
baselines, novelty and a report.

Everything a sceptic would ask for sits next to the generator's numbers: retrieval (the training
checkpoint with the closest return, ignoring θ), noise (that checkpoint plus Gaussian noise) and
identity (θ unchanged), each with the same alignment and success measures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from rl_gpt.collect.inits import random_inits, training_init_matches
from rl_gpt.config import ConfigError, ExperimentConfig, SweepConfig, TaskConfig, task_config, to_dict
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.devices import resolve_device
from rl_gpt.evaluate import PolicySpec
from rl_gpt.evaluate.alignment import alignment_r2, mean_ci95
from rl_gpt.evaluate.dataset_metric import evaluate_flat, obs_stats, start_metric
from rl_gpt.io import SAVE_ID, atomic_write_json, ensure_report_dir, exclusive_folder
from rl_gpt.supervised.data import load_dataset_cached
from rl_gpt.supervised.metric import supervised_metric
from rl_gpt.train.calibration import conditioning_prompts
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.modelfile import load_generator, open_dataset
from rl_gpt.train.probe import choose_candidates, prompt_grid, run_prompts, sample_candidates
from rl_gpt.train.ranker import MetricRanker, ranker_for
from rl_gpt.wandb_run import check_login

__all__ = ["count_failed_as", "sweep", "sweep_summary"]


def count_failed_as(worst: float, achieved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``achieved`` with each failed sample (no finite metric) scored as ``worst``, and the failed mask."""
    failed = ~torch.isfinite(achieved)
    return torch.where(failed, worst, achieved), failed


def _summary(
    prompts: torch.Tensor, achieved: torch.Tensor, best: int, threshold: float | None, higher: bool
) -> dict[str, Any]:
    """Alignment and one-step success of achieved (K, P, S) metrics.

    A failed sample (NaN: no finite metric) counts as the worst prompt in R² and in the one-step mean,
    and as unsolved, as ``rl-gpt compare`` counts it; ``failed_fraction`` says how many there were.
    ``achieved_mean`` (the plot's curve) is over the finite samples.
    """
    worst = float(prompts.min() if higher else prompts.max())
    scored, failed = count_failed_as(worst, achieved)
    r2 = alignment_r2(prompts, scored)
    at_best = achieved[:, best]  # (K, S)
    if threshold is None:
        solved = float("nan")
    else:
        solved = float(((at_best >= threshold) if higher else (at_best <= threshold)).float().mean())
    return {
        "prompt_alignment_r2": float(r2.mean()),
        # every sample failed: all inits score alike, and a zero-width interval would claim certainty
        "prompt_alignment_r2_ci95": [math.nan, math.nan] if failed.all() else list(mean_ci95(r2)),
        "r2_per_init": r2.tolist(),
        "one_step": {
            "prompt": float(prompts[best]),
            "mean_return": float(scored[:, best].mean()),
            "solved_fraction": solved,
            "failed_fraction": float(failed[:, best].double().mean()),
        },
        "failed_fraction": float(failed.double().mean()),
        "achieved_mean": achieved.nanmean(dim=(0, 2)).tolist(),
    }


def _classifier_metrics(ds: CheckpointDataset, params: torch.Tensor, heldout_runs: list[int]) -> dict[str, Any]:
    """Test loss and error of generated classifiers (B, D), next to the dataset's best checkpoint of each
    and to where real training ends: the median final checkpoint of the held-out runs.

    A model prompts one metric; users judge a classifier by both (a loss-prompted network's error is
    what they deploy it for). The held-out runs started from inits the generator never saw and ran
    the whole recipe, so they are what one generated step competes with.
    """
    measured = supervised_metric(ds.spec, params)
    best, final, ended, rows = {}, {}, {}, ds.valid_mask()
    slices = ds.run_slices()
    for key in ("test_loss", "test_error"):
        if key not in ds.data:
            continue
        values = ds.data[key].float()
        usable = rows & torch.isfinite(values)  # the other field of a valid row may still be NaN
        if usable.any():
            best[key] = float(values[usable].min())
        # A run's end is its last usable checkpoint (a diverged run's last one before it diverged).
        last = [values[s][usable[s]][-1] for r in heldout_runs if usable[(s := slices[r])].any()]
        if last:
            final[key] = float(torch.stack(last).double().quantile(0.5))  # the middle two's mean if even
            ended[key] = len(last)
    failed = ~(torch.isfinite(measured["test_loss"]) & torch.isfinite(measured["test_error"]))
    return {
        # over the classifiers that computed a finite loss; failed_fraction says how many did not
        "test_loss": float(measured["test_loss"].nanmean()),
        "test_error": float(measured["test_error"].nanmean()),
        "failed_fraction": float(failed.double().mean()),
        "dataset_best": best,  # over every valid checkpoint, held-out runs' included
        # median over held-out runs of their last usable checkpoint; empty without held-out runs
        "heldout_final": final,
        "heldout_runs": ended,  # how many held-out runs that median is over, per metric
    }


def _training_equivalent(ds: CheckpointDataset, runs: list[int], value: float, higher: bool) -> float | None:
    """Median steps (the dataset's ``step``) its runs needed to first reach ``value`` (None if most never did)."""
    slices, steps = ds.run_slices(), []
    for r in runs:
        s = slices[r]
        m, st = ds.data["metric"][s], ds.data["step"][s]
        hit = torch.nonzero((m >= value) if higher else (m <= value)).flatten()
        steps.append(float(st[hit[0]]) if len(hit) else float("inf"))
    steps.sort()
    med = steps[len(steps) // 2] if steps else float("inf")
    return None if med == float("inf") else med


def sweep(
    cfg: ExperimentConfig,
    model_dir: str | Path,
    out: str | Path,
    progress: bool = True,
    dataset: str | Path | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Run the sweep, write ``out/report.json`` and ``out/sweep.png``; return the report.

    ``dataset``: one the user named, used instead of the model's own if it holds the model's runs;
    ``data_root``: the folder of a supervised dataset's data files, where they moved since collection.
    """
    sc: SweepConfig = cfg.sweep
    device = resolve_device(sc.device or cfg.train.device, "sweep.device" if sc.device else "train.device")
    check_login(cfg)  # wandb.mode=online without credentials fails now, not after the sweep
    timings: dict[str, float] = {}
    t = time.time()
    gen, info = load_generator(model_dir)
    ds = open_dataset(model_dir, info, dataset, cfg.dataset_dir, cfg.task, data_root)
    spec, task = ds.spec, task_config(ds.spec["task"])
    # "Solved" is the config's threshold: the dataset records the one it was collected with, and a sweep
    # given task.reward_threshold= (CartPole-v0's 195 on a preset of v1's 475) must score by it, not ignore it.
    task = dataclasses.replace(task, reward_threshold=cfg.task.reward_threshold)
    prompts = prompt_grid(spec, gen, sc.prompts, cfg.task.metric_range)
    train_runs = info["meta"]["train_runs"]
    test_runs = info["meta"]["test_runs"]
    inits = _inits(sc, task, ds, train_runs, test_runs)  # (K, D): refused here if a training run's own
    out = ensure_report_dir(out, "--out or out=")  # after the checks: a refused sweep leaves no empty folder
    with exclusive_folder(out, "sweep", "--out"):  # a second sweep into the same folder is refused
        higher = spec["metric"]["higher_is_better"]
        best = int(torch.argmax(prompts) if higher else torch.argmin(prompts))
        say = print if progress else (lambda *a, **k: None)

        ranker = ranker_for(model_dir, ds, gen.layout, train_runs, test_runs, say) if sc.rerank > 1 else None
        gen.to(device)  # sampling runs there; everything it returns is on the CPU

        def evaluate(params: torch.Tensor, seed: int, stats_rows: torch.Tensor | None = None) -> torch.Tensor:
            return evaluate_flat(ds, params, sc.episodes, seed, train_runs, stats_rows=stats_rows, device=device).mean

        # ---------------------------------------------------------------- inits never seen in collection
        init_metric = evaluate(inits, sc.seed + 1)  # (K,) reported, like every achieved metric
        # The generator's input m is measured as the training labels were (see start_metric).
        init_m = start_metric(ds, inits, train_runs, sc.episodes, device).float()  # (K,)
        timings["setup_s"] = time.time() - t

        # ---------------------------------------------------------------- the generator
        t = time.time()
        bounds = (gen.normalizer.metric_low, gen.normalizer.metric_high) if sc.clamp_prompts else None
        cond, cal = conditioning_prompts(
            model_dir, prompts, sc.guidance, sc.steps, sc.average, sc.calibrated, bounds, sc.rerank
        )
        if cal is not None and sc.init_source == "train":
            warnings.warn(
                "the calibration was measured from the first training runs' inits, and this sweep starts from "
                "training runs' inits too: where they overlap its R² is in-sample (sweep.calibrated=false avoids it)",
                stacklevel=2,
            )
        if cal is not None:
            say(
                "prompts calibrated (calibration.json): "
                + ", ".join(f"{a:.4g}->{b:.4g}" for a, b in zip(prompts, cond))
            )
        elif bounds is not None and not torch.equal(cond, prompts):
            moved = ", ".join(f"{a:.4g}->{b:.4g}" for a, b in zip(prompts, cond) if a != b)
            low, high = bounds
            say(f"prompts outside the training data's range [{low:.3g}, {high:.3g}] conditioned on its end: {moved}")
        args = (sc.samples, sc.steps, sc.guidance, sc.seed, sc.average)
        draws = len(inits) * len(prompts) * sc.samples
        each = f", each the mean of {sc.average} draws" if sc.average > 1 else ""
        each += f", best of {sc.rerank}" if sc.rerank > 1 else ""
        say(f"sampling {draws} networks ({len(inits)} inits x {len(prompts)} prompts x {sc.samples}{each}) ...")
        candidates = sample_candidates(gen, None, inits, init_m, cond, *args, sc.rerank)  # (K, P, S, N, D)
        samples = candidates[..., 0, :]
        if ranker is not None:  # ranked towards what the generator was conditioned on, as calibrate measures it
            samples, predicted = choose_candidates(candidates, cond, ranker)
        timings["sample_s"] = time.time() - t
        t = time.time()
        k, p, s, d = samples.shape
        say(f"evaluating them ({timings['sample_s']:.0f} s of sampling) ...")
        achieved = evaluate(samples.reshape(-1, d), sc.seed + 2).reshape(k, p, s)
        timings["evaluate_s"] = time.time() - t
        report: dict[str, Any] = {
            "task": task.name,
            "env_id": spec["env_id"],
            "metric": spec["metric"],
            "prompts": prompts.tolist(),
            "achieved": achieved.tolist(),
            "inits": len(inits),
            "init_source": sc.init_source,
            # which networks: the runs whose step-0 checkpoints were the inits, or the random inits' seeds
            "init_ids": _init_ids(sc, train_runs, test_runs, len(inits)),
            # the networks themselves: `compare` pairs two reports only over the same ones (run 2 of another
            # dataset, or of another split, is another network)
            "init_sha256": hashlib.sha256(inits.float().contiguous().numpy().tobytes()).hexdigest(),
            "init_metric": init_metric.tolist(),
            "init_metric_as_labelled": init_m.tolist(),  # the generator's input m (the dataset's protocol)
            # The prompts the generator was conditioned on: the desired ones, or calibration.json's map of them,
            # held inside clamp_range (the training data's metric range; None: sweep.clamp_prompts=false).
            "calibration": {"applied": cal is not None, "conditioned_on": cond.tolist(), "clamp_range": bounds}
            | ({} if cal is None else {"sampler": cal.sampler, "fitted_on": cal.meta}),
        }
        report |= _summary(prompts, achieved, best, task.reward_threshold, higher)
        if ranker is not None:  # what ranking bought: the first candidate of each sample, unranked, scored alike
            unranked = evaluate(candidates[..., 0, :].reshape(-1, d), sc.seed + 2).reshape(k, p, s)
            report["rerank"] = _rerank_report(ranker, sc.rerank, predicted, achieved) | {
                "without_rerank": _summary(prompts, unranked, best, task.reward_threshold, higher)
                | {"achieved": unranked.tolist()}
            }
        if task.kind == "supervised":
            report["one_step"]["classifier"] = _classifier_metrics(ds, samples[:, best].reshape(-1, d), test_runs)
        solved = report["one_step"]["solved_fraction"]
        say(
            f"generator: R2 {report['prompt_alignment_r2']:.3f}, one-step {report['one_step']['mean_return']:.4g} "
            f"at prompt {float(prompts[best]):.4g}" + ("" if solved != solved else f", solved {solved:.0%}")
        )

        # ---------------------------------------------------------------- recursive prompting
        t = time.time()
        if sc.recursive:
            say(f"recursive prompting, {sc.recursive} steps ...")
        worst = float(prompts.min() if higher else prompts.max())
        scored, failed = count_failed_as(worst, init_metric)
        theta, metric, curve, failed_curve = inits, init_m, [float(scored.mean())], [float(failed.double().mean())]
        for i in range(sc.recursive):
            # A network that failed (non-finite weights or metric) is not updated again: the sampler refuses
            # non-finite inputs. It stays failed, scored as the worst prompt, as the one-step mean scores it.
            alive = torch.isfinite(theta).all(1) & torch.isfinite(metric)
            step = cond[best : best + 1]
            sampler = (sc.steps, sc.guidance, sc.seed + 3, sc.average, ranker, sc.rerank)
            updated = torch.full_like(theta, math.nan)
            reached = torch.full((len(theta),), math.nan, dtype=init_metric.dtype, device=init_metric.device)
            if alive.any():
                rows = slice(None) if alive.all() else alive  # all alive: the same batches and draws as ever
                updated[rows] = run_prompts(gen, None, theta[rows], metric[rows], step, 1, *sampler)[:, 0, 0]
                reached[rows] = evaluate(updated[rows], sc.seed + 4).to(reached)
            theta = updated
            scored, failed = count_failed_as(worst, reached)
            curve.append(float(scored.mean()))
            failed_curve.append(float(failed.double().mean()))
            if i + 1 < sc.recursive:  # the next step's input; the last step has none
                live = torch.isfinite(theta).all(1)
                metric = torch.full_like(metric, math.nan)
                if live.any():
                    metric[live] = start_metric(ds, theta[live], train_runs, sc.episodes, device).to(metric)
        slices = ds.run_slices()
        # Real training, for scale: the data's mean curve, and the steps its runs took to reach one generated step.
        unit = "optimiser steps" if task.kind == "supervised" else "environment steps"
        training_curve = _training_curve(ds, train_runs, slices) | {"step_unit": unit}
        report["recursive"] = {
            "prompt": float(prompts[best]),
            "mean_return": curve,
            "failed_fraction": failed_curve,
            "training_curve": training_curve,
        }
        report["training_equivalent"] = {
            "one_step": report["one_step"]["mean_return"],
            "steps": _training_equivalent(ds, train_runs, report["one_step"]["mean_return"], higher),
            "step_unit": unit,
        }
        timings["recursive_s"] = time.time() - t

        # ---------------------------------------------------------------- baselines
        t = time.time()
        say("baselines (retrieval, noise, identity) and the novelty audit ...")
        pool_rows = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in train_runs])
        pool_rows = pool_rows[ds.valid_mask()[pool_rows]]
        pool_metric = ds.data["metric"][pool_rows].float()
        nearest = pool_rows[torch.argmin((pool_metric[None] - prompts[:, None]).abs(), dim=1)]  # (P,)
        retrieved = ds.data["params"][nearest].float()  # (P, D)
        # A retrieved checkpoint is deployed with its own VecNormalize statistics (it fits no other).
        retr_metric = evaluate(retrieved, sc.seed + 2, nearest)  # (P,)
        retr = retr_metric[None, :, None].expand(k, p, 1)
        g = torch.Generator().manual_seed(sc.seed + 5)
        scale = sc.noise_scale * gen.normalizer.std.cpu()
        noisy = retrieved[None].expand(k, p, d) + scale * torch.randn(k, p, d, generator=g)
        noise = evaluate(noisy.reshape(-1, d), sc.seed + 2, nearest.repeat(k)).reshape(k, p, 1)
        ident = init_metric[:, None, None].expand(k, p, 1)
        # retrieval is one network per prompt, the same for every init: its spread over inits is none,
        # and a zero-width interval would claim a certainty that one evaluation does not have
        retrieval = _summary(prompts, retr, best, task.reward_threshold, higher)
        retrieval["prompt_alignment_r2_ci95"] = [float("nan"), float("nan")]
        report["baselines"] = {
            "retrieval": retrieval,
            "noise": _summary(prompts, noise, best, task.reward_threshold, higher) | {"scale": sc.noise_scale},
            "identity": _summary(prompts, ident, best, task.reward_threshold, higher),
        }
        timings["baselines_s"] = time.time() - t

        # ---------------------------------------------------------------- novelty and init fidelity
        t = time.time()
        report |= _novelty(
            ds,
            gen,
            samples[:, best, 0],
            inits,
            retrieved[best : best + 1].expand(k, d),
            noisy[:, best],
            pool_rows,
            train_runs,
            test_runs,
            sc.seed + 6,
        )
        timings["novelty_s"] = time.time() - t
        report["timings"] = timings
        report["config"] = to_dict(sc)
        report["model"] = str(Path(model_dir).resolve())
        # as the report's folder reaches it: a copied or moved experiment still finds its own model
        report["model_relative"] = os.path.relpath(Path(model_dir).resolve(), out.resolve())
        # which weights were swept: `info` and `compare` tell a report of an earlier save of the same folder
        report["model_step"] = info["meta"].get("step")
        report["model_save_id"] = info.get(SAVE_ID)
        atomic_write_json(out / "report.json", report)
        from rl_gpt.sweep.plot import plot_sweep

        plot_sweep(report, out / "sweep.png")
        _log_wandb(cfg, report, out, info["meta"].get("config") or {}, ds.root)
        return report


def _rerank_report(
    ranker: MetricRanker, candidates: int, predicted: torch.Tensor, achieved: torch.Tensor
) -> dict[str, Any]:
    """How the ranked samples were chosen, and how well the ranker predicted what they achieved."""
    fit = {key: value for key, value in ranker.fit_info.items() if key != "train_runs"}
    ok = torch.isfinite(predicted) & torch.isfinite(achieved)
    error = (predicted[ok] - achieved[ok].double()).pow(2).mean().sqrt() if ok.any() else torch.tensor(float("nan"))
    return {"candidates": candidates, "ranker": fit, "rmse_on_chosen": float(error)}


def _init_ids(sc: SweepConfig, train_runs: list[int], test_runs: list[int], k: int) -> dict[str, Any]:
    """What identifies each init: dataset run ids (train / heldout) or the seeds of unseen random inits."""
    if sc.init_source == "unseen":  # random_inits seeds init k with sweep.init_seed + k
        return {"seeds": list(range(sc.init_seed, sc.init_seed + k))}
    return {"runs": list((train_runs if sc.init_source == "train" else test_runs)[:k])}


def _inits(
    sc: SweepConfig, task: TaskConfig, ds: CheckpointDataset, train_runs: list[int], test_runs: list[int]
) -> torch.Tensor:
    """The sweep's start networks: unseen random inits, or the step-0 networks of the model's own runs."""
    if sc.init_source == "unseen":
        inits = random_inits(task, sc.inits, sc.init_seed)
        seen = training_init_matches(inits, ds, train_runs)
        if seen:
            pairs = ", ".join(f"init {k} (seed {sc.init_seed + k}) is run {r}'s" for k, r in list(seen.items())[:3])
            raise ConfigError(
                f"sweep.init_seed={sc.init_seed}: {len(seen)} of the {sc.inits} 'unseen' inits are training runs' own "
                f"step-0 networks ({pairs}{', ...' if len(seen) > 3 else ''}), which the generator learnt from; "
                "choose a sweep.init_seed whose seeds no collection used (the default is 1000000), or "
                "sweep.init_source=train to sweep training inits on purpose"
            )
        return inits
    runs = (train_runs if sc.init_source == "train" else test_runs)[: sc.inits]
    if not runs:
        raise ValueError("sweep.init_source=heldout: the model has no held-out runs (train.test_fraction was 0)")
    slices = ds.run_slices()
    return ds.data["params"][torch.tensor([slices[r].start for r in runs])].float()


def _training_curve(ds: CheckpointDataset, runs: list[int], slices: dict[int, slice]) -> dict[str, list[float]]:
    """The dataset's mean metric per checkpoint index over ``runs``: real training's learning curve."""
    length = min(slices[r].stop - slices[r].start for r in runs)
    metric = torch.stack([ds.data["metric"][slices[r]][:length] for r in runs]).float()
    steps = ds.data["step"][slices[runs[0]]][:length].float()
    return {"step": steps.tolist(), "mean_return": metric.nanmean(0).tolist()}


# The training checkpoints the novelty audit compares with: all of them up to this many weights (float32).
NOVELTY_POOL_FLOATS = 250_000_000


def _novelty(
    ds: CheckpointDataset,
    gen: ParameterGenerator,
    generated: torch.Tensor,
    inits: torch.Tensor,
    retrieved: torch.Tensor,
    noisy: torch.Tensor,
    pool_rows: torch.Tensor,
    train_runs: list[int],
    test_runs: list[int],
    seed: int = 0,
) -> dict[str, Any]:
    try:
        from rl_gpt.sweep.novelty import init_fidelity, nearest_aligned, novelty_ratio, proxy_features
    except ImportError:  # pragma: no cover - novelty audit not installed
        return {"novelty": None, "init_fidelity": None, "behavioural_novelty": None}
    layout, slices = ds.layout, ds.run_slices()
    held_runs = test_runs
    if not held_runs:  # no held-out runs (train.test_fraction=0): two training runs stand in, outside the pool
        held_runs = train_runs[-2:]  # (inside it, their own checkpoints would be their nearest: every ratio 0/0)
        stand_ins = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in held_runs])
        pool_rows = pool_rows[~torch.isin(pool_rows, stand_ins)]
    g = torch.Generator().manual_seed(0)
    # Every training checkpoint, so that a copy of one scores 0; a random subset only past ~1 GB of weights.
    cap = max(5000, NOVELTY_POOL_FLOATS // layout.numel)
    if len(pool_rows) > cap:
        pool_rows = pool_rows[torch.randperm(len(pool_rows), generator=g)[:cap]]
    pool = ds.data["params"][pool_rows].float()
    held_final = ds.data["params"][torch.tensor([slices[r].stop - 1 for r in held_runs])].float()
    held_init = ds.data["params"][torch.tensor([slices[r].start for r in held_runs])].float()
    finite = torch.isfinite(generated).all(1)
    out = {"novelty": {}, "init_fidelity": {}}
    pairs = {}  # method -> (networks, their nearest training checkpoints) for behavioural novelty
    features = proxy_features(layout, pool)  # once: on MNIST's 26,000 checkpoints it takes seconds and GBs
    reference = nearest_aligned(layout, held_final, pool, pool_features=features)  # once for every method
    for name, vecs in (("generator", generated[finite]), ("retrieval", retrieved), ("noise", noisy)):
        nov = novelty_ratio(layout, vecs, pool, held_final, pool_features=features, heldout_nearest=reference)
        out["novelty"][name] = nov["ratio"]
        pairs[name] = (vecs, pool[torch.as_tensor(nov["nn_index_generated"], dtype=torch.int64)])
    out["novelty"]["nn_dist_heldout"] = nov["nn_dist_heldout"]
    pairs["retrieval"] = tuple(v[:1] for v in pairs["retrieval"])  # one checkpoint, repeated per init
    pairs["identity"] = (inits, pool[nearest_aligned(layout, inits, pool, pool_features=features)[1]])
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
    train_inits = ds.data["params"][torch.tensor([slices[r].start for r in others])].float()
    out["init_fidelity"] = {
        "generator": fidelity(generated[finite], inits[finite], inits),
        "real_training": fidelity(held_final[held], held_init[held], train_inits),
        "real_training_runs": len(held),
        "real_training_other_inits": len(others),
    }
    return out


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


def _one_step_logged(report: dict[str, Any]) -> dict[str, float]:
    """The one-step numbers under names that say what they are: ``one_step_<metric>`` (a classifier's
    test loss and error both), the solved fraction where the task has a threshold, and a classifier
    task's references (the data's best checkpoint, the held-out runs' median end)."""
    one = report["one_step"]
    logged = {f"one_step_{report['metric']['name']}": one["mean_return"]}
    solved = one.get("solved_fraction")
    if isinstance(solved, float) and math.isfinite(solved):  # undefined without a threshold: not logged as NaN
        logged["solved_fraction"] = solved
    classifier = one.get("classifier") or {}
    for metric in ("test_loss", "test_error"):
        if metric in classifier:
            logged[f"one_step_{metric}"] = classifier[metric]
        for reference in ("dataset_best", "heldout_final"):
            value = (classifier.get(reference) or {}).get(metric)
            if value is not None:
                logged[f"{reference}_{metric}"] = value
    return logged


def _log_wandb(
    cfg: ExperimentConfig, report: dict[str, Any], out: Path, model_config: dict[str, Any], dataset_dir: Path
) -> None:
    """The sweep as a W&B run: config to compare sweeps by (the model's own settings with its dataset's
    task and collect sections, which weights were swept, the sweep's settings), its headline numbers as
    the summary, and the plot. Grouped with the model's experiment (the folder holding ``model/``), which
    a saved config's ``out`` may no longer name. The report is saved before this: if W&B fails, say so
    and keep the sweep's result."""
    from rl_gpt.wandb_run import log_result, with_dataset_sections

    model = {"path": report["model"], "step": report.get("model_step"), "save_id": report.get("model_save_id")}
    config = with_dataset_sections({k: v for k, v in model_config.items() if k != "wandb"}, dataset_dir)
    config |= {"sweep": report["config"], "model": model}
    experiment = Path(report["model"]).parent.name or None
    images = {"sweep": out / "sweep.png"}
    log_result(
        cfg,
        "sweep",
        out,
        config,
        sweep_summary(report),
        images,
        experiment,
        f"the sweep is saved in {out} (report.json)",
    )


def sweep_summary(report: dict[str, Any]) -> dict[str, float]:
    """A sweep report's headline numbers, flat and finite, as W&B logs them: R² and its interval, the
    one-step result, the baselines' R², novelty, init fidelity and the share of failed networks."""
    logged: dict[str, Any] = {"prompt_alignment_r2": report["prompt_alignment_r2"], **_one_step_logged(report)}
    low, high = report.get("prompt_alignment_r2_ci95") or (None, None)
    logged |= {"prompt_alignment_r2_ci95_low": low, "prompt_alignment_r2_ci95_high": high}
    logged["failed_fraction"] = report.get("failed_fraction")
    unranked = (report.get("rerank") or {}).get("without_rerank") or {}
    logged["prompt_alignment_r2_unranked"] = unranked.get("prompt_alignment_r2")
    for name, baseline in (report.get("baselines") or {}).items():
        logged[f"{name}/prompt_alignment_r2"] = baseline.get("prompt_alignment_r2")
    for name, value in (report.get("novelty") or {}).items():
        logged[f"novelty/{name}"] = value
    for name, value in (report.get("behavioural_novelty") or {}).items():
        logged[f"behavioural_novelty/{name}"] = (value or {}).get("fraction")
    fidelity = report.get("init_fidelity") or {}
    logged |= {f"init_fidelity/{k}": fidelity.get(k) for k in ("generator", "real_training")}
    recursive = (report.get("recursive") or {}).get("mean_return") or []
    logged |= {f"recursive/step_{i}": v for i, v in enumerate(recursive)}
    return {k: float(v) for k, v in logged.items() if isinstance(v, (int, float)) and math.isfinite(v)}
