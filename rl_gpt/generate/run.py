"""``rl-gpt generate``: prompt a return, get policies for a network the generator never saw."""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rl_gpt.config import ConfigError, SweepConfig, TaskConfig
from rl_gpt.evaluate.dataset_metric import evaluate_flat, start_metric
from rl_gpt.evaluate.seeds import Purpose, evaluation_seed
from rl_gpt.generate.export import export_safetensors, export_sb3
from rl_gpt.generate.plot import plot_targets
from rl_gpt.io import atomic_write_json, ensure_report_dir, ensure_writable_dir, exclusive_folder
from rl_gpt.layout import Layout
from rl_gpt.supervised.files import classifier_metadata
from rl_gpt.supervised.metric import supervised_metric
from rl_gpt.train.modelfile import ModelFileError, load_generator, open_dataset
from rl_gpt.train.ranker import ranker_for

__all__ = ["GeneratedParams", "generate", "generate_params", "load_start"]


def _architecture(layout: dict[str, Any]) -> str:
    """A layout as its layers read, e.g. ``4->16 tanh, 16->2`` (in -> out features, then the activation)."""
    shapes = {p["name"]: p["shape"] for p in layout["params"]}
    parts = []
    for layer in layout.get("layers", []):
        weight = shapes.get(f"{layer['prefix']}.weight")
        if weight is not None and len(weight) >= 2:
            parts.append(f"{weight[1]}->{weight[0]}" + (f" {layer['activation']}" if layer.get("activation") else ""))
    return ", ".join(parts) or f"{layout['numel']} parameters"


def check_fraction_targets(metric: str | None, targets: Sequence[float]) -> None:
    """Refuse test-error targets outside [0, 1]: errors are fractions, and a percentage (5 for 5 %)
    would otherwise be clamped to the range's worst end and give a near-random classifier."""
    if metric != "test_error":
        return
    wrong = [t for t in targets if not 0.0 <= t <= 1.0]
    if wrong:
        example = next((t for t in wrong if 1 < t <= 100), None)
        hint = f" (for {example:g} % pass {example / 100:g})" if example is not None else ""
        shown = ", ".join(f"{t:g}" for t in wrong)
        raise ConfigError(f"target {shown}: the model's metric test_error is a fraction from 0 to 1{hint}")


def init_seed(info: dict[str, Any], seed: int) -> int:
    """The initialiser's seed of ``generate --seed seed``: the model's sweep's unseen init number
    ``seed`` (``sweep.init_seed + seed``). Collections seed run r with ``collect.seed + r``, so a plain
    ``seed`` would start from a training run's own init, which the generator has learnt."""
    swept = info.get("meta", {}).get("config", {}).get("sweep", {})
    return int(swept.get("init_seed", SweepConfig.init_seed)) + seed


def load_start(info: dict[str, Any], from_zip: str | None, seed: int) -> torch.Tensor:
    """The starting network θ (D,): an SB3 policy file (a classifier's safetensors for supervised
    tasks), or the task's own random initialiser (SB3's for policies) at the unseen init
    :func:`init_seed` picks for ``seed``."""
    from rl_gpt.collect.inits import random_inits
    from rl_gpt.config import task_config
    from rl_gpt.sb3_policy import actor_layout, read_actor

    task = task_config(info["spec"]["task"])
    if from_zip is None:
        return random_inits(task, 1, init_seed(info, seed))[0]
    kind = "a classifier's .safetensors" if task.kind == "supervised" else "an SB3 policy .zip"
    if not Path(from_zip).is_file():
        what = "is a folder" if Path(from_zip).is_dir() else "does not exist"
        raise ModelFileError(f"--from {from_zip} {what}; pass {kind} to start from (or --random-init)")
    if task.kind == "supervised":  # a classifier's safetensors, e.g. one generate wrote (re-prompting it)
        from rl_gpt.supervised.files import read_classifier_file

        classifier = read_classifier_file(from_zip, default_network=task.network)
        if classifier.network != task.network:
            raise ModelFileError(
                f"{from_zip} holds a {classifier.network} classifier; the model generates {task.network} classifiers"
            )
        return classifier.params
    from rl_gpt.evaluate import load_sb3_policy

    env_id = task.env_id
    if ":" in env_id:  # the model's own config names a module that registers its env: import it, as collect did
        from rl_gpt.collect.sb3_run import check_env_id

        check_env_id(env_id)
        env_id = env_id.partition(":")[2]
    try:  # read without unpickling: the file may come from anyone
        file, _, policy = load_sb3_policy(from_zip, env_id=env_id)
    except ValueError as err:
        raise ModelFileError(f"{err} (the model generates {task.algo} actors for {task.env_id})") from err
    algo = file.algo
    layout = actor_layout(policy, algo)
    if layout.to_dict() != info["layout"] or algo != task.algo:
        raise ModelFileError(
            f"{from_zip} is a {algo} policy ({_architecture(layout.to_dict())}); the model generates "
            f"{task.algo} actors ({_architecture(info['layout'])}) for {task.env_id}"
        )
    if info["spec"].get("obs_normalisation"):
        warnings.warn(
            f"this model's policies read raw observations (VecNormalize statistics folded into the first "
            f"layer); {from_zip} is taken as one too: fold a VecNormalize-trained policy's statistics in "
            "first (rl_gpt.evaluate.fold_obs_normalisation)",
            stacklevel=2,
        )
    return read_actor(policy, layout)


def _refuse_a_training_init(ds: Any, info: dict[str, Any], theta: torch.Tensor, seed: int) -> None:
    """The random init ``--seed`` picks must not be a training run's own (a dataset collected with
    seeds in the sweep's range): the generator learnt from it, and its result would pass as unseen."""
    from rl_gpt.collect.inits import training_init_matches

    seen = training_init_matches(theta[None], ds, info["meta"]["train_runs"])
    if seen:
        raise ConfigError(
            f"--seed {seed} gives the random init of seed {init_seed(info, seed)}, which is training run {seen[0]}'s "
            "own step-0 network (its dataset was collected with those seeds); pick another --seed, or pass the "
            "network with --from to start from it on purpose"
        )


@dataclass
class GeneratedParams:
    """What :func:`generate_params` sampled, in memory: nothing of it is written to disk."""

    #: (targets, num, D) raw flat parameters in ``layout`` (``layout.unflatten(params[j, k])``: a state dict)
    params: torch.Tensor
    targets: list[float]
    #: (targets,) the prompts given to the generator: the targets, or the calibration's map of them
    conditioned_on: torch.Tensor
    #: (D,) the starting network θ, and its metric m as the dataset's labels were measured
    start: torch.Tensor
    start_metric: float
    layout: Layout
    #: the ranker's prediction for each kept candidate (targets, num), when ``rerank`` > 1
    predicted: torch.Tensor | None
    calibrated: bool
    guidance: float
    steps: int
    average: int
    rerank: int
    training_range: tuple[float, float]


def _start_tensor(start: Any, layout: Layout) -> torch.Tensor:
    theta = torch.as_tensor(start).detach().cpu()
    if theta.shape != (layout.numel,):
        raise ValueError(
            f"start has shape {tuple(theta.shape)}; the model generates networks of {layout.numel} parameters: pass "
            "one flat network (layout.flatten(state_dict) gives one from a state dict)"
        )
    if not theta.is_floating_point() or not torch.isfinite(theta).all():
        raise ValueError("start holds non-finite (NaN/inf) or non-float values; pass a network's real weights")
    return theta.float()


def generate_params(
    model_dir: str | Path,
    target: float | Sequence[float],
    start: torch.Tensor | str | Path | None = None,
    *,
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
    progress: bool = True,
) -> GeneratedParams:
    """Sample ``num`` networks per ``target`` from ``start``, as ``rl-gpt generate`` does, in memory.

    ``start`` is one flat network (D,) in the model's layout, a file (an SB3 ``.zip``, or a classifier's
    safetensors for supervised tasks), or None: the task's random initialiser at the sweep's unseen init
    ``seed``. Its metric is measured as the dataset labelled its checkpoints (``episodes`` only where the
    dataset does not say). The remaining settings are :func:`generate`'s; the defaults are the model's
    own sweep settings and its calibration. Nothing is written, except that ``rerank`` > 1 fits the
    model's ranker once and stores it beside the model (saying so unless ``progress`` is False).

    This is what to call from Python: :meth:`ParameterGenerator.sample` is the raw sampler, without the
    model's sampling settings, calibration or the start metric's protocol.
    """
    return _generate_params(
        model_dir,
        target,
        start,
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
        progress=progress,
    )[0]


def _generate_params(
    model_dir: str | Path,
    target: float | Sequence[float],
    start: torch.Tensor | str | Path | None,
    *,
    seed: int,
    num: int,
    guidance: float | None,
    steps: int | None,
    episodes: int,
    dataset: str | Path | None,
    data_root: str | Path | None,
    average: int | None,
    calibrated: bool,
    extrapolate: bool,
    rerank: int | None,
    progress: bool = True,
    before_sampling: Callable[[], Any] | None = None,
) -> tuple[GeneratedParams, dict[str, Any], Any]:
    """:func:`generate_params`, also returning the model's info and the dataset it opened.
    ``before_sampling`` runs once every check has passed, before the slow part (the start's metric
    and the sampling): where ``generate`` claims its output folder."""
    from rl_gpt.train.calibration import conditioning_prompts

    targets = list(dict.fromkeys(float(t) for t in ([target] if isinstance(target, (int, float)) else target)))
    if not targets:
        raise ValueError("no target given: pass one or more values to --target-return")
    if not all(math.isfinite(t) for t in targets):
        raise ValueError(f"targets must be finite numbers, got {', '.join(f'{t:g}' for t in targets)}")
    if num < 1:
        raise ValueError(f"num={num}: the number of networks per target, 1 or more")
    gen, info = load_generator(model_dir)
    check_fraction_targets(info["spec"].get("metric", {}).get("name"), targets)
    low, high = gen.normalizer.metric_low, gen.normalizer.metric_high
    outside = [t for t in targets if not low <= t <= high]
    if outside:
        then = "conditioning on them as given" if extrapolate else "conditioning on the range's nearest end instead"
        listed = ", ".join(f"{t:g}" for t in outside)
        which = f"target {listed} lies" if len(outside) == 1 else f"targets [{listed}] lie"
        warnings.warn(
            f"{which} outside the range of the runs the model trained on "
            f"[{low:.4g}, {high:.4g}] (held-out runs excluded), where the generator extrapolates poorly; {then}",
            stacklevel=3,
        )
    if start is None or isinstance(start, (str, Path)):
        theta = load_start(info, None if start is None else str(start), seed)
    else:  # a network's weights: a tensor, a numpy array
        theta = _start_tensor(start, gen.layout)
    ds = open_dataset(model_dir, info, dataset, data_root=data_root)
    if start is None:
        _refuse_a_training_init(ds, info, theta, seed)
    config = info["meta"].get("config", {})
    swept = config.get("sweep", {})
    if guidance is None:  # as the model's sweeps (and its calibration) sample; older files: as its probes
        guidance = float(swept.get("guidance", config.get("train", {}).get("guidance", 1.0)))
    if average is None:
        average = int(swept.get("average", 1))
    if steps is None:
        steps = int(swept.get("steps", 20))
    if rerank is None:
        rerank = int(swept.get("rerank", 1))
    ranker = None
    if rerank > 1:
        split = info["meta"]["train_runs"], info["meta"]["test_runs"]
        ranker = ranker_for(model_dir, ds, gen.layout, *split, say=print if progress else lambda _: None)
    if before_sampling is not None:
        before_sampling()
    runs = info["meta"]["train_runs"]
    start_m = start_metric(ds, theta[None], runs, episodes).float()  # as the training labels were measured
    rows = len(targets) * num  # target j's networks are rows j*num ... (j+1)*num - 1
    g = torch.Generator().manual_seed(seed)
    bounds = None if extrapolate else (low, high)
    cond, cal = conditioning_prompts(
        model_dir, torch.tensor(targets), guidance, steps, average, calibrated, bounds, rerank
    )
    # Each target starts from the same noise (the seed's), so its networks do not depend on which
    # other targets the call asks for: `--target-return 300` alone gives what it gives among others.
    per_target = num * rerank * average
    noise = torch.randn((per_target, theta.numel()), generator=g).repeat(len(targets), 1)
    params = gen.sample(
        theta[None].expand(rows * rerank, -1),
        start_m.expand(rows * rerank),
        cond.repeat_interleave(num * rerank),
        steps=steps,
        guidance=guidance,
        generator=g,
        average=average,
        x_T=noise.to(theta.device),
    )
    predicted = None
    if ranker is not None:  # rows j*num*rerank ...: target j's num networks, each from rerank candidates
        params, predicted = ranker.choose(params.reshape(rows, rerank, -1), cond.repeat_interleave(num).double())
        predicted = ranker.within_range(predicted).reshape(len(targets), num)
    result = GeneratedParams(
        params=params.reshape(len(targets), num, -1),
        targets=targets,
        conditioned_on=cond,
        start=theta,
        start_metric=float(start_m[0]),
        layout=gen.layout,
        predicted=predicted,
        calibrated=cal is not None,
        guidance=guidance,
        steps=steps,
        average=average,
        rerank=rerank,
        training_range=(low, high),
    )
    return result, info, ds


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
        result, info, ds = _generate_params(
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
        runs = info["meta"]["train_runs"]
        targets, theta, cond = result.targets, result.start, result.conditioned_on
        low, high = result.training_range
        params = result.params.reshape(len(targets) * num, -1)
        predicted = None if result.predicted is None else result.predicted.reshape(-1)
        stale = _previous_outputs(out)
        start_file = {Path(from_zip)} if from_zip else set()  # generating again from a file of the last call
        # On the outputs' start states (a sweep's, for sweep.seed = --seed), so that start and achieved are
        # compared episode by episode and `rl-gpt evaluate FILE --seed S` with the eval_seed below reproduces both.
        at = evaluation_seed(seed, Purpose.SWEEP)
        start_return = float(evaluate_flat(ds, theta[None], episodes, at, runs).mean[0])
        # the data files where they are now (`--data-root`), which the exported classifiers then record
        task = task_config(info["spec"]["task"] | {"data_root": ds.spec["task"].get("data_root")})
        both = None
        if task.kind == "supervised":  # both test metrics in one pass, as `rl-gpt evaluate` and sweeps report them
            both = supervised_metric(ds.spec, params)
            mean, std = both["metric"].double(), torch.zeros(len(params), dtype=torch.float64)  # one test split
        else:
            res = evaluate_flat(ds, params, episodes, at, runs)
            mean, std = res.mean, res.std
        initialiser = "the classifier's own" if task.kind == "supervised" else "SB3's"
        shared = {
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
            "model": str(Path(model_dir).resolve()),
        }
        names = [f"target_{t:g}" for t in targets]
        if len(set(names)) < len(names):  # targets that differ beyond 6 significant digits: number the folders
            names = [f"target_{j:02d}" for j in range(len(targets))]
        records = []
        # from here files are replaced: no record may describe the old ones
        _retire_records(out, [out / n for n in names] if len(targets) > 1 else [])
        for j, t in enumerate(targets):
            folder = out if len(targets) == 1 else ensure_writable_dir(out / names[j])
            rows_j = slice(j * num, (j + 1) * num)
            items = _export(task, result.layout, params[rows_j], mean[rows_j], std[rows_j], folder, seed)
            if predicted is not None:
                for item, value in zip(items, predicted[rows_j].tolist(), strict=True):
                    item["predicted_return"] = value  # the ranker's prediction for the kept candidate
            if both is not None:
                for k, item in enumerate(items):
                    item |= {
                        "test_loss": float(both["test_loss"][rows_j][k]),
                        "test_error": float(both["test_error"][rows_j][k]),
                    }
            record = {
                **shared,
                "target_return": t,
                # the prompt given to the generator: t, or calibration.json's map of t, held inside the
                # training range unless extrapolating
                "conditioned_on": float(cond[j]),
                "policies": items,
            }
            atomic_write_json(folder / "generated.json", record)
            records.append(record)
        if len(targets) == 1:
            _remove_stale(stale, out, records[0], keep=start_file)
            return records[0]
        achieved = mean.reshape(len(targets), num)
        summary = {
            **shared,
            "target_return": targets,
            "conditioned_on": cond.tolist(),
            "achieved_mean": achieved.nanmean(1).tolist(),
            "folders": names,
            "policies_per_target": num,
        }
        atomic_write_json(out / "generated.json", summary)
        plot_targets(summary, achieved, out / "generated.png")
        _remove_stale(stale, out, summary, keep=start_file)
        return summary


#: What generate writes into a folder, and nothing else may be removed as an earlier call's output.
_OUTPUT_NAME = re.compile(r"(policy_\d+\.zip|classifier_\d+\.safetensors|target_[^/\\]+|generated\.png)")


def _listed_outputs(out: Path, record: Any, depth: int = 0) -> set[Path]:
    """The files and folders a ``generated.json`` record in ``out`` names: only names generate
    writes, directly inside ``out`` (a hand-edited or foreign file cannot point elsewhere)."""
    if not isinstance(record, dict):
        return set()
    policies, folders = record.get("policies"), record.get("folders") if depth == 0 else None
    policies = policies if isinstance(policies, list) else []
    folders = folders if isinstance(folders, list) else []
    names = [p.get("file") for p in policies if isinstance(p, dict)]
    names += [*folders, "generated.png"] if folders else []
    paths = {out / n for n in names if isinstance(n, str) and _OUTPUT_NAME.fullmatch(n)}
    for folder in folders:
        if isinstance(folder, str) and out / folder in paths:
            paths |= _previous_outputs(out / folder, depth + 1)
    return paths


def _previous_outputs(out: Path, depth: int = 0) -> set[Path]:
    """What an earlier ``generate`` into ``out`` wrote, as its ``generated.json`` lists it (else nothing)."""
    try:
        return _listed_outputs(out, json.loads((out / "generated.json").read_text(encoding="utf-8")), depth)
    except (OSError, ValueError):  # no earlier call, or a file that is not JSON
        return set()


def _retire_records(out: Path, folders: list[Path]) -> None:
    """Remove the ``generated.json`` records of an earlier call in ``out`` and in the target ``folders``
    this call writes, before their outputs are overwritten: a call stopped midway then leaves files
    without a record, not a record of files that were replaced. The earlier call's outputs were read
    before (``stale``), so :func:`_remove_stale` still clears what the new record does not list."""
    for record in [out / "generated.json", *(f / "generated.json" for f in folders)]:
        record.unlink(missing_ok=True)


def _remove_stale(stale: set[Path], out: Path, record: dict[str, Any], keep: set[Path] = frozenset()) -> None:
    """Delete an earlier call's outputs that this call's ``generated.json`` no longer lists (never ``keep``)."""
    keep = {p.resolve() for p in (*_listed_outputs(out, record), out / "generated.json", *keep)}
    for path in sorted(stale, key=lambda p: len(p.parts), reverse=True):  # files before their folders
        if path.resolve() in keep or path.is_symlink():
            continue
        if path.is_dir():
            (path / "generated.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a folder the user put more in stays
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


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
