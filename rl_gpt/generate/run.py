"""``rl-gpt generate``: prompt a return, get policies for a network the generator never saw.

The networks are sampled as :func:`~rl_gpt.generate.sample.generate_params` samples them (``sample.py``);
this module measures them and writes them: each as a file, a ``generated.json`` per target, and for a
sweep of targets a summary and its figure (``outputs.py`` clears what an earlier call left there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rl_gpt.config import TaskConfig
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.dataset_metric import evaluate_flat
from rl_gpt.evaluate.seeds import Purpose, evaluation_seed
from rl_gpt.generate.export import export_safetensors, export_sb3
from rl_gpt.generate.outputs import previous_outputs, remove_stale, retire_records, target_folders
from rl_gpt.generate.plot import plot_targets
from rl_gpt.generate.sample import GeneratedParams, generate_params, sample_networks
from rl_gpt.generate.start import init_seed, load_start
from rl_gpt.generate.targets import check_fraction_targets as check_fraction_targets  # imported from here too
from rl_gpt.io import atomic_write_json, ensure_report_dir, ensure_writable_dir, exclusive_folder
from rl_gpt.layout import Layout
from rl_gpt.supervised.files import classifier_metadata
from rl_gpt.supervised.metric import supervised_metric

# GeneratedParams, generate_params and load_start live in sample.py and start.py; they are imported from
# here too, as before those modules were split off.
__all__ = ["GeneratedParams", "generate", "generate_params", "load_start"]


def generate(
    model_dir: str | Path,
    target: float | Sequence[float],
    out: str | Path,
    from_zip: str | None = None,
    seed: int = 0,
    num: int = 1,
    guidance: float | None = None,
    steps: int | None = None,
    episodes: int = 16,
    dataset: str | Path | None = None,
    data_root: str | Path | None = None,
    average: int | None = None,
    calibrated: bool = True,
    extrapolate: bool = False,
    rerank: int | None = None,
) -> dict[str, Any]:
    """Sample ``num`` policies prompted with ``target``; save each as SB3 .zip plus ``generated.json``.

    ``target`` may be several values: a return sweep from the same start, sampled in one batch.
    Each target then gets a folder ``target_<value>/`` laid out as a single target's ``out``, and
    ``out`` holds a summary ``generated.json`` and ``generated.png`` (prompted against achieved).

    ``guidance`` defaults to the scale the model's config sweeps with (``sweep.guidance``: 2 for the
    CartPole presets, 1.5 for digits); ``dataset`` is used instead of the model's recorded one; each
    policy is the mean of ``average`` draws (see :meth:`ParameterGenerator.sample`), by default as many
    as the model's config sweeps with (``sweep.average``: 8 for digits, 1 elsewhere), with ``steps``
    sampling steps (default: ``sweep.steps``). With ``rerank`` N > 1 each policy is the one of N
    candidates whose metric, as the model's ranker predicts it, is nearest the conditioning prompt
    (default: ``sweep.rerank``; a missing ranker is fitted and stored in the model directory first).
    Where the model has a ``calibration.json`` measured
    with these settings, the generator is conditioned on its map of ``target`` (``calibrated=False``:
    on ``target`` itself). A target outside the training data's metric range is conditioned on the
    range's nearest end, with a warning (``extrapolate=True``: on the target as given).
    ``from_zip`` is the start network's file (an SB3 ``.zip``, or a classifier's safetensors).
    :func:`generate_params` samples the same networks without writing them.
    """
    from rl_gpt.config import task_config

    claimed = contextlib.ExitStack()

    def claim_out() -> None:  # after the checks (a refused call leaves no empty folder), before the slow part
        nonlocal out
        out = ensure_report_dir(out)
        claimed.enter_context(exclusive_folder(out, "generate", "--out"))  # a second generate here is refused

    with claimed:
        # sample: every check, then --out claimed, then the start's metric and the sampling
        result, info, ds = sample_networks(
            model_dir,
            target,
            from_zip,
            seed=seed,
            num=num,
            guidance=guidance,
            steps=steps,
            episodes=episodes,
            dataset=dataset,
            data_root=data_root,
            average=average,
            calibrated=calibrated,
            extrapolate=extrapolate,
            rerank=rerank,
            before_sampling=claim_out,
        )
        out = Path(out)
        targets = result.targets
        stale = previous_outputs(out)
        start_file = {Path(from_zip)} if from_zip else set()  # generating again from a file of the last call

        # measure: the start and every network. On the outputs' start states (a sweep's, for sweep.seed =
        # --seed), so that start and achieved are compared episode by episode and `rl-gpt evaluate FILE
        # --seed S` with the eval_seed below reproduces both.
        runs = info["meta"]["train_runs"]
        at = evaluation_seed(seed, Purpose.SWEEP)
        start_return = float(evaluate_flat(ds, result.start[None], episodes, at, runs).mean[0])
        # the data files where they are now (`--data-root`), which the exported classifiers then record
        task = task_config(info["spec"]["task"] | {"data_root": ds.spec["task"].get("data_root")})
        achieved = _measure(task, ds, result.params.reshape(len(targets) * num, -1), episodes, at, runs)

        # write: each target's networks and its generated.json
        shared = _shared_record(task, info, result, model_dir, from_zip, seed, episodes, at, start_return, extrapolate)
        names = target_folders(targets)
        # from here files are replaced: no record may describe the old ones
        retire_records(out, [out / n for n in names] if len(targets) > 1 else [])
        records = []
        for j in range(len(targets)):
            folder = out if len(targets) == 1 else ensure_writable_dir(out / names[j])
            records.append(_write_target(j, folder, task, result, achieved, shared, seed))
        if len(targets) == 1:
            remove_stale(stale, out, records[0], keep=start_file)
            return records[0]

        # a sweep of targets: the summary and its figure
        summary = _write_summary(out, shared, result, achieved.mean, names)
        remove_stale(stale, out, summary, keep=start_file)
        return summary


class _Achieved(NamedTuple):
    """What the generated networks (N,) achieved."""

    mean: torch.Tensor  # (N,) float64: the metric, over episodes for policies
    std: torch.Tensor  # (N,) float64: its spread over episodes (zeros for classifiers: one test split)
    test_metrics: dict[str, torch.Tensor] | None  # classifiers: test_loss and test_error (N,)


def _measure(
    task: TaskConfig, ds: CheckpointDataset, params: torch.Tensor, episodes: int, at: int, runs: list[int]
) -> _Achieved:
    """The metric of each network of ``params`` (N, D), measured as the start's (rollouts from seed ``at``)."""
    if task.kind == "supervised":  # both test metrics in one pass, as `rl-gpt evaluate` and sweeps report them
        both = supervised_metric(ds.spec, params)
        return _Achieved(both["metric"].double(), torch.zeros(len(params), dtype=torch.float64), both)
    res = evaluate_flat(ds, params, episodes, at, runs)
    return _Achieved(res.mean, res.std, None)


def _shared_record(
    task: TaskConfig,
    info: dict[str, Any],
    result: GeneratedParams,
    model_dir: str | Path,
    from_zip: str | None,
    seed: int,
    episodes: int,
    at: int,
    start_return: float,
    extrapolate: bool,
) -> dict[str, Any]:
    """The fields of ``generated.json`` that every target's record and the summary share."""
    low, high = result.training_range
    initialiser = "the classifier's own" if task.kind == "supervised" else "SB3's"
    return {
        "task": task.name,
        "env_id": task.env_id,
        "metric": info["spec"]["metric"]["name"],
        "calibrated": result.calibrated,
        "training_range": [low, high],
        "extrapolate": extrapolate,
        "guidance": result.guidance,
        "steps": result.steps,
        "average": result.average,
        "rerank": result.rerank,
        "episodes": None if task.kind == "supervised" else episodes,  # classifiers: the whole test split
        # the rollouts' seed: `rl-gpt evaluate FILE --episodes E --seed S` measures a file alike
        "eval_seed": None if task.kind == "supervised" else at,
        "start": from_zip
        or f"random init ({initialiser} initialiser, seed {init_seed(info, seed)}: the sweep's unseen init {seed})",
        "start_return": start_return,
        # m, the start's metric the generator was given: measured as the dataset's labels were (their
        # episodes and seeds), so it may differ from start_return, measured as these outputs are
        "start_metric_conditioned": result.start_metric,
        "model": str(Path(model_dir).resolve()),
    }


def _relative(model: str, folder: Path) -> str:
    """The model as ``folder`` reaches it: a copied or moved experiment still finds its own model."""
    return os.path.relpath(model, folder.resolve())


def _write_target(
    j: int,
    folder: Path,
    task: TaskConfig,
    result: GeneratedParams,
    achieved: _Achieved,
    shared: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Write target ``j``'s networks and their ``generated.json`` into ``folder``; returns the record."""
    num = result.params.shape[1]
    rows = slice(j * num, (j + 1) * num)  # target j's networks among all targets' (targets * num,)
    items = _export(task, result.layout, result.params[j], achieved.mean[rows], achieved.std[rows], folder, seed)
    if result.predicted is not None:
        for item, value in zip(items, result.predicted[j].tolist(), strict=True):
            item["predicted_return"] = value  # the ranker's prediction for the kept candidate
    if achieved.test_metrics is not None:
        for k, item in enumerate(items):
            item |= {
                "test_loss": float(achieved.test_metrics["test_loss"][rows][k]),
                "test_error": float(achieved.test_metrics["test_error"][rows][k]),
            }
    record = {
        **shared,
        "target_return": result.targets[j],
        # the prompt given to the generator: the target, or calibration.json's map of it, held inside the
        # training range unless extrapolating
        "conditioned_on": float(result.conditioned_on[j]),
        "policies": items,
    }
    record["model_relative"] = _relative(record["model"], folder)
    atomic_write_json(folder / "generated.json", record)
    return record


def _write_summary(
    out: Path, shared: dict[str, Any], result: GeneratedParams, achieved: torch.Tensor, names: list[str]
) -> dict[str, Any]:
    """A sweep of targets' ``generated.json`` in ``out`` (what each target achieved on average, and its
    folder) and ``generated.png``; ``achieved`` is (targets * num,)."""
    num = result.params.shape[1]
    achieved = achieved.reshape(len(result.targets), num)
    summary = {
        **shared,
        "target_return": result.targets,
        "conditioned_on": result.conditioned_on.tolist(),
        "achieved_mean": achieved.nanmean(1).tolist(),
        "folders": names,
        "policies_per_target": num,
    }
    summary["model_relative"] = _relative(summary["model"], out)
    atomic_write_json(out / "generated.json", summary)
    plot_targets(summary, achieved, out / "generated.png")
    return summary


def _export(
    task: TaskConfig,
    layout: Layout,
    params: torch.Tensor,
    achieved: torch.Tensor,
    std: torch.Tensor,
    folder: Path,
    seed: int,
) -> list[dict[str, Any]]:
    """Write each network of ``params`` (N, D) into ``folder``; the records of generated.json's ``policies``."""
    supervised = task.kind == "supervised"
    items = []
    for i in range(params.shape[0]):
        path = folder / (f"classifier_{i:03d}.safetensors" if supervised else f"policy_{i:03d}.zip")
        written = bool(torch.isfinite(params[i]).all())  # a non-finite sample is recorded with no file
        if not written:
            path.unlink(missing_ok=True)  # never point at a stale file from an earlier call
        elif supervised:  # a state_dict that loads into rl_gpt.supervised.build_classifier(task.network)
            export_safetensors(layout, params[i], path, classifier_metadata(task.network, task.data_root))
        else:
            export_sb3(task, layout, params[i], path, seed=seed)
        items.append(
            {
                "file": path.name if written else None,
                "achieved_return": float(achieved[i]),
                "achieved_std": float(std[i]),
            }
        )
    return items
