"""``rl-gpt``: argument parsing and config loading only; every command calls a library function."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rl_gpt.cli_parser import build_parser, override_hint

if TYPE_CHECKING:
    from rl_gpt.config import ExperimentConfig

__all__ = ["console_main", "main"]


def _one_line_warnings(command: str) -> Callable[..., str]:
    """Format warnings as ``rl-gpt CMD: warning: ...`` on one line, not as Python source locations;
    returns the previous formatter, for the caller to put back. (Replacing the formatter, not the
    printer, keeps ``warnings.catch_warnings(record=True)`` working.)"""

    def one_line(message: Warning | str, category: Any = None, filename: str = "", *_where: Any, **_kw: Any) -> str:
        source = _warning_source(filename)
        if source is None:
            return f"rl-gpt {command}: warning: {message}\n"
        first = (str(message).strip().splitlines() or [""])[0]  # another library's, often many lines: its first
        return f"rl-gpt {command}: warning from {source}: {first}\n"

    previous, warnings.formatwarning = warnings.formatwarning, one_line
    return previous


def _warning_source(filename: str) -> str | None:
    """The package that issued a warning, when it is not rl_gpt: the folder under site-packages (or
    dist-packages) that holds the file, e.g. ``torchrl``; None for rl_gpt's own files and anything else."""
    path = Path(filename or "")
    here = Path(__file__).resolve().parent
    try:
        path.resolve().relative_to(here)
        return None
    except (ValueError, OSError):
        pass
    if not path.is_absolute():
        return None  # a made-up or relative name: nothing to say where it came from
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return None


# Where each error said in one line is defined (a module, its class). Only the modules already imported are
# asked: one that is not cannot have raised its error, and importing rl_gpt.dataset for its class would cost a
# config typo the seconds of tensordict's import (torch._dynamo) before its one line.
_ONE_LINE_ERRORS = (
    ("rl_gpt.config.schema", "ConfigError"),
    ("rl_gpt.dataset.store", "DatasetError"),
    ("rl_gpt.train.modelfile", "ModelFileError"),
    ("rl_gpt.evaluate.sb3", "PolicyFileError"),
    ("rl_gpt.supervised.files", "ClassifierFileError"),
    ("rl_gpt.sweep.compare", "ReportError"),
    ("rl_gpt.io", "FolderInUseError"),
    ("rl_gpt.env_modules", "EnvModuleError"),
)


def _one_line_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ``main`` says in one line (evaluated only once one is raised)."""
    ours = tuple(getattr(sys.modules[name], cls) for name, cls in _ONE_LINE_ERRORS if name in sys.modules)
    return (*ours, PermissionError, FileNotFoundError, FloatingPointError)


def _cmd_collect(args: argparse.Namespace) -> None:
    from rl_gpt.config import load_config

    cfg = load_config(args.config, args.overrides, command="collect")  # before torch's imports: a typo is said at once
    from rl_gpt.collect import collect

    collect(cfg, progress=not args.quiet)


def _cmd_info(args: argparse.Namespace) -> None:
    from rl_gpt.cli_info import cmd_info

    cmd_info(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from rl_gpt.config import load_config

    cfg = load_config(args.config, args.overrides, command="train")
    from rl_gpt.train import train

    _refuse_another_policy(cfg)
    state = Path(cfg.model_dir) / "train_state" / "state.json"
    before = state.stat().st_mtime_ns if state.exists() else None
    out = train(cfg, progress=not args.quiet, resume=not args.restart)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the rest is rank 0's: said and done once
        return
    if not args.quiet and (not state.exists() or state.stat().st_mtime_ns != before):  # not after "nothing to do"
        print(f"model written to {out}")
    if cfg.train.calibrate:
        from rl_gpt.sweep.calibrate import ensure_calibrated  # the demo's path too: one way to calibrate after training

        calibration = Path(out) / "calibration.json"
        before = calibration.stat().st_mtime_ns if calibration.exists() else None
        try:
            ensure_calibrated(cfg, out, progress=not args.quiet)
        except KeyboardInterrupt as stop:
            _finish_wandb_runs()  # the calibration's W&B run: its closing lines before ours, not after
            if calibration.exists() and calibration.stat().st_mtime_ns != before:  # stopped while plotting or logging
                missing = "calibration.png or the W&B log may be missing"
                print(f"\ninterrupted after {calibration} was written; {missing}", file=sys.stderr)
            else:
                print(
                    f"\ninterrupted while calibrating: the model in {out} is saved and whole, without a calibration "
                    "of these weights; run the same command again to measure it",
                    file=sys.stderr,
                )
            from rl_gpt.interrupt import said_what_was_kept

            said_what_was_kept(stop)
            raise


def _refuse_another_policy(cfg: Any) -> None:
    """Refuse to train with a config whose SB3 algorithm or actor differs from its dataset's. Only for a
    policy dataset of the config's own task: train itself refuses another task, or a missing dataset."""
    from rl_gpt.collect.sb3_run import policy_mismatch
    from rl_gpt.config import ConfigError
    from rl_gpt.dataset import CheckpointDataset, DatasetError
    from rl_gpt.train.modelfile import same_task

    try:
        ds = CheckpointDataset(cfg.dataset_dir)
    except (DatasetError, OSError):
        return
    task = cfg.task
    if task.kind != "rl" or not same_task(ds.spec, task.name, task.env_id, task.kind):
        return
    why = policy_mismatch(task, ds.spec, ds.layout)
    if why:
        raise ConfigError(f"{cfg.dataset_dir} {why}, or the config the dataset was collected with")


def _config(args: argparse.Namespace, command: str) -> ExperimentConfig:
    """The config to run with: the one given, else the one saved with ``--model`` as
    :func:`rl_gpt.train.saved_config.load_model_config` reads it, else the embedded default."""
    if args.config is not None or not args.model:
        from rl_gpt.config import load_config

        return load_config(args.config, args.overrides, command=command)
    from rl_gpt.train.saved_config import load_model_config  # torch-free: a typo is still said at once

    return load_model_config(args.model, args.overrides, command=command)


def _named_dataset(args: argparse.Namespace, cfg: Any) -> str | None:
    """``cfg.dataset`` where the user named it (a config file or ``dataset=``), not where it comes from
    the model's own config.yaml: that path was typed at training time, maybe relative to elsewhere."""
    named = args.config is not None or any(o.startswith("dataset=") for o in args.overrides)
    return cfg.dataset if named else None


def _named_data_root(args: argparse.Namespace, cfg: Any) -> str | None:
    """``cfg.task.data_root`` where this command named it (a config file, ``task.data_root=``), not where it
    comes from the model's config.yaml: the files may have moved since, and the dataset records where."""
    named = args.config is not None or any(o.startswith(("task.data_root=", "task=")) for o in args.overrides)
    return cfg.task.data_root if named else None


def _cmd_sweep(args: argparse.Namespace) -> None:
    cfg = _config(args, "sweep")
    from rl_gpt.sweep.run import sweep
    from rl_gpt.sweep.table import format_table

    model = args.model or str(cfg.model_dir)
    # Beside the model it sweeps: a --model's saved config names the out= it was trained in, relative
    # to wherever that was, and a sweep of a copied model would land in (and replace) the original's.
    named_out = any(o.startswith("out=") for o in args.overrides)
    beside = Path(args.model).resolve().parent if args.model and not named_out else Path(cfg.out)
    out = args.out or str(beside / "sweep")
    existed, report_file = Path(out).exists(), Path(out) / "report.json"
    before = report_file.stat().st_mtime_ns if report_file.exists() else None
    try:
        named = {"dataset": _named_dataset(args, cfg), "data_root": _named_data_root(args, cfg)}
        report = sweep(cfg, model, out, progress=not args.quiet, **named)
    except KeyboardInterrupt as stop:
        from rl_gpt.interrupt import said_what_was_kept

        said_what_was_kept(stop)
        _finish_wandb_runs()  # the sweep's W&B run: its closing lines before ours, not after
        if report_file.exists() and report_file.stat().st_mtime_ns != before:  # stopped while plotting or logging
            missing = "sweep.png or the W&B log may be missing"
            print(f"\ninterrupted after {report_file} was written; {missing}", file=sys.stderr)
            raise
        if not existed:  # the folder the sweep made for its report, still empty: not left behind
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        print(
            "\ninterrupted: a sweep writes report.json only when it ends, so nothing was written; "
            "run the same command again",
            file=sys.stderr,
        )
        raise
    print(format_table(report))
    print(f"report: {Path(out) / 'report.json'}  plot: {Path(out) / 'sweep.png'}")


def _cmd_calibrate(args: argparse.Namespace) -> None:
    cfg = _config(args, "calibrate")
    from rl_gpt.sweep.calibrate import calibrate

    named = {"dataset": _named_dataset(args, cfg), "data_root": _named_data_root(args, cfg)}
    calibrate(cfg, args.model or str(cfg.model_dir), progress=not args.quiet, **named)


def _cmd_generate(args: argparse.Namespace) -> None:
    from rl_gpt.generate import generate

    rec = generate(
        args.model,
        args.target_return,
        args.out,
        from_zip=args.from_zip,
        seed=args.seed,
        num=args.num,
        guidance=args.guidance,
        steps=args.steps,
        episodes=args.episodes,
        dataset=args.dataset,
        data_root=args.data_root,
        average=args.average,
        calibrated=not args.no_calibration,
        extrapolate=args.extrapolate,
        rerank=args.rerank,
    )
    if "policies" in rec:
        cond = "" if rec["conditioned_on"] == rec["target_return"] else f" (conditioned on {rec['conditioned_on']:.4g})"
        print(f"start {rec['metric']} {rec['start_return']:.4g} -> prompted {rec['target_return']:.4g}{cond}")
        for p in rec["policies"]:
            ranked = f" (the ranker predicted {p['predicted_return']:.4g})" if "predicted_return" in p else ""
            spread = "" if rec["episodes"] is None else f" +- {p['achieved_std']:.3g}"  # classifiers: one test split
            other = ""  # a classifier's other test metric
            if "test_error" in p:
                other = f" (test error {p['test_error']:.1%})" if rec["metric"] == "test_loss" else ""
                other = other or f" (test loss {p['test_loss']:.4g})"
            print(f"  {p['file']}: achieved {p['achieved_return']:.4g}{other}{spread}{ranked}")
    else:  # several targets: one folder each
        print(f"start {rec['metric']} {rec['start_return']:.4g}; {rec['policies_per_target']} per target")
        for folder, target, got in zip(rec["folders"], rec["target_return"], rec["achieved_mean"], strict=True):
            print(f"  target {target:<8.4g} achieved {got:<8.4g} {args.out}/{folder}/")
        print(f"plot: {args.out}/generated.png")
    if rec.get("eval_seed") is not None:
        print(
            f"returns over {rec['episodes']} episodes from evaluation seed {rec['eval_seed']} "
            f"(`rl-gpt evaluate FILE --episodes {rec['episodes']} --seed {rec['eval_seed']}` measures a file alike)"
        )
    print(f"written to {args.out}/generated.json")


def _cmd_data(args: argparse.Namespace) -> None:
    from rl_gpt.cli_data import cmd_data

    cmd_data(args)


def _cmd_demo(args: argparse.Namespace) -> None:
    from rl_gpt.config import ConfigError
    from rl_gpt.demo import default_demo_folder, run_demo

    if args.task and args.config:
        raise ConfigError(f"give the demo's task once: --task {args.task} or {args.config}, not both")
    given = [o.partition("=")[2] for o in args.overrides if o.partition("=")[0] == "out"]
    if args.out and given:  # out= would win over --out without a word
        raise ConfigError(f"give the demo's folder once: --out {args.out} or out={given[-1]}, not both")
    config = args.task or args.config
    out = args.out or default_demo_folder(config)
    run_demo(out, config, args.overrides, progress=not args.quiet, restart=args.restart)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from rl_gpt.devices import resolve_device
    from rl_gpt.evaluate.cli import evaluate_target

    resolve_device(args.device, "--device")  # a missing GPU is a one-line error, before any work
    if args.json:  # an unwritable --json fails before the work, naming the path given
        _check_json_path(args.json)

    result = evaluate_target(
        args.target, args.episodes, args.device, args.seed, args.stochastic, args.dataset, args.data_root, args.env
    )
    print(result["text"])
    if args.json:
        from rl_gpt.io import atomic_write_json

        atomic_write_json(args.json, result["json"])


def _check_json_path(path: str) -> None:
    """Refuse a ``--json`` path that cannot be written, with a one-line error naming it."""
    from rl_gpt.config import ConfigError
    from rl_gpt.io import ensure_writable_dir

    if Path(path).is_dir():
        raise ConfigError(f"--json {path} is a directory; give a file name such as {path}/result.json")
    ensure_writable_dir(Path(path).resolve().parent, "--json")


def _cmd_compare(args: argparse.Namespace) -> None:
    from rl_gpt.io import atomic_write_json
    from rl_gpt.sweep.compare import ReportError, compare_reports, comparison_json, format_comparison

    if args.json:  # fail before the work, naming the path given
        _check_json_path(args.json)
    try:
        rows = compare_reports(args.reports)
        table = format_comparison(rows)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as exc:
        if isinstance(exc, ReportError):  # already says what is wrong
            raise
        raise ReportError(
            f"{' or '.join(args.reports)}: not a well-formed sweep report ({type(exc).__name__}: {exc}); "
            "rerun `rl-gpt sweep`"
        ) from None
    print(table)
    if args.json:
        atomic_write_json(args.json, comparison_json(rows))


COMMANDS = {
    "collect": _cmd_collect,
    "info": _cmd_info,
    "train": _cmd_train,
    "sweep": _cmd_sweep,
    "calibrate": _cmd_calibrate,
    "generate": _cmd_generate,
    "demo": _cmd_demo,
    "evaluate": _cmd_evaluate,
    "compare": _cmd_compare,
    "data": _cmd_data,
}


def console_main() -> NoReturn:
    """The ``rl-gpt`` command: :func:`main` on ``sys.argv``, as an exit status.

    After a handled Ctrl-C the process only exits. Another SIGINT meanwhile (a key pressed twice,
    or ``timeout -s INT``, which signals its child and then the child's whole process group) then
    ends it at once, instead of a traceback from the interpreter's shutdown (its worker pools'
    joins). Only here, not in :func:`main`: a caller that runs ``main`` in-process keeps its handler.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # the second one, while main was finishing after the first
        code = 130
    if code == 130 and threading.current_thread() is threading.main_thread():
        for stream in (sys.stdout, sys.stderr):  # os._exit skips the flush: say what was saved first
            with contextlib.suppress(Exception):
                stream.flush()
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    sys.exit(code)


def _say_stopped(command: str, stop: BaseException) -> None:
    """One line for a stop no stage has spoken for (in its first seconds, or in a stage that keeps
    nothing partial): every command writes through temporary names, so running it again is safe."""
    from rl_gpt.interrupt import was_said

    if not was_said(stop) and int(os.environ.get("RANK", "0")) == 0:
        # a download keeps its .part file on purpose: the next call goes on from it
        kept = "a download goes on where it stopped" if command == "data" else "nothing half-written is left"
        print(f"\nrl-gpt {command}: interrupted; {kept}: run the same command again", file=sys.stderr)


#: What torch's file writes and safetensors say when the disk is full or a file outgrows its limit.
_DISK_ERRORS = ("No space left on device", "File too large", "Disk quota exceeded")
_DISK_ADVICE = (
    "; free space (or raise the limit) and run the same command again (collect and train go on from their last save)"
)


def _unenterable(exc: BaseException) -> str | None:
    """For a denied file inside a folder this user may not enter: name the folder, the real
    obstacle (``Permission denied: .../model.json`` suggests the file's own mode)."""
    filename = getattr(exc, "filename", None)
    if not isinstance(exc, PermissionError) or not isinstance(filename, str | os.PathLike):
        return None
    path = Path(os.path.abspath(filename))
    for folder in [*reversed(path.parents), path]:  # the outermost obstacle first
        if folder.is_dir() and not os.access(folder, os.X_OK):
            return f"cannot enter {folder} (permission denied): ask its owner for access, or copy what you need"
    return None


def _finish_wandb_runs() -> None:
    """Close what W&B runs a failed command left open, so that W&B's closing lines ("You can sync
    this run…") come before the line that says what to do, not after it at the interpreter's exit."""
    wandb_run = sys.modules.get("rl_gpt.wandb_run")  # not imported: no run was started
    if wandb_run is not None:
        wandb_run.finish_open_runs(exit_code=1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after flags such as -q: collect the leftovers
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.command]
        flags = [
            e for i, e in enumerate(extra) if e.startswith("-") or (i and extra[i - 1].startswith("-") and "=" not in e)
        ]
        if flags or not hasattr(args, "overrides") or any("=" not in e for e in extra):
            command.error(f"unrecognized arguments: {' '.join(flags or extra)}{override_hint(args.command, flags)}")
        args.overrides = [*args.overrides, *extra]
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():  # `rl-gpt train steps=10`: no config named
        args.overrides, args.config = [config, *args.overrides], None
    try:  # a Ctrl-C while importing is one line, not a traceback
        from rl_gpt.interrupt import Terminated, sigterm_as_interrupt
    except KeyboardInterrupt:
        print(f"\nrl-gpt {args.command}: interrupted before it began; nothing was written", file=sys.stderr)
        return 130

    silent_before = os.environ.get("WANDB_SILENT")
    if getattr(args, "quiet", False):  # -q quiets W&B's own banners too (the run is still logged)
        os.environ.setdefault("WANDB_SILENT", "true")
    previous_format = _one_line_warnings(args.command)
    try:
        with sigterm_as_interrupt():  # `kill PID` saves as Ctrl-C does
            try:
                COMMANDS[args.command](args)
            except BaseException:
                _finish_wandb_runs()
                raise
    except _one_line_errors() as exc:
        print(f"rl-gpt {args.command}: error: {_unenterable(exc) or exc}", file=sys.stderr)
        return 2
    except Terminated as stop:
        _say_stopped(args.command, stop)
        return 143  # the shell's code for a SIGTERM exit
    except KeyboardInterrupt as stop:
        _say_stopped(args.command, stop)
        return 130
    except BrokenPipeError:  # `rl-gpt compare ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except OSError as exc:  # full disk and friends: say so in one line; nothing half-written is left
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        # an OSError of our own wrapping safetensors' error has its message but no errno
        full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(r in str(exc) for r in _DISK_ERRORS)
        advice = _DISK_ADVICE if full else ""
        print(f"rl-gpt {args.command}: error: {exc.strerror or exc}{where}{advice}", file=sys.stderr)
        return 1
    except Exception as exc:  # torch and safetensors report a full disk as their own error types
        reason = next((r for r in _DISK_ERRORS if r in str(exc)), None)
        if reason is None:
            raise
        print(f"rl-gpt {args.command}: error: {reason} ({_first_line(exc)}){_DISK_ADVICE}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format
        if silent_before is None:
            os.environ.pop("WANDB_SILENT", None)
    return 0


if __name__ == "__main__":
    console_main()
