"""One way every stage opens a Weights & Biases run (offline unless the config asks otherwise)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_gpt.config import ConfigError, ExperimentConfig
from rl_gpt.io import atomic_write_text

__all__ = [
    "ARTIFACT_FILES",
    "CollectionLog",
    "artifact_name",
    "check_login",
    "finish_open_runs",
    "folder_artifact",
    "log_output",
    "log_result",
    "project_name",
    "start_run",
    "use_inputs",
    "with_dataset_sections",
]

# What a stage's artifact holds: the files that say what a dataset or a model is. A dataset's memmaps
# (up to gigabytes) stay on disk, named by the artifact's metadata; a model's weights are a few MB and go in.
# A calibration or a ranker written into the model folder later is left out, so the model artifact that
# train logs is the one sweep and calibrate use (the same files, the same digest).
# A dataset's config.yaml is left out: collect rewrites it from the whole command line even when it adds no
# run (spec.json holds its task and collect sections), and a changed digest would name no logged version.
ARTIFACT_FILES = {
    "dataset": ("spec.json", "runs.json"),
    "model": ("model.safetensors", "model.json", "config.yaml"),
}


def check_login(cfg: ExperimentConfig) -> None:
    """``wandb.mode=online`` needs W&B credentials: found, asked for (in a terminal), or refused now,
    before a command writes anything, instead of a traceback when its first run opens."""
    if cfg.wandb.mode != "online":
        return
    import wandb

    try:
        logged_in = wandb.login(verify=False)
    except wandb.errors.UsageError:
        logged_in = False
    if not logged_in:  # no key found and none entered (or "don't visualize" chosen at the prompt)
        raise ConfigError(
            "wandb.mode=online needs a W&B API key: run `wandb login` or set WANDB_API_KEY; or log offline "
            "(wandb.mode=offline, the default) and upload later with `wandb sync DIR/wandb/offline-run-*` "
            "(DIR: OUT for collect, OUT/model for train, OUT/sweep for sweep)"
        )


def with_dataset_sections(config: dict[str, Any], dataset_dir: str | Path) -> dict[str, Any]:
    """``config`` with the ``task`` and ``collect`` sections the dataset in ``dataset_dir`` was collected with
    (a preset's may differ: ``runs=8`` or other hyperparameters at collection), so that training and sweep
    runs filter by the data they learnt from, as the collection's run does. ``config`` unchanged where the
    dataset's ``config.yaml`` cannot be read."""
    from rl_gpt.config import load_config, to_dict

    try:
        with warnings.catch_warnings():  # read for its values only: its warnings were said when it was collected
            warnings.simplefilter("ignore")
            collected = to_dict(load_config(Path(dataset_dir) / "config.yaml"))
    except (ConfigError, OSError):
        return config
    return config | {"task": collected["task"], "collect": collected["collect"]}


def project_name(cfg: ExperimentConfig) -> str:
    """``wandb.project``, else ``WANDB_PROJECT``, else ``rl_gpt`` (wandb.init's argument would beat the variable)."""
    return cfg.wandb.project or os.environ.get("WANDB_PROJECT") or "rl_gpt"


def start_run(
    cfg: ExperimentConfig,
    stage: str,
    directory: str | Path,
    config: Mapping[str, Any],
    resume: bool = False,
    key: str | None = None,
    experiment: str | None = None,
) -> Any:
    """A ``wandb`` run for this stage, or None when ``wandb.mode=disabled`` (wandb is then never imported).

    Runs are grouped by ``experiment`` (default: the name of the ``out`` folder, resolved), with the stage
    (collect, train, sweep) as their job type and in their name, so one experiment's stages sit together
    and two experiments of one task stay apart. With ``resume`` the stage goes on logging to the run it opened before in
    ``directory`` (its id is kept in ``directory/wandb/KEY.run_id``, ``key`` defaulting to
    ``STAGE-TASK``), so an interrupted and resumed training is one run with one set of curves, not two.
    """
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    experiment = experiment or Path(cfg.out).resolve().name or cfg.task.name  # `out=.`: the folder's own name
    id_file = Path(directory) / "wandb" / f"{key or f'{stage}-{cfg.task.name}'}.run_id"
    run_id = _saved_run_id(id_file) if resume else None
    run_id = run_id or secrets.token_hex(4)
    try:
        run = wandb.init(
            mode=cfg.wandb.mode,
            project=project_name(cfg),
            entity=cfg.wandb.entity,
            group=experiment,
            job_type=stage,
            name=f"{experiment}-{stage}",
            tags=[cfg.task.name],
            config=dict(config),
            dir=str(directory),
            id=run_id,
            resume="allow",
            reinit="create_new",
        )
    except wandb.errors.Error as exc:  # no credentials where check_login was not called; no network when online
        online = cfg.wandb.mode == "online"
        hint = " (or log offline: wandb.mode=offline, and upload later with `wandb sync`)" if online else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"W&B: {first}{hint}") from None
    _started.append(run)
    id_file.parent.mkdir(parents=True, exist_ok=True)  # wandb makes it for its own files; this needs no such luck
    atomic_write_text(id_file, run_id)
    return run


#: The runs :func:`start_run` opened in this process (finishing one twice is a no-op in wandb).
_started: list[Any] = []


def finish_open_runs(exit_code: int = 1) -> None:
    """Finish the W&B runs this process left open, as failed (``exit_code``).

    Called before an error or an interrupt is said: W&B's closing lines ("You can sync this run…")
    would otherwise follow at the interpreter's exit, under the line that says what to do.
    """
    while _started:
        run = _started.pop()
        with contextlib.suppress(Exception, KeyboardInterrupt):  # W&B's trouble must not hide the real line
            run.finish(exit_code=exit_code)


def log_result(
    cfg: ExperimentConfig,
    stage: str,
    directory: str | Path,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    images: Mapping[str, str | Path],
    experiment: str | None,
    saved: str,
    inputs: Mapping[str, str | Path] | None = None,
) -> None:
    """A finished stage's result as one short W&B run: ``config``, ``summary`` and the ``images`` that exist;
    ``inputs`` (``{"dataset": folder, "model": folder}``) are the artifacts it used (``use_inputs``).

    Called after the result is written to disk, so any W&B failure (no network, a full disk under
    ``wandb/``) prints one line naming where the result is kept (``saved``) and the command goes on.
    """
    try:
        run = start_run(cfg, stage, directory, config, experiment=experiment)
        if run is None:
            return
        import wandb

        pictures = {name: wandb.Image(str(path)) for name, path in images.items() if Path(path).is_file()}
        run.log({**summary, **pictures})
        use_inputs(cfg, run, inputs or {})
        run.finish()
    except Exception as exc:  # noqa: BLE001 - any W&B failure: the stage's result is saved and stays so
        finish_open_runs(exit_code=1)  # now, not under the command's last lines at the interpreter's exit
        print(f"W&B logging failed ({_first_line(exc)}); {saved}", file=sys.stderr)


_NAME_LIMIT = 128  # wandb refuses longer artifact names


def artifact_name(folder: str | Path) -> str:
    """``EXPERIMENT-FOLDER`` (``demo-dataset``, ``demo-model``): derived from where the folder is, so that
    every stage names the same dataset alike. W&B allows letters, digits, ``-``, ``_`` and ``.``, and at
    most 128 of them: a longer name keeps its start and ends in a hash of the whole."""
    folder = Path(folder).resolve()
    name = f"{folder.parent.name}-{folder.name}".strip("-")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "rl_gpt"
    if safe != name or len(safe) > _NAME_LIMIT:  # `my exp` and `my_exp` must not share a name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[: _NAME_LIMIT - 9]}-{digest}"
    return safe


def folder_artifact(kind: str, folder: str | Path, copy: bool = True) -> Any:
    """A ``wandb.Artifact`` of ``kind`` (dataset, model) holding ``ARTIFACT_FILES[kind]`` from ``folder``,
    with the folder's path (and what its ``spec.json`` or ``model.json`` says) as metadata; None where the
    folder holds none of those files. Built alike by the stage that logs it and the stages that use it.

    ``copy``: wandb copies each file into its staging folder at once, a snapshot for the upload (a
    resumed training replaces the weights). A used artifact needs only its digest, the same either way;
    unlogged, its copies would stay in W&B's data folder for good."""
    import wandb

    folder = Path(folder).resolve()
    files = [folder / name for name in ARTIFACT_FILES[kind] if (folder / name).is_file()]
    if not files:
        return None
    artifact = wandb.Artifact(artifact_name(folder), type=kind, metadata={"path": str(folder), **_described(folder)})
    for file in files:
        artifact.add_file(str(file), name=file.name, policy="mutable" if copy else "immutable")
    return artifact


def _described(folder: Path) -> dict[str, Any]:
    """A few facts a W&B user filters artifacts by: the task, env and metric; a model's training step."""
    facts: dict[str, Any] = {}
    try:
        if (folder / "spec.json").is_file():
            spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
            facts = {"task": spec["task"]["name"], "env_id": spec.get("env_id"), "metric": spec["metric"]["name"]}
        elif (folder / "model.json").is_file():
            model = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            facts = {"step": model.get("step"), "dataset": model.get("dataset")}
    except (OSError, ValueError, KeyError, TypeError):  # metadata only: a folder W&B cannot describe is still logged
        pass
    return facts


def log_output(cfg: ExperimentConfig, run: Any, kind: str, folder: str | Path) -> None:
    """Log ``folder`` as the run's output artifact (``wandb.artifacts=false``: not). Offline, W&B keeps a copy
    of its files until ``wandb sync``. The folder is saved before this: a W&B failure is one line, not a
    failed stage."""
    if run is None or not cfg.wandb.artifacts or cfg.wandb.mode == "disabled":
        return
    try:
        artifact = folder_artifact(kind, folder)
        if artifact is not None:
            run.log_artifact(artifact)
    except Exception as exc:  # noqa: BLE001 - any W&B failure: the folder is whole on disk
        _say_failed(f"the {kind} artifact", exc, f"the {kind} is saved in {folder}")


def use_inputs(cfg: ExperimentConfig, run: Any, inputs: Mapping[str, str | Path]) -> None:
    """Mark the artifacts a stage read (``{"dataset": folder, "model": folder}``) as the run's inputs.

    Online, ``use_artifact`` draws the lineage (collect → dataset → train → model → sweep): W&B matches
    the artifact by its digest to the version its producer logged. W&B refuses ``use_artifact`` offline,
    so the run's config records each input as ``NAME:DIGEST`` under ``inputs`` in every mode, which
    finds the producing run after ``wandb sync`` too."""
    if run is None or not cfg.wandb.artifacts or cfg.wandb.mode == "disabled" or not inputs:
        return
    try:
        used = {kind: folder_artifact(kind, folder, copy=False) for kind, folder in inputs.items()}
        used = {kind: artifact for kind, artifact in used.items() if artifact is not None}
        names = {kind: f"{artifact.name}:{artifact.digest}" for kind, artifact in used.items()}
        run.config.update({"inputs": names}, allow_val_change=True)
        if cfg.wandb.mode == "online":
            for artifact in used.values():
                run.use_artifact(artifact)
    except Exception as exc:  # noqa: BLE001 - lineage is worth a line, not the stage
        _say_failed("the artifacts this stage used", exc, "its results are saved as usual")


def _say_failed(what: str, exc: Exception, saved: str) -> None:
    print(f"W&B could not log {what} ({_first_line(exc)}); {saved}", file=sys.stderr)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _saved_run_id(path: Path) -> str | None:
    """The W&B run id a resumed stage logs to again; None (a new run) where the file is missing or
    holds no valid id (W&B ids are lower-case letters and digits)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if re.fullmatch(r"[a-z0-9]{1,64}", text):
        return text
    warnings.warn(f"{path} holds no W&B run id; this stage logs to a new run", stacklevel=3)
    return None


class CollectionLog:
    """One W&B run for a whole collection, fed by the main process as runs finish.

    A run per collection run cost ~1 s of wandb start-up and shutdown each (more than a digits run
    trains) and buried the project in thousands of runs; here each finished run is one logged step
    (its final metric and timings), and the curves of the first ``MAX_CURVES`` runs are one chart.
    """

    MAX_CURVES = 64

    def __init__(self, cfg: ExperimentConfig, directory: str | Path, step_name: str, stored: int = 0) -> None:
        """``stored``: runs a resumed collection already holds; it goes on logging to its run, counting from there."""
        from rl_gpt.config import to_dict

        # The resolved config at the top level, keyed as train's and sweep's are (task.hyperparams.lr, ...).
        self.run = start_run(cfg, "collect", directory, to_dict(cfg), stored > 0, self._key(cfg))
        self.directory = Path(directory)
        self.cfg = cfg
        self.step_name = step_name
        self.finished = stored
        self.stored = stored  # runs logged by an earlier session of a resumed collection
        self.curves: dict[str, list[tuple[int, list[int], list[float]]]] = {}

    @staticmethod
    def _key(cfg: ExperimentConfig) -> str:
        """Keyed by the dataset folder too: two datasets in one folder (dataset=a, dataset=b) are two runs."""
        return f"collect-{cfg.task.name}-{Path(cfg.dataset_dir).name}"

    @classmethod
    def unfinished(cls, cfg: ExperimentConfig, directory: str | Path, stored: int) -> bool:
        """Whether a collection holding ``stored`` runs has a W&B run that never logged it finished: one
        stopped after its last run was stored, whose next session finds nothing left to train."""
        if cfg.wandb.mode == "disabled":
            return False
        wandb_dir = Path(directory) / "wandb"
        if not (wandb_dir / f"{cls._key(cfg)}.run_id").is_file():
            return False
        try:
            return int((wandb_dir / f"{cls._key(cfg)}.finished").read_text().strip()) != stored
        except (OSError, ValueError):  # no record: finished by an older rl_gpt, or never
            return True

    def add(self, run: int, steps: list[int], series: Mapping[str, list[float]], summary: Mapping[str, Any]) -> None:
        """Log one finished run: ``summary`` as a step, ``series`` (per checkpoint) kept for the chart."""
        if self.run is None:
            return
        self.finished += 1
        self.run.log({"run": run, "runs_finished": self.finished, **summary}, step=self.finished)
        self.keep_curves(run, steps, series)

    def keep_curves(self, run: int, steps: list[int], series: Mapping[str, list[float]]) -> None:
        """Keep a run's curves for the chart without logging it as a step: a resumed collection's
        chart then holds the runs stored before it too, not only this session's."""
        if self.run is None:
            return
        for key, values in series.items():
            kept = self.curves.setdefault(key, [])
            if len(kept) < self.MAX_CURVES and run not in (r for r, _, _ in kept):
                kept.append((run, list(steps), list(values)))

    def finish(self, failed: bool = False) -> None:
        """Chart the curves and close the run; ``failed`` (stopped or broken) marks it so in W&B."""
        if self.run is None:
            return
        import wandb

        charts = {}
        for key, kept in self.curves.items():
            kept.sort(key=lambda entry: entry[0])
            if kept:
                charts[f"curves/{key}"] = wandb.plot.line_series(
                    xs=[steps for _, steps, _ in kept],
                    ys=[values for _, _, values in kept],
                    keys=[f"run {run}" for run, _, _ in kept],
                    title=f"{key} per checkpoint (first {len(kept)} runs)",
                    xname=self.step_name,
                )
        # At the last run's step, not past it: a resumed collection logs its next run at the next step. A
        # session that added no run has nothing new to chart, and W&B would drop a step it has passed.
        if charts and self.finished > self.stored:
            self.run.log(charts, step=self.finished)
        if not failed:  # a finished collection's dataset, which train, calibrate and sweep then use
            log_output(self.cfg, self.run, "dataset", self.cfg.dataset_dir)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None
        if not failed:  # a later session with nothing to train then opens no run
            marker = self.directory / "wandb" / f"{self._key(self.cfg)}.finished"
            with contextlib.suppress(OSError):  # unwritten, a later session logs the dataset once more: no harm
                marker.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(marker, str(self.finished))
