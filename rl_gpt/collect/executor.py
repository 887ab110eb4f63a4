"""Run many collection runs in parallel (local processes or Ray) into one checkpoint dataset.

The main process is the dataset's only writer: workers return finished runs, the main process
appends each atomically, and consolidates at the end. Killing the collection loses only runs in
flight; running the same command again skips the runs already stored.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

from rl_gpt.config import ConfigError, ExperimentConfig, dump_yaml, to_dict
from rl_gpt.dataset import DatasetWriter, task_record
from rl_gpt.interrupt import interrupts_deferred, said_what_was_kept
from rl_gpt.io import atomic_write_json, atomic_write_text, ensure_writable_dir, exclusive_folder
from rl_gpt.progress import progress_bar
from rl_gpt.wandb_run import CollectionLog, check_login

__all__ = ["collect", "dataset_spec"]

RunFn = Callable[[ExperimentConfig, int], Any]
#: A job trains several runs (a supervised batch) or one (RL) and returns their results in order.
JobFn = Callable[[ExperimentConfig, Sequence[int]], list[Any]]

#: The spec's note for datasets collected with ``collect.fold_normalisation`` (policy.normalize_obs is false).
OBS_FOLDED = (
    "folded into the first layer: W / sqrt(var + eps), b - W mean / sqrt(var + eps) with each checkpoint's "
    "own obs_mean/obs_var; params read raw observations, unclipped (VecNormalize clipped at clip_obs)"
)
#: When RL checkpoints are copied: ``checkpoint_timing`` in specs. "after_update": the policy after every
#: update on the steps in ``step``, and a run's last row its trained policy. Older datasets lack the key:
#: their copies were taken while a rollout was collected, before the update on it, so they missed the
#: run's last update. "mixed": a dataset of older runs extended with newer ones.
CHECKPOINT_TIMING = "after_update"
FOLDED_PARAMS = "; VecNormalize statistics folded into the first layer (they read raw observations)"


def dataset_spec(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything a reader needs to rebuild the network and load any row, without rl_gpt."""
    if cfg.task.kind == "supervised":
        from rl_gpt.collect.supervised_run import supervised_spec

        return supervised_spec(cfg)
    from rl_gpt.collect.sb3_run import describe_policy, describe_versions, folds_normalisation
    from rl_gpt.evaluate.rollout import evaluation_definition

    task = task_record(to_dict(cfg.task))
    folded = folds_normalisation(cfg)
    layout, policy = describe_policy(cfg.task, folded)
    stats = "VecNormalize running {}"
    if folded:
        stats += "; already folded into params, kept for reference"
    spec = {
        "task": task,
        "env_id": cfg.task.env_id,
        "algo": cfg.task.algo,
        "policy_kwargs": cfg.task.policy_kwargs,
        "metric": {
            "name": cfg.task.metric,
            "higher_is_better": cfg.task.higher_is_better,
            "field": "metric",
            "definition": "mean undiscounted return of deterministic evaluation episodes",
        },
        "policy": policy,
        "layout": layout.to_dict(),
        "fields": {
            "params": "(N, D) float32 actor parameters, flattened in layout order (SB3 state_dict keys)"
            + (FOLDED_PARAMS if folded else ""),
            "metric": "(N,) float32 mean deterministic evaluation return (NaN where invalid)",
            "return_std": "(N,) float32 std of deterministic evaluation returns",
            "return_stoch": "(N,) float32 mean stochastic evaluation return",
            "return_stoch_std": "(N,) float32 std of stochastic evaluation returns",
            "episode_length": "(N,) float32 mean deterministic episode length",
            "run": "(N,) int64 training run index (seed = collect.seed + run)",
            "step": "(N,) int64 environment steps trained on (0: the initialisation; a run's last row: trained)",
            "wall_time": "(N,) float32 seconds since the run started",
            "valid": "(N,) bool false for NaN/inf or exploding weights (excluded from training)",
        }
        # only the columns data/ holds: a reader iterating `fields` finds each one
        | (
            {
                "obs_mean": "(N, obs_dim) float32 " + stats.format("mean"),
                "obs_var": "(N, obs_dim) float32 " + stats.format("variance"),
            }
            if cfg.task.normalize
            else {}
        ),
        "evaluation": {
            "episodes": cfg.collect.eval_episodes,
            "seed": cfg.collect.eval_seed,
            "definition": evaluation_definition(cfg.task.env_id),
        },
        "checkpoint_timing": CHECKPOINT_TIMING,
        "versions": describe_versions(),
        "collect": to_dict(cfg.collect),
    }
    if folded:  # top level: PolicySpec.from_dict refuses keys it does not know
        spec["obs_normalisation"] = OBS_FOLDED
    return spec


def _one_run(run_fn: RunFn, cfg: ExperimentConfig, runs: Sequence[int]) -> list[Any]:
    return [run_fn(cfg, run) for run in runs]


#: A warning a worker raised: message, category (named: :class:`WarningCategory`), file, line.
CaughtWarning = tuple[str, "WarningCategory", str, int]


class WarningCategory(NamedTuple):
    """A warning's class by name, with its nearest built-in base: the main process never imports a module
    (nor unpickles a class) to hear a worker's warning, yet a filter on a class it has imported still matches."""

    module: str
    qualname: str
    builtin: str  # e.g. "DeprecationWarning" for a subclass of it

    @classmethod
    def of(cls, category: type[Warning]) -> WarningCategory:
        base = next(c for c in category.__mro__ if getattr(builtins, c.__name__, None) is c)
        return cls(category.__module__, category.__qualname__, base.__name__)

    def here(self) -> type[Warning]:
        """The class itself where its module is imported here; else the built-in base."""
        found: Any = sys.modules.get(self.module)
        for part in self.qualname.split("."):
            found = getattr(found, part, None)
        if isinstance(found, type) and issubclass(found, Warning):
            return found
        return getattr(builtins, self.builtin, UserWarning)


def _call_job(job_fn: JobFn, cfg: ExperimentConfig, runs: Sequence[int]) -> tuple[list[Any], list[CaughtWarning]]:
    """Run a job in a worker and return its results with the warnings it raised, for the main process to
    say once in its own format: each worker printed SB3's many-line warnings again, in Python's.
    (A plain function also because Ray's remote decorator refuses partials.)"""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            results = job_fn(cfg, runs)
    except BaseException:
        for w in caught:  # said here, as before: the warnings that may explain a failure are not lost with it
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        raise
    return results, [(str(w.message), WarningCategory.of(w.category), w.filename, w.lineno) for w in caught]


def _say_worker_warnings(caught: list[CaughtWarning]) -> None:
    """Warn here what a worker warned, through this process's filters and format, and only once: the same
    warning from the same line (in any worker, or in this process before) is said the first time."""
    for message, named, filename, lineno in caught:
        category = named.here()
        module = next((m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == filename), None)
        if module is None:
            warnings.warn_explicit(message, category, filename, lineno, registry=_WORKER_WARNINGS)
        else:
            registry = vars(module).setdefault("__warningregistry__", {})
            warnings.warn_explicit(message, category, filename, lineno, module.__name__, registry)


#: Where warnings from files this process has not imported are remembered as said.
_WORKER_WARNINGS: dict[Any, Any] = {}


def _plan_jobs(
    cfg: ExperimentConfig, run_fn: RunFn | None, todo: list[int], planned: Sequence[int]
) -> tuple[JobFn, list[list[int]]]:
    """What each job runs and which runs it takes: supervised runs train in stacked batches, RL runs
    (and an injected ``run_fn``) one per job. Supervised batches are planned over ``planned`` (the runs of
    the collection being resumed, or ``todo``) and only those with a run in ``todo`` train."""
    if run_fn is None and cfg.task.kind == "supervised":
        from rl_gpt.collect.supervised_run import plan_batches, train_supervised_runs

        # A Ray cluster's size is not known before it is joined: there, only batch_runs caps a batch.
        remote = cfg.collect.executor == "ray" and cfg.collect.ray_address and cfg.collect.workers <= 0
        workers = 1 if remote else _workers(cfg)
        # A batch with a run left trains whole (the caller skips the runs already stored): a run's weights
        # depend on its batch's size (in the last bits), so a resumed collection trains each run as the
        # uninterrupted one would.
        left = set(todo)
        return train_supervised_runs, [b for b in plan_batches(cfg, planned, workers) if left & set(b)]
    if run_fn is None:
        from rl_gpt.collect.sb3_run import train_rl_run

        run_fn = train_rl_run
    return functools.partial(_one_run, run_fn), [[run] for run in todo]


def collect(cfg: ExperimentConfig, run_fn: RunFn | None = None, progress: bool = True) -> Path:
    """Collect ``cfg.collect.runs`` runs into ``cfg.dataset_dir``, resuming what is already there."""
    from rl_gpt.collect.sb3_run import check_env_id, check_rl_collection

    if cfg.task.kind == "rl":
        check_env_id(cfg.task.env_id)
        check_rl_collection(cfg)
    root = cfg.task.data_root
    if cfg.task.kind == "supervised" and not root:  # extending a dataset: where its files were
        root = _recorded_data_root(cfg)
    if root:  # the spec and config.yaml are read by later commands, from other folders
        from rl_gpt.supervised.data_root import absolute_data_root

        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, data_root=absolute_data_root(root)))
    spec = dataset_spec(cfg)  # before the folder exists: a refused task (bad network arguments) leaves none
    if cfg.collect.executor == "ray":
        check_ray(cfg.collect.ray_address)
    check_login(cfg)  # and W&B credentials, where they are needed
    option = cfg.dataset_option
    with exclusive_folder(ensure_writable_dir(cfg.dataset_dir, option), "collect", option) as root:
        return _collect_into(root, spec, cfg, run_fn, progress)


def _recorded_data_root(cfg: ExperimentConfig) -> str | None:
    """The ``task.data_root`` the dataset being extended was collected from, if it is of this task (its
    data is checked against the spec's SHA-256 as a given folder's is)."""
    try:
        spec = json.loads((Path(cfg.dataset_dir) / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    task = (spec.get("task") or {}) if isinstance(spec, dict) else {}
    root = task.get("data_root") if task.get("name") == cfg.task.name else None
    if isinstance(root, str) and not Path(root).is_dir():
        raise ConfigError(
            f"task.data_root: {cfg.dataset_dir} was collected from {root}, which is no longer a folder; pass "
            "task.data_root=DIR, the folder its files are in now"
        )
    return root if isinstance(root, str) else None


def _keep_checkpoint_timing(writer: DatasetWriter, option: str, adding: bool) -> None:
    """Keep the spec true to the runs it describes when they were copied unlike new ones: "mixed" once
    new RL runs join (with a warning), the stored runs' timing while none do."""
    stored = writer.stored_spec
    new = writer.spec.get("checkpoint_timing")
    if stored is None or new is None or stored.get("checkpoint_timing") == new:
        return
    if adding:
        warnings.warn(
            f"{writer.root} holds runs stored by an older rl_gpt, which copied each policy before the update on "
            "its last rollout (a run's last update was never stored); new runs store the policy after it. Collect "
            f"into another {option} folder for a dataset of one kind",
            stacklevel=3,
        )
        writer.spec["checkpoint_timing"] = "mixed"
    elif "checkpoint_timing" in stored:
        writer.spec["checkpoint_timing"] = stored["checkpoint_timing"]
    else:  # an older dataset, unchanged
        del writer.spec["checkpoint_timing"]
    atomic_write_json(writer.root / "spec.json", writer.spec)


#: The settings a supervised collection's batches are planned from (with the CPU count where workers is 0).
_PLAN_SETTINGS = ("runs", "workers", "batch_runs", "executor", "ray_address")


def _planned_runs(writer: DatasetWriter, cfg: ExperimentConfig, todo: list[int]) -> Sequence[int]:
    """The runs to plan batches over: all of a collection resumed with the settings it began with, so each
    run trains in the batch it would have had; only ``todo`` where those changed (an extension to more
    runs, other workers), whose stored runs were planned otherwise and would train again for nothing."""
    stored = (writer.stored_spec or {}).get("collect") or {}
    now = to_dict(cfg.collect)
    resumed = all(stored.get(key) == now.get(key) for key in _PLAN_SETTINGS)
    return range(cfg.collect.runs) if resumed else todo


def _collect_into(
    root: Path, spec: dict[str, Any], cfg: ExperimentConfig, run_fn: RunFn | None, progress: bool
) -> Path:
    writer = DatasetWriter(root, spec, cfg.dataset_option)
    atomic_write_text(root / "config.yaml", dump_yaml(cfg))
    done = writer.completed_runs()
    todo = [r for r in range(cfg.collect.runs) if r not in done]
    _keep_checkpoint_timing(writer, cfg.dataset_option, adding=bool(todo))
    bar = progress_bar(
        total=cfg.collect.runs,
        initial=cfg.collect.runs - len(todo),
        desc="runs",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    checkpoints = 0
    start = time.time()
    log, completed = None, False
    try:  # from here a Ctrl-C (also while SB3 is still being imported) says what is stored
        job_fn, jobs = _plan_jobs(cfg, run_fn, todo, _planned_runs(writer, cfg, todo))
        step_name = "opt_step" if cfg.task.kind == "supervised" else "env_step"
        # with nothing to train, only to finish a W&B run stopped after its last run: it logs the dataset
        finishing = not todo and CollectionLog.unfinished(cfg, root.parent, len(done))
        log = CollectionLog(cfg, root.parent, step_name, stored=len(done)) if todo or finishing else None
        if log is not None and log.run is not None:  # the chart also shows the runs stored before a resume
            fields = ("step", "metric", *WANDB_SERIES)
            for run, rows in writer.stored_runs(CollectionLog.MAX_CURVES, fields):
                steps, series, _ = _wandb_entry(cfg, rows, {})
                log.keep_curves(run, steps, series)
        results = _run_ray(cfg, job_fn, jobs) if cfg.collect.executor == "ray" else _run_local(cfg, job_fn, jobs)
        # closing: an error here (Ctrl-C while a run is stored, a full disk) stops the workers at once
        with contextlib.closing(results):
            for run, result in results:
                if run in done:  # trained again beside the rest of its batch (_plan_jobs)
                    continue
                writer.add_run(run, result.rows, result.meta)
                if log is not None:
                    log.add(run, *_wandb_entry(cfg, result.rows, result.meta))
                checkpoints += len(result.rows["params"])
                bar.set_postfix(checkpoints=checkpoints, **_last_metric(cfg, result.meta), refresh=False)
                bar.update(1)
        total = writer.consolidate()  # within the try: a Ctrl-C here, after the last run, still says so
        completed = True
    except KeyboardInterrupt as stop:
        # A second Ctrl-C (or SIGTERM) waits until what is stored has been said.
        notice = f"saving what is stored in {root} before stopping; this Ctrl-C (or SIGTERM) waits until then"
        with interrupts_deferred(notice):
            bar.close()
            writer.consolidate()
            if log is not None:  # W&B's closing lines before ours, not after
                with contextlib.suppress(Exception):  # W&B's trouble must not hide what is stored (main finishes it)
                    log.finish(failed=True)
                log = None  # not finished again below
            print(
                f"\ninterrupted: {len(writer.completed_runs())} runs are stored in {root}; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            said_what_was_kept(stop)
        raise
    finally:
        bar.close()
        if log is not None:
            log.finish(failed=not completed)  # a stopped collection is not a finished one
    if progress:
        beyond = len([r for r in done if r >= cfg.collect.runs])
        held = f" ({len(done) + len(todo)} runs: runs={cfg.collect.runs} asks for fewer)" if beyond else ""
        print(
            f"collected {len(todo)} new runs ({checkpoints} checkpoints) in {time.time() - start:.1f}s; "
            f"dataset {root} has {total} checkpoints{held}"
        )
    return root


def _last_metric(cfg: ExperimentConfig, meta: dict[str, Any]) -> dict[str, str]:
    """The progress bar's entry for a finished run's final metric, named after it: ``last_return``,
    ``last_test_loss``, ...; returns with one decimal, supervised metrics (losses, error fractions)
    with four significant digits."""
    value = meta.get("final_metric", meta.get("final_return", float("nan")))
    text = f"{value:.4g}" if cfg.task.kind == "supervised" else f"{value:.1f}"
    return {f"last_{cfg.task.metric}": text}


#: Per-checkpoint rows a collection logs as curves, and their W&B names (``metric`` is named after the task's).
WANDB_SERIES = {
    "return_stoch": "return_stochastic",
    "test_loss": "test_loss",
    "test_error": "test_error",
    "train_loss": "train_loss",
}
# runs_in_batch: a supervised run's times are its batch's (its runs train together), so say how many shared them
WANDB_SUMMARY = ("train_time", "eval_time", "runs_in_batch", "invalid_checkpoints")


def _wandb_entry(
    cfg: ExperimentConfig, rows: dict[str, Any], meta: dict[str, Any]
) -> tuple[list[int], dict[str, list[float]], dict[str, Any]]:
    """A finished run's checkpoint steps, its per-checkpoint curves and its summary, for the collection's W&B run."""
    series = {cfg.task.metric: rows["metric"].tolist()}
    for key, name in WANDB_SERIES.items():
        if key in rows and name not in series:
            series[name] = rows[key].tolist()
    summary = {f"final_{cfg.task.metric}": float(rows["metric"][-1])}
    summary.update({key: meta[key] for key in WANDB_SUMMARY if key in meta})
    return rows["step"].tolist(), series, summary


def _workers(cfg: ExperimentConfig) -> int:
    return cfg.collect.workers if cfg.collect.workers > 0 else (os.cpu_count() or 1)


def _init_worker(parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """End this worker once its parent is gone: a collection killed with ``kill -9`` cannot stop its
    pool, whose workers would otherwise finish runs nobody stores and then wait for work forever."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _run_local(cfg: ExperimentConfig, job_fn: JobFn, jobs: list[list[int]]) -> Iterator[tuple[int, Any]]:
    if not jobs:
        return
    workers = min(_workers(cfg), len(jobs))
    if workers == 1:  # no pool: simpler tracebacks and no process start-up
        for runs in jobs:
            yield from zip(runs, job_fn(cfg, runs), strict=True)
        return
    # spawn, not fork: torch and SB3 hold threads and locks that fork copies in a broken state
    before, pool = set(mp.active_children()), None
    try:
        with _sigint_blocked():  # the workers inherit the blocked signal; the pool starts them as jobs are submitted
            pool = ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
            )
            pending = {pool.submit(_call_job, job_fn, cfg, runs): runs for runs in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                runs = pending.pop(fut)
                results, caught = fut.result()
                _say_worker_warnings(caught)
                yield from zip(runs, results, strict=True)
    except BaseException:
        # Ctrl-C reaches this process only, which stops its workers here, at once, whatever they are
        # doing: a worker still importing torch printed tracebacks when Ctrl-C reached it too. Their
        # futures then fail as a broken pool; cancelling them raced the pool's own thread, which
        # printed an InvalidStateError.
        for process in set(mp.active_children()) - before:
            process.terminate()
        if pool is not None:
            pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT while worker processes start, so that they inherit the mask and never see a
    terminal's Ctrl-C; one that arrives meanwhile (or a SIGTERM) is delivered to this process when it ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: the workers see Ctrl-C too
        yield
        return
    from multiprocessing import resource_tracker

    # Started now, not by the pool's first lock inside the block: starting it unblocks SIGINT again.
    resource_tracker.ensure_running()
    # The mask is what the workers inherit, but it holds for this thread only: a signal that another
    # thread (the progress bar's monitor) takes still raises here, possibly between a worker's start
    # and the spawn data it waits for (it then dies with "EOFError: Ran out of input"). The Python-level
    # deferral holds the KeyboardInterrupt until every worker has started.
    with interrupts_deferred():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_ray(address: str | None, timeout_s: float = 5.0) -> None:
    """Ray installed, and something listening at ``address`` (``host:port``; None: the RAY_ADDRESS
    environment variable's, which ``ray.init`` joins), or a one-line error now: ``ray.init`` waits for
    an unreachable cluster for minutes without saying why."""
    import importlib.util

    setting, drop = "collect.ray_address", "drop collect.ray_address"
    if address in (None, "", "auto") and os.environ.get("RAY_ADDRESS"):  # ray.init joins it for auto too
        drop = "unset RAY_ADDRESS" + (" and drop collect.ray_address" if address == "auto" else "")
        address, setting = os.environ["RAY_ADDRESS"], "RAY_ADDRESS (environment)"
    if address and address.startswith("ray://"):  # Ray Client's server: unanswered, ray.init waits 30 s
        host, port = _host_port(address.removeprefix("ray://").split("/", 1)[0], default_port=_RAY_CLIENT_PORT)
        if host and port is not None:
            _check_answers(f"{setting}={address}", host, port, timeout_s, drop)
    # auto: Ray looks it up and says so quickly; local: Ray starts a new instance here
    elif address and address not in ("auto", "local") and "://" not in address:
        host, port = _host_port(address)
        if not host or port is None:
            raise ConfigError(f"{setting}={address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379), auto or local")
        _check_answers(f"{setting}={address}", host, port, timeout_s, drop)
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "collect.executor=ray needs Ray: pip install 'rl_gpt[ray]' (in a checkout: pip install -e '.[ray]')"
        )


_RAY_CLIENT_PORT = 10001  # Ray Client's default, which a ray:// address without a port means


def _host_port(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``HOST:PORT`` split, IPv6 hosts in brackets (``[::1]:6379``); a missing port is ``default_port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1 or default_port is None:
        host, _, port = text.rpartition(":")
    else:  # a bare name, or an unbracketed IPv6 host: no port given
        host, port = text, ""
    if not port:
        return host, default_port
    return host, int(port) if port.isdigit() else None


def _check_answers(named: str, host: str, port: int, timeout_s: float, drop: str) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"{named}: no Ray cluster answers there ({exc.strerror or exc}); start one with `ray start --head` "
            f"and pass the address it prints, or {drop} to start Ray locally"
        ) from None


def _run_ray(cfg: ExperimentConfig, job_fn: JobFn, jobs: list[list[int]]) -> Iterator[tuple[int, Any]]:
    import ray

    if not jobs:
        return
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = (
            {"address": cfg.collect.ray_address}
            if cfg.collect.ray_address
            # RAY_ADDRESS (set by `ray job submit`): the cluster the job was sent to
            else {}
            if os.environ.get("RAY_ADDRESS")
            # "local": a new instance of this machine's size, even where a `ray start` cluster runs or
            # left its address file behind (ray.init would join that and refuse num_cpus)
            else {"address": "local", "num_cpus": _workers(cfg), "include_dashboard": False}
        )
        # Ray's driver installs its own SIGTERM handler, which aborts the process with a core dump
        # instead of letting the collection store and say what is done: the handlers set before stay.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        ray.init(log_to_driver=False, **kwargs)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    remote = ray.remote(num_cpus=1)(_call_job)
    refs: dict[Any, list[int]] = {}
    try:
        refs = {remote.remote(job_fn, cfg, runs): runs for runs in jobs}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                results, caught = ray.get(ref)
                _say_worker_warnings(caught)
                yield from zip(refs.pop(ref), results, strict=True)
    finally:
        for ref in list(refs):
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
