"""Supervised collection runs (small classifiers checkpointed every K optimiser steps, trained in
batches) and the dataset spec of supervised tasks. The batched test metric of generated weights is
:func:`rl_gpt.supervised.metric.supervised_metric`.

The training itself is :func:`rl_gpt.supervised.train_classifier_runs` (G.pt's
``data_gen/train_mnist.py`` recipe, many runs at once); this module maps an :class:`ExperimentConfig`
onto it the way ``sb3_run.py`` maps one onto Stable-Baselines3. ``collect.timesteps`` is unused
here: ``task.hyperparams.steps`` (or ``epochs``) is the run length, and ``collect.checkpoint_every``
counts optimiser steps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rl_gpt.collect.sb3_run import RunResult, describe_versions, run_seed, sample_hyperparams
from rl_gpt.config import CollectConfig, ConfigError, ExperimentConfig, TaskConfig, to_dict
from rl_gpt.dataset import task_record
from rl_gpt.supervised import CLASSIFIERS, classifier_classes, classifier_layout, train_classifier_runs
from rl_gpt.supervised.data import DATASETS, CorruptDataError, load_dataset_cached, require_files
from rl_gpt.supervised.data_root import data_sha256
from rl_gpt.supervised.evaluate import loops_over_models
from rl_gpt.supervised.train import DEFAULT_LR, LR_SCHEDULES, OPTIMIZERS, TRAIN_EVAL_SEED

__all__ = [
    "HYPERPARAMS",
    "SUPERVISED_METRICS",
    "plan_batches",
    "resolve_hyperparams",
    "supervised_spec",
    "train_supervised_runs",
]

#: What ``task.metric`` may name for a supervised task; both are lower-is-better.
SUPERVISED_METRICS = ("test_loss", "test_error")

DEFAULT_BATCH_SIZE = 128  # G.pt's mb_size

#: ``task.hyperparams`` keys a supervised run understands (defaults are train_classifier_runs').
HYPERPARAMS = {
    "optimizer": "sgd (Nesterov momentum 0.9, as G.pt) or adam",
    "optimizers": "a list such as [sgd, adam]: run i uses optimizers[seed % len] (instead of optimizer)",
    "lr": "peak learning rate, or a mapping optimizer -> lr such as {sgd: 0.1, adam: 0.003}",
    "steps": "optimiser steps per run (the run length; give steps or epochs)",
    "epochs": "passes over the training set, last partial batch dropped (instead of steps)",
    "batch_size": f"examples per optimiser step (default {DEFAULT_BATCH_SIZE})",
    "weight_decay": "L2 weight decay (G.pt: 5e-4)",
    "lr_schedule": "cosine (per step, to 0) or constant",
}
_TRAIN_EVAL_SIZE = 10_000  # train_loss is measured on this many training examples (the same subset every run)


# ---------------------------------------------------------------------------------------------- config checks
def _network(cfg: ExperimentConfig) -> str:
    name = cfg.task.network
    if name not in CLASSIFIERS:
        raise ConfigError(f"task.network: {name!r} is not a classifier; choose one of {', '.join(sorted(CLASSIFIERS))}")
    return name


def _check_task(cfg: ExperimentConfig, parse_files: bool = False) -> str:
    """Refuse a supervised config that cannot run, before any work starts; returns the data set name.

    ``parse_files``: read the data files through (once, in the main process, ~1 s), not only find them."""
    dataset = CLASSIFIERS[_network(cfg)].dataset
    if cfg.task.metric not in SUPERVISED_METRICS:
        raise ConfigError(f"task.metric: {cfg.task.metric!r} is not one of {', '.join(SUPERVISED_METRICS)}")
    if cfg.task.higher_is_better:
        raise ConfigError(f"task.higher_is_better: {cfg.task.metric} is lower-is-better; set it to false")
    if not DATASETS[dataset].bundled:
        root = cfg.task.data_root
        if not root:
            raise ConfigError(
                f"task.data_root: {dataset} needs its files; run `rl-gpt data fetch {dataset} --root DIR` "
                "and pass task.data_root=DIR"
            )
        if Path(root).is_file():  # one of the files given for their folder
            raise ConfigError(f"task.data_root: {root} is a file; pass the folder that holds {dataset}'s files")
        if not Path(root).is_dir():
            raise ConfigError(
                f"task.data_root: {root} is not a folder; run `rl-gpt data fetch {dataset} --root {root}`"
            )
        try:  # missing or damaged files are refused before a dataset folder is written (workers load them)
            require_files(dataset, root, parse=parse_files)
        except (FileNotFoundError, CorruptDataError) as exc:
            raise ConfigError(f"task.data_root: {exc}") from None
    if cfg.collect.checkpoint_every < 1:
        raise ConfigError(
            f"collect.checkpoint_every: expected a positive number of steps, got {cfg.collect.checkpoint_every}"
        )
    network, info = _network(cfg), DATASETS[dataset]
    if cfg.task.env_id not in (dataset, TaskConfig.env_id):  # the field's default: a config that left it out
        raise ConfigError(
            f"task.env_id: {cfg.task.env_id!r} is not the data set {network} reads; set it to {dataset!r} (what "
            "the dataset's spec.json records as its env_id), or leave it out"
        )
    if classifier_classes(network) != info.classes:
        raise ConfigError(
            f"task.network: {network} predicts {classifier_classes(network)} classes, but {dataset} has "
            f"{info.classes}: give its output layer one output per class"
        )
    hp = resolve_hyperparams(cfg, 0)
    sampled = cfg.collect.sample_hyperparams.get("batch_size")
    largest = max(hp["batch_size"], math.ceil(sampled[1]) if isinstance(sampled, (list, tuple)) else 0)
    if largest > info.train_size:
        raise ConfigError(
            f"task.hyperparams.batch_size: {largest} is more than the {info.train_size} training examples of "
            f"{dataset}; lower it"
        )
    return dataset


def resolve_hyperparams(cfg: ExperimentConfig, run: int) -> dict[str, Any]:
    """Run ``run``'s hyperparameters as :func:`train_classifier_run` keywords.

    ``task.hyperparams`` with ``collect.sample_hyperparams`` drawn log-uniformly (sb3_run's
    :func:`sample_hyperparams`), an ``optimizers`` list resolved to one ``optimizer`` by the seed and
    an ``lr`` mapping resolved to that optimizer's rate.
    """
    hp = _non_null(sample_hyperparams(cfg, run))
    unknown = sorted(set(hp) - set(HYPERPARAMS))
    if unknown:
        raise ConfigError(
            f"task.hyperparams: {', '.join(unknown)} not understood by supervised runs; valid keys: "
            f"{', '.join(HYPERPARAMS)}"
        )
    if "optimizers" in hp:
        choices = hp.pop("optimizers")
        if "optimizer" in hp:
            raise ConfigError("task.hyperparams: give optimizer or optimizers, not both")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"task.hyperparams.optimizers: expected a non-empty list, got {choices!r}")
    else:
        choices = [hp.get("optimizer", "sgd")]
    for name in choices:  # check every choice, so that run 0 validates the whole config
        if name not in OPTIMIZERS:
            raise ConfigError(f"task.hyperparams: optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
        if isinstance(hp.get("lr"), dict) and name not in hp["lr"]:
            raise ConfigError(f"task.hyperparams.lr: no rate for optimizer {name!r}")
    hp["optimizer"] = choices[run_seed(cfg, run) % len(choices)]  # balanced across runs, fixed by the seed
    hp.setdefault("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(hp.get("lr"), dict):
        hp["lr"] = hp["lr"][hp["optimizer"]]
    if ("steps" in hp) == ("epochs" in hp):
        if "steps" in hp:  # e.g. a preset's epochs with a steps= override: say how to drop the other
            raise ConfigError(
                "task.hyperparams: give exactly one of steps or epochs (the run length), not both; drop the other "
                "with task.hyperparams.epochs=null (or task.hyperparams.steps=null)"
            )
        raise ConfigError(
            "task.hyperparams: give the run length, task.hyperparams.steps=N or task.hyperparams.epochs=N"
        )
    for key, kind in (("steps", int), ("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float)):
        if key in hp:
            hp[key] = _number(f"task.hyperparams.{key}", hp[key], kind)
    if hp.get("lr_schedule", "cosine") not in LR_SCHEDULES:
        raise ConfigError(
            f"task.hyperparams.lr_schedule: {hp['lr_schedule']!r} is not one of {', '.join(LR_SCHEDULES)}"
        )
    return hp


def _non_null(hp: dict[str, Any]) -> dict[str, Any]:
    """``hp`` without its null values: null drops a key, so an override can switch the run length
    (``task.hyperparams.epochs=null task.hyperparams.steps=400``)."""
    return {key: value for key, value in hp.items() if value is not None}


def _number(key: str, value: Any, kind: type) -> Any:
    """A non-negative int/float; YAML leaves ``1e-3`` (no dot) as a string, so numeric strings count."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not number >= 0 or (kind is int and not number.is_integer()):
        raise ConfigError(f"{key}: {value!r} is not a non-negative {kind.__name__}")
    return kind(number)


# ---------------------------------------------------------------------------------------------- runs
def plan_batches(cfg: ExperimentConfig, runs: Sequence[int], workers: int) -> list[list[int]]:
    """Split ``runs`` into batches that train together: runs whose hyperparameters differ only in
    ``lr`` share a batch, at most ``collect.batch_runs`` per batch and no more than spreads the runs
    over ``workers`` four times (so the progress bar moves and the workers stay busy to the end).
    Networks the CPU trains one run at a time (the CNN) get batches of one."""
    groups: dict[str, list[int]] = {}
    for run in runs:
        hp = dict(resolve_hyperparams(cfg, run))
        hp.pop("lr", None)
        groups.setdefault(repr(sorted(hp.items())), []).append(run)
    size = max(1, min(cfg.collect.batch_runs, math.ceil(len(runs) / (4 * max(workers, 1)))))
    if _trains_one_by_one(cfg):
        size = 1  # so each run reaches the dataset (and the progress bar) as soon as it ends
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def _trains_one_by_one(cfg: ExperimentConfig) -> bool:
    """Whether the task's runs train one after another even when batched: the CNN on the CPU, the
    device collection trains on (see :func:`~rl_gpt.supervised.evaluate.loops_over_models`)."""
    return loops_over_models(classifier_layout(cfg.task.network), "cpu")


def train_supervised_runs(cfg: ExperimentConfig, runs: Sequence[int]) -> list[RunResult]:
    """Train the classifiers of ``runs`` together (one batch of :func:`plan_batches`), each
    checkpointed at step 0, every ``checkpoint_every`` steps and the end."""
    dataset = _check_task(cfg)
    if len(runs) > 1 and _trains_one_by_one(cfg):  # give each run its own times, not the batch's
        return [result for run in runs for result in train_supervised_runs(cfg, [run])]
    hps = [resolve_hyperparams(cfg, run) for run in runs]
    shared = {key: value for key, value in hps[0].items() if key != "lr"}
    if any({k: v for k, v in hp.items() if k != "lr"} != shared for hp in hps):
        raise ValueError("runs trained together must share every hyperparameter but lr; batch them with plan_batches")
    x_train, y_train, x_test, y_test = load_dataset_cached(dataset, cfg.task.data_root)
    start = time.time()
    steps = shared["steps"] if "steps" in shared else shared["epochs"] * (x_train.shape[0] // shared["batch_size"])
    every = cfg.collect.checkpoint_every
    try:
        outs = train_classifier_runs(
            cfg.task.network,
            x_train,
            y_train,
            x_test,
            y_test,
            seeds=[run_seed(cfg, run) for run in runs],
            lr=[hp.get("lr", DEFAULT_LR) for hp in hps],
            checkpoint_steps=range(every, max(steps, 0), every),
            train_eval_size=_TRAIN_EVAL_SIZE,
            num_threads=1,  # one core per batch; parallelism comes from running batches side by side
            **shared,
        )
    except ValueError as exc:  # every remaining check in train_classifier_runs is about these hyperparameters
        raise ConfigError(f"task.hyperparams: {exc}") from None
    run_time = time.time() - start
    return [_run_result(cfg, run, hp, out, run_time, len(runs)) for run, hp, out in zip(runs, hps, outs, strict=True)]


def _run_result(
    cfg: ExperimentConfig, run: int, hp: dict[str, Any], out: dict[str, torch.Tensor], run_time: float, batch: int
) -> RunResult:
    """One run's rows and metadata; times are its batch's (the runs shared every step)."""
    train_time = float(out["wall_time"][-1])
    params = out["params"]  # (C, D)
    valid = torch.isfinite(params).all(dim=1) & (params.abs().amax(dim=1) <= cfg.collect.max_abs_weight)
    nan = torch.tensor(float("nan"))
    rows: dict[str, torch.Tensor] = {"params": params}
    for key in ("test_loss", "test_error", "train_loss", "train_error"):
        rows[key] = torch.where(valid, out[key].float(), nan)  # (C,): NaN where invalid, as for RL
    rows["metric"] = rows[cfg.task.metric].clone()
    rows["step"] = out["step"].to(torch.int64)
    rows["wall_time"] = out["wall_time"].to(torch.float32)
    rows["valid"] = valid

    final = float(rows["metric"][-1])
    meta = {
        "seed": run_seed(cfg, run),
        "hyperparams": hp,
        "steps": int(rows["step"][-1]),
        "train_time": train_time,  # the batch's: its runs trained together
        "runs_in_batch": batch,
        "eval_time": run_time - train_time,  # all checkpoints are evaluated together after training
        "final_metric": final,
        "final_test_loss": float(rows["test_loss"][-1]),
        "final_test_error": float(rows["test_error"][-1]),
        "invalid_checkpoints": int((~valid).sum()),
    }
    return RunResult(rows, meta)


# ---------------------------------------------------------------------------------------------- dataset spec
#: ``collect`` settings for RL runs only: a classifier's run length is ``task.hyperparams.steps`` and
#: every checkpoint is evaluated on the whole test split.
_RL_ONLY_COLLECT = ("timesteps", "eval_episodes", "eval_seed")


def supervised_spec(cfg: ExperimentConfig) -> dict[str, Any]:
    """The dataset spec of a supervised task: the RL spec's keys, describing a classifier instead of a policy."""
    dataset = _check_task(cfg, parse_files=True)  # the main process's check: damaged files are refused here
    if cfg.collect.timesteps != CollectConfig.timesteps:  # once, from the main process
        warnings.warn(
            f"collect.timesteps={cfg.collect.timesteps} counts environment steps and does nothing here: a supervised "
            "run's length is task.hyperparams.steps (optimiser steps) or task.hyperparams.epochs",
            stacklevel=2,
        )
    name = cfg.task.network
    spec = CLASSIFIERS[name]
    hp = _non_null(cfg.task.hyperparams)
    algo = hp.get("optimizer", "sgd") if "optimizers" not in hp else "supervised"
    fetched = {} if DATASETS[dataset].bundled else {"data_sha256": data_sha256(dataset, cfg.task.data_root)}
    return {
        **fetched,
        "task": task_record(to_dict(cfg.task)),
        "env_id": dataset,
        "algo": algo,
        "policy_kwargs": {},
        "metric": {
            "name": cfg.task.metric,
            "higher_is_better": False,
            "field": "metric",
            "definition": (
                "mean cross-entropy (natural log: nats) on the full test split"
                if cfg.task.metric == "test_loss"
                else "top-1 error (a fraction in [0, 1]) on the full test split"
            ),
        },
        "policy": {
            "kind": "classifier",
            "network": name,
            "dataset": dataset,
            "input_shape": list(spec.input_shape),
            "classes": classifier_classes(name),
            "preprocessing": DATASETS[dataset].preprocessing,
        },
        "layout": classifier_layout(name).to_dict(),
        "architecture": spec.forward,
        "fields": {
            "params": "(N, D) float32 classifier parameters, flattened in layout order (state_dict keys)",
            "metric": f"(N,) float32 copy of {cfg.task.metric} (NaN where invalid)",
            "test_loss": "(N,) float32 mean cross-entropy in nats on the full test split (NaN where invalid)",
            "test_error": "(N,) float32 top-1 error, a fraction, on the full test split (NaN where invalid)",
            "train_loss": f"(N,) float32 mean cross-entropy on a fixed subset of <= {_TRAIN_EVAL_SIZE} training "
            "examples, the same for every run (NaN where invalid)",
            "train_error": "(N,) float32 top-1 error on that training subset (NaN where invalid)",
            "run": "(N,) int64 training run index (seed = collect.seed + run)",
            "step": "(N,) int64 optimiser steps taken when the checkpoint was saved",
            "wall_time": "(N,) float32 training seconds elapsed when the checkpoint was saved (shared by the "
            "runs of a batch, which train together; runs.json gives each run's runs_in_batch)",
            "valid": "(N,) bool false for NaN/inf or exploding weights (excluded from training)",
        },
        "evaluation": {
            "split": "test",
            "train_subset": _TRAIN_EVAL_SIZE,
            "train_subset_seed": TRAIN_EVAL_SEED,
            "definition": "every checkpoint evaluated after training, in eval mode, on the whole test split; "
            "train_loss and train_error on the training examples at indices torch.randperm(n_train, generator="
            "torch.Generator().manual_seed(train_subset_seed))[:train_subset] of the training split in the order "
            "policy.preprocessing describes (all of them where n_train <= train_subset)",
        },
        "versions": describe_versions(),
        # without the settings of policy evaluation and environment steps, which mean nothing here
        "collect": {k: v for k, v in to_dict(cfg.collect).items() if k not in _RL_ONLY_COLLECT},
    }
