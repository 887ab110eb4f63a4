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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl_gpt.collect.inits import random_inits, training_init_matches
from rl_gpt.config import ConfigError, ExperimentConfig, SweepConfig, TaskConfig, task_config, to_dict
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.devices import machine_record, resolve_device
from rl_gpt.evaluate.alignment import count_failed_as, worst_prompt
from rl_gpt.evaluate.dataset_metric import evaluate_flat, start_metric
from rl_gpt.evaluate.seeds import Purpose, evaluation_seed
from rl_gpt.io import SAVE_ID, atomic_write_json, ensure_report_dir, exclusive_folder
from rl_gpt.sweep.audit import novelty_audit
from rl_gpt.sweep.summary import classifier_metrics, summarize, training_curve, training_equivalent
from rl_gpt.sweep.wandb_log import log_sweep
from rl_gpt.train.calibration import conditioning_prompts
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.modelfile import load_generator, open_dataset
from rl_gpt.train.probe import choose_candidates, prompt_grid, run_prompts, sample_candidates
from rl_gpt.train.ranker import MetricRanker, ranker_for
from rl_gpt.wandb_run import check_login

__all__ = ["sweep"]


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
    prompts = prompt_grid(spec, gen, sc.prompts, cfg.task.metric_range, sc.clamp_prompts)
    train_runs = info["meta"]["train_runs"]
    test_runs = info["meta"]["test_runs"]
    inits = _inits(sc, task, ds, train_runs, test_runs)  # (K, D): refused here if a training run's own
    out = ensure_report_dir(out, "--out or out=")  # after the checks: a refused sweep leaves no empty folder
    with exclusive_folder(out, "sweep", "--out"):  # a second sweep into the same folder is refused
        higher = spec["metric"]["higher_is_better"]
        best = int(torch.argmax(prompts) if higher else torch.argmin(prompts))
        say = print if progress else (lambda *a, **k: None)
        if (out / "report.json").exists():  # said once the sweep will run: a researcher may want to keep it
            keep = "--out DIR keeps both"
            say(f"{out / 'report.json'} holds an earlier sweep, which this one replaces when it ends ({keep})")

        ranker = ranker_for(model_dir, ds, gen.layout, train_runs, test_runs, say) if sc.rerank > 1 else None
        gen.to(device)  # sampling runs there; everything it returns is on the CPU

        def evaluate(
            params: torch.Tensor, stats_rows: torch.Tensor | None = None, purpose: Purpose = Purpose.SWEEP
        ) -> torch.Tensor:
            seed = evaluation_seed(sc.seed, purpose)
            return evaluate_flat(ds, params, sc.episodes, seed, train_runs, stats_rows=stats_rows, device=device).mean

        # ---------------------------------------------------------------- inits never seen in collection
        # (K,) reported, on the start states of every other row: identity is the init, measured alike
        init_metric = evaluate(inits)
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
        achieved = evaluate(samples.reshape(-1, d)).reshape(k, p, s)
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
        report |= summarize(prompts, achieved, best, task.reward_threshold, higher)
        if ranker is not None:  # what ranking bought: the first candidate of each sample, unranked, scored alike
            unranked = evaluate(candidates[..., 0, :].reshape(-1, d)).reshape(k, p, s)
            report["rerank"] = _rerank_report(ranker, sc.rerank, predicted, achieved) | {
                "without_rerank": summarize(prompts, unranked, best, task.reward_threshold, higher)
                | {"achieved": unranked.tolist()}
            }
        if task.kind == "supervised":
            report["one_step"]["classifier"] = classifier_metrics(ds, samples[:, best].reshape(-1, d), test_runs)
        solved = report["one_step"]["solved_fraction"]
        say(
            f"generator: R2 {report['prompt_alignment_r2']:.3f}, one-step {report['one_step']['mean_return']:.4g} "
            f"at prompt {float(prompts[best]):.4g}" + ("" if solved != solved else f", solved {solved:.0%}")
        )

        # ---------------------------------------------------------------- recursive prompting
        t = time.time()
        if sc.recursive:
            say(f"recursive prompting, {sc.recursive} steps ...")
        worst = worst_prompt(prompts, higher)
        sampler = (sc.steps, sc.guidance, sc.seed + 3, sc.average, ranker, sc.rerank)

        def measure(theta: torch.Tensor) -> torch.Tensor:
            return evaluate(theta, purpose=Purpose.RECURSIVE)

        def relabel(theta: torch.Tensor) -> torch.Tensor:
            return start_metric(ds, theta, train_runs, sc.episodes, device)

        steps = sc.recursive, cond[best : best + 1], sampler
        curve, failed_curve = _recursive(gen, inits, init_m, init_metric, worst, steps, measure, relabel)
        slices = ds.run_slices()
        # Real training, for scale: the data's mean curve, and the steps its runs took to reach one generated step.
        unit = "optimiser steps" if task.kind == "supervised" else "environment steps"
        report["recursive"] = {
            "prompt": float(prompts[best]),
            "mean_return": curve,
            "failed_fraction": failed_curve,
            "training_curve": training_curve(ds, train_runs, slices) | {"step_unit": unit},
        }
        report["training_equivalent"] = {
            "one_step": report["one_step"]["mean_return"],
            "steps": training_equivalent(ds, train_runs, report["one_step"]["mean_return"], higher),
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
        retr_metric = evaluate(retrieved, nearest)  # (P,)
        retr = retr_metric[None, :, None].expand(k, p, 1)
        g = torch.Generator().manual_seed(sc.seed + 5)
        scale = sc.noise_scale * gen.normalizer.std.cpu()
        noisy = retrieved[None].expand(k, p, d) + scale * torch.randn(k, p, d, generator=g)
        noise = evaluate(noisy.reshape(-1, d), nearest.repeat(k)).reshape(k, p, 1)
        ident = init_metric[:, None, None].expand(k, p, 1)
        # retrieval is one network per prompt, the same for every init: its spread over inits is none,
        # and a zero-width interval would claim a certainty that one evaluation does not have
        retrieval = summarize(prompts, retr, best, task.reward_threshold, higher)
        retrieval["prompt_alignment_r2_ci95"] = retrieval["prompt_alignment_r2_better_half_ci95"] = [math.nan, math.nan]
        report["baselines"] = {
            "retrieval": retrieval,
            "noise": summarize(prompts, noise, best, task.reward_threshold, higher) | {"scale": sc.noise_scale},
            "identity": summarize(prompts, ident, best, task.reward_threshold, higher),
        }
        timings["baselines_s"] = time.time() - t

        # ---------------------------------------------------------------- novelty and init fidelity
        t = time.time()
        methods = {  # at the best prompt: each method's networks and what they achieved
            "generator": (samples[:, best, 0], achieved[:, best, 0]),
            "retrieval": (retrieved[best : best + 1].expand(k, d), retr_metric[best : best + 1].expand(k)),
            "noise": (noisy[:, best], noise[:, best, 0]),
        }
        report |= novelty_audit(ds, methods, inits, pool_rows, train_runs, test_runs, sc.seed + 6)
        timings["novelty_s"] = time.time() - t
        report["timings"] = timings
        report["scoring"] = {  # how this report scored: `compare` names a difference from an older report's
            "failures": "far end of the prompt grid",
            "evaluation_seed": evaluation_seed(sc.seed, Purpose.SWEEP),
            "recursive_seed": evaluation_seed(sc.seed, Purpose.RECURSIVE),
        }
        report["config"] = to_dict(sc)
        report["model"] = str(Path(model_dir).resolve())
        # as the report's folder reaches it: a copied or moved experiment still finds its own model
        report["model_relative"] = os.path.relpath(Path(model_dir).resolve(), out.resolve())
        # which weights were swept: `info` and `compare` tell a report of an earlier save of the same folder
        report["model_step"] = info["meta"].get("step")
        report["model_save_id"] = info.get(SAVE_ID)
        report["machine"] = machine_record(device)
        atomic_write_json(out / "report.json", report)
        from rl_gpt.sweep.plot import plot_sweep

        plot_sweep(report, out / "sweep.png")
        log_sweep(cfg, report, out, info["meta"].get("config") or {}, ds.root)
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


def _recursive(
    gen: ParameterGenerator,
    inits: torch.Tensor,
    init_m: torch.Tensor,
    init_metric: torch.Tensor,
    worst: float,
    steps: tuple[int, torch.Tensor, tuple[Any, ...]],
    measure: Callable[[torch.Tensor], torch.Tensor],
    relabel: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[list[float], list[float]]:
    """Recursive prompting: ``steps`` = (count, the best prompt as conditioned (1,), the sampler's
    settings); each step updates the last one's networks, conditioned on their metric as labelled
    (``relabel``). Returns the mean achieved metric (``measure``) per step, the inits' first, and the
    failed share per step.

    A network that failed (non-finite weights or metric) is not updated again: the sampler refuses
    non-finite inputs. It stays failed, scored as the worst prompt, as the one-step mean scores it.
    """
    count, prompt, sampler = steps
    scored, failed = count_failed_as(worst, init_metric)
    theta, metric, curve, failed_curve = inits, init_m, [float(scored.mean())], [float(failed.double().mean())]
    for i in range(count):
        alive = torch.isfinite(theta).all(1) & torch.isfinite(metric)
        updated = torch.full_like(theta, math.nan)
        reached = torch.full((len(theta),), math.nan, dtype=init_metric.dtype, device=init_metric.device)
        if alive.any():
            rows = slice(None) if alive.all() else alive  # all alive: the same batches and draws as ever
            updated[rows] = run_prompts(gen, None, theta[rows], metric[rows], prompt, 1, *sampler)[:, 0, 0]
            reached[rows] = measure(updated[rows]).to(reached)
        theta = updated
        scored, failed = count_failed_as(worst, reached)
        curve.append(float(scored.mean()))
        failed_curve.append(float(failed.double().mean()))
        if i + 1 < count:  # the next step's input; the last step has none
            live = torch.isfinite(theta).all(1)
            metric = torch.full_like(metric, math.nan)
            if live.any():
                metric[live] = relabel(theta[live]).to(metric)
    return curve, failed_curve
