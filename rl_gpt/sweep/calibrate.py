"""``rl-gpt calibrate``: measure the generator's prompt bias on training runs' inits and store the fix.

The measurement uses the sweep's sampler and evaluation settings (``sweep.*``), so the calibration
holds for the sweeps and ``generate`` calls made with them; see :mod:`rl_gpt.train.calibration`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from rl_gpt.config import ExperimentConfig
from rl_gpt.devices import resolve_device
from rl_gpt.evaluate.alignment import count_failed_as, worst_prompt
from rl_gpt.evaluate.dataset_metric import evaluate_flat
from rl_gpt.evaluate.seeds import Purpose, evaluation_seed
from rl_gpt.io import SAVE_ID, ensure_writable_dir
from rl_gpt.sweep.plot import plot_calibration
from rl_gpt.train.calibration import PromptCalibration, fit_calibration, load_calibration, weights_fingerprint
from rl_gpt.train.modelfile import ModelFileError, load_generator, open_dataset, read_model_info
from rl_gpt.train.probe import prompt_grid, run_prompts
from rl_gpt.train.ranker import ranker_for
from rl_gpt.wandb_run import check_login, log_result, with_dataset_sections

__all__ = ["calibrate", "ensure_calibrated"]


def calibrate(
    cfg: ExperimentConfig,
    model_dir: str | Path,
    progress: bool = True,
    dataset: str | Path | None = None,
    data_root: str | Path | None = None,
) -> PromptCalibration:
    """Fit the prompt calibration of the model in ``model_dir`` and write ``model_dir/calibration.json``.

    Conditions on ``sweep.calibration_prompts`` prompts over the metric range (held inside the
    training data's range unless ``sweep.clamp_prompts`` is false, as the sweep does) from the step-0
    networks of up to ``sweep.calibration_inits`` training runs (never the held-out runs, nor the
    sweep's unseen inits), ``sweep.samples`` samples each, evaluated as the sweep evaluates.
    ``dataset``, ``data_root``: ones the user named, as for :func:`rl_gpt.sweep.run.sweep`.
    """
    sc = cfg.sweep
    device = resolve_device(sc.device or cfg.train.device, "sweep.device" if sc.device else "train.device")
    t = time.time()
    gen, info = load_generator(model_dir)
    # the weights measured: a training beside this command may save new ones meanwhile, which it must not claim
    fingerprint = weights_fingerprint(gen.model.state_dict())
    ensure_writable_dir(model_dir, "--model")  # calibration.json goes there: refused before the work
    check_login(cfg)  # wandb.mode=online without credentials fails now, not after the calibration
    ds = open_dataset(model_dir, info, dataset, cfg.dataset_dir, cfg.task, data_root)
    train_runs = info["meta"]["train_runs"]
    runs = train_runs[: sc.calibration_inits]
    slices = ds.run_slices()
    rows = torch.tensor([slices[r].start for r in runs])
    theta, metric = ds.data["params"][rows].float(), ds.data["metric"][rows].float()  # labelled as trained on
    asked = prompt_grid(ds.spec, gen, sc.calibration_prompts, cfg.task.metric_range, sc.clamp_prompts).sort().values
    grid = asked
    if sc.clamp_prompts:  # the sweep conditions only on prompts in the training range: spread the grid over that
        ends = asked[[0, -1]].clamp(gen.normalizer.metric_low, gen.normalizer.metric_high)
        grid = torch.linspace(float(ends[0]), float(ends[1]), len(asked))
    if progress:
        print(
            f"calibrating prompts from {len(runs)} training runs' inits: {len(grid)} prompts x {sc.samples} samples "
            f"(guidance {sc.guidance:g}, {sc.steps} steps, average {sc.average}, rerank {sc.rerank})",
            flush=True,
        )
    say = print if progress else (lambda *a, **k: None)
    test_runs = info["meta"]["test_runs"]
    ranker = ranker_for(model_dir, ds, gen.layout, train_runs, test_runs, say) if sc.rerank > 1 else None
    gen.to(device)
    sampler = (sc.steps, sc.guidance, sc.seed + 7, sc.average, ranker, sc.rerank)
    out = run_prompts(gen, None, theta, metric, grid, sc.samples, *sampler)
    k, p, s, d = out.shape
    at = evaluation_seed(sc.seed, Purpose.CALIBRATION)
    achieved = evaluate_flat(ds, out.reshape(-1, d), sc.episodes, at, train_runs, device=device).mean
    # A failed sample achieved nothing: the worst prompt. (R² scores it at the farther end of the grid, so
    # that it never counts as a hit; a map of what prompts achieve must not learn that failing is good.)
    achieved, failed = count_failed_as(worst_prompt(asked, ds.spec["metric"]["higher_is_better"]), achieved)
    sampler = {"guidance": sc.guidance, "steps": sc.steps, "average": sc.average, "rerank": sc.rerank}
    meta: dict[str, Any] = {
        "from": "step 0 of training runs",
        "runs": list(runs),
        **_measurement(cfg, train_runs),
        "failed_fraction": float(failed.double().mean()),
        "seconds": round(time.time() - t, 1),
    }
    cal = fit_calibration(grid, achieved.reshape(k, p, s), sampler, meta)
    cal.model_sha256 = fingerprint
    path = cal.save(model_dir)
    picture = plot_calibration(cal, ds.spec["metric"].get("name", "metric"), Path(model_dir) / "calibration.png")
    if len(set(cal.fitted)) == 1:
        name = ds.spec["metric"].get("name", "metric")
        rho, p_value = cal.meta.get("spearman_rho"), cal.meta.get("spearman_p")
        test = "" if p_value is None else f"; Spearman rho {rho:.2f}, one-sided p {p_value:.2g}"
        warnings.warn(
            f"the achieved {name} did not rise with the prompt on the training runs' "
            f"inits (mean {cal.fitted[0]:.4g}{test}), so this calibration changes no prompt; "
            "the generator ignores its prompt: train it longer or on more runs",
            stacklevel=2,
        )
    if progress:
        pairs = ", ".join(f"{a:.4g}->{b:.4g}" for a, b in zip(cal.prompts, cal.achieved, strict=True))
        print(f"prompt -> mean achieved: {pairs}\ncalibration written to {path} (plot: {picture})")
    _log_wandb(cfg, cal, Path(model_dir), info, ds.root, picture)
    return cal


def _log_wandb(
    cfg: ExperimentConfig,
    cal: PromptCalibration,
    model_dir: Path,
    info: dict[str, Any],
    dataset_dir: Path,
    picture: Path,
) -> None:
    """The calibration as a W&B run beside the model's training run (same group): what it measured with,
    whether its prompts rose (Spearman), whether it changes any prompt, and its plot."""
    model_config = {k: v for k, v in (info["meta"].get("config") or {}).items() if k != "wandb"}
    config = with_dataset_sections(model_config, dataset_dir)
    model = {"path": str(model_dir), "step": info["meta"].get("step"), "save_id": info.get(SAVE_ID)}
    config |= {"sweep": {**cal.sampler, **{k: v for k, v in cal.meta.items() if k != "runs"}}, "model": model}
    summary = {
        "calibration/applied": len(set(cal.fitted)) > 1,  # a flat fit changes no prompt
        "calibration/spearman_rho": cal.meta.get("spearman_rho"),
        "calibration/spearman_p": cal.meta.get("spearman_p"),
        "calibration/failed_fraction": cal.meta.get("failed_fraction"),
        "calibration/seconds": cal.meta.get("seconds"),
    }
    summary = {key: value for key, value in summary.items() if value is not None}
    images = {"calibration": picture}  # left out if its plot could not be drawn
    experiment = model_dir.resolve().parent.name or None
    saved = f"the calibration is saved in {model_dir / 'calibration.json'}"
    inputs = {"dataset": dataset_dir, "model": model_dir}
    log_result(cfg, "calibrate", model_dir, config, summary, images, experiment, saved, inputs)


def ensure_calibrated(cfg: ExperimentConfig, model_dir: str | Path, progress: bool = True) -> PromptCalibration:
    """The model's calibration for the sweep settings of ``cfg``: the stored one if it holds, else a new one.
    ``cfg`` is the training's, whose ``task.data_root`` (if any) its command named.

    A stored calibration is kept if it was measured for the same weights, sampler settings and
    measurement (prompts, inits, samples, episodes, seed), so a resumed demo does not measure it twice.
    """
    sc = cfg.sweep
    try:
        cal = load_calibration(model_dir)
    except ModelFileError:
        cal = None  # a damaged file is measured again
    # one measured before session 32 never had its rise tested: measured again (as a noise staircase it moved prompts)
    tested = cal is not None and "spearman_p" in cal.meta
    if tested and cal.measured_for(model_dir) and cal.matches(sc.guidance, sc.steps, sc.average, sc.rerank):
        wanted = _measurement(cfg, read_model_info(model_dir)["meta"]["train_runs"])
        if all(cal.meta.get(key) == value for key, value in wanted.items()):
            return cal
    return calibrate(cfg, model_dir, progress, data_root=cfg.task.data_root)


def _measurement(cfg: ExperimentConfig, train_runs: list[int]) -> dict[str, Any]:
    """What a calibration measured besides the sampler settings; a stored one with others is measured again."""
    sc = cfg.sweep
    return {
        "inits": min(sc.calibration_inits, len(train_runs)),
        "prompts": sc.calibration_prompts,
        "samples": sc.samples,
        "episodes": sc.episodes,
        "seed": sc.seed,
        "metric_range": cfg.task.metric_range,
        "clamp_prompts": sc.clamp_prompts,
    }
