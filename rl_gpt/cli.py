"""``rl-gpt``: argument parsing and config loading only; every command calls a library function."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["console_main", "main"]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _count(text: str) -> int:
    """argparse type: a whole number of things, 1 or more."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; it counts things and needs at least 1")
    return value


def _finite(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        hint = "; options are flags here, e.g. --out DIR" if "=" in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a number{hint}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed, 0 or more (NumPy and Gymnasium refuse negative ones)."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; seeds are 0 or more")
    return value


def _scale(text: str) -> float:
    """argparse type: a guidance scale, 0 or more (0 ignores the prompt, 1 is the plain conditional)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative; use 0 or more (1 = no guidance)")
    return value


def _one_line_warnings(command: str) -> Callable[..., str]:
    """Format warnings as ``rl-gpt CMD: warning: ...`` on one line, not as Python source locations;
    returns the previous formatter, for the caller to put back. (Replacing the formatter, not the
    printer, keeps ``warnings.catch_warnings(record=True)`` working.)"""

    def one_line(message: Warning | str, *_where: Any, **_kw: Any) -> str:
        return f"rl-gpt {command}: warning: {message}\n"

    previous, warnings.formatwarning = warnings.formatwarning, one_line
    return previous


def _cmd_collect(args: argparse.Namespace) -> None:
    from rl_gpt.collect import collect
    from rl_gpt.config import load_config

    cfg = load_config(args.config, args.overrides, command="collect")
    collect(cfg, progress=not args.quiet)


def _cmd_info(args: argparse.Namespace) -> None:
    from rl_gpt.cli_info import cmd_info

    cmd_info(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from rl_gpt.config import load_config
    from rl_gpt.train import train

    cfg = load_config(args.config, args.overrides, command="train")
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

        try:
            ensure_calibrated(cfg, out, progress=not args.quiet)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted while calibrating: the model in {out} is saved and whole, without a calibration "
                "of these weights; run the same command again to measure it",
                file=sys.stderr,
            )
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


def _model_config(args: argparse.Namespace) -> str | dict[str, Any] | None:
    """The config to run with: the one given, else the one saved with ``--model`` (its task's sweep
    settings, not the embedded CartPole's): its config.yaml, else the copy in its model.json (a model
    folder copied without the YAML), else None (the embedded default)."""
    if args.config is not None or not args.model:
        return args.config
    saved = Path(args.model) / "config.yaml"
    if saved.is_file():
        import yaml

        stored = yaml.safe_load(saved.read_text())
        return _sampled_as_saved(stored) if isinstance(stored, dict) else str(saved)
    try:
        from rl_gpt.config import load_config
        from rl_gpt.train.modelfile import read_model_info

        stored = _sampled_as_saved(read_model_info(args.model)["meta"]["config"])
        load_config(stored)  # written by an older version with keys that are gone: use the default
        return stored
    except (OSError, ValueError, KeyError, TypeError):  # no model, or an unreadable copy: fall back as before
        return None


def _sampled_as_saved(config: dict[str, Any]) -> dict[str, Any]:
    """A model's saved config, with ``sweep.rerank: 1`` where it predates ranking (session 19): its
    sweeps and its calibration.json were measured without it, as ``generate`` reads such a model."""
    sweep = config.get("sweep")
    if isinstance(sweep, dict) and "rerank" not in sweep:
        config = {**config, "sweep": {**sweep, "rerank": 1}}
    return config


def _named_dataset(args: argparse.Namespace, cfg: Any) -> str | None:
    """``cfg.dataset`` where the user named it (a config file or ``dataset=``), not where it comes from
    the model's own config.yaml: that path was typed at training time, maybe relative to elsewhere."""
    named = args.config is not None or any(o.startswith("dataset=") for o in args.overrides)
    return cfg.dataset if named else None


def _cmd_sweep(args: argparse.Namespace) -> None:
    from rl_gpt.config import load_config
    from rl_gpt.demo import format_table
    from rl_gpt.sweep.run import sweep

    cfg = load_config(_model_config(args), args.overrides, command="sweep")
    model = args.model or str(cfg.model_dir)
    # Beside the model it sweeps: a --model's saved config names the out= it was trained in, relative
    # to wherever that was, and a sweep of a copied model would land in (and replace) the original's.
    named_out = any(o.startswith("out=") for o in args.overrides)
    beside = Path(args.model).resolve().parent if args.model and not named_out else Path(cfg.out)
    out = args.out or str(beside / "sweep")
    existed, report_file = Path(out).exists(), Path(out) / "report.json"
    before = report_file.stat().st_mtime_ns if report_file.exists() else None
    # Said first, as a researcher may want to keep it (--out elsewhere); not where the sweep cannot write.
    if before is not None and not args.quiet and os.access(out, os.W_OK):
        print(f"{report_file} holds an earlier sweep, which this one replaces when it ends (--out DIR keeps both)")
    try:
        report = sweep(cfg, model, out, progress=not args.quiet, dataset=_named_dataset(args, cfg))
    except KeyboardInterrupt:
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
    from rl_gpt.config import load_config
    from rl_gpt.sweep.calibrate import calibrate

    cfg = load_config(_model_config(args), args.overrides, command="calibrate")
    calibrate(cfg, args.model or str(cfg.model_dir), progress=not args.quiet, dataset=_named_dataset(args, cfg))


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
    from rl_gpt.demo import run_demo

    if args.task and args.config:
        raise ConfigError(f"give the demo's task once: --task {args.task} or {args.config}, not both")
    config = args.task or args.config
    out = args.out or (f"runs/demo-{Path(config).stem}" if config else "runs/demo")  # a file: its name
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
    from rl_gpt.sweep.compare import compare_reports, comparison_json, format_comparison

    if args.json:  # fail before the work, naming the path given
        _check_json_path(args.json)
    rows = compare_reports(args.reports)
    print(format_comparison(rows))
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


def _override_hint(command: str, flags: list[str]) -> str:
    """For ``--out X`` or ``--steps 10`` given to a command that takes them as overrides: how to write them."""
    from rl_gpt.config import ALIASES

    known = {*ALIASES.get(command, {}), "out", "dataset"}
    for flag in flags:
        name = flag.lstrip("-").partition("=")[0].replace("-", "_")
        if flag.startswith("--") and name in known:
            return f"; settings are key=value overrides without dashes: {name}=..."
    return ""


def _epilog(command: str) -> str:
    """What out=DIR is and the command's short names, under its --help."""
    from rl_gpt.config import ALIASES

    short = " ".join(f"{k}=" for k in ALIASES[command])
    return (
        "out=DIR is the experiment folder (default: the preset's out, e.g. runs/digits): collect writes "
        "DIR/dataset, train DIR/model, sweep DIR/sweep; dataset=DIR reads another dataset. Settings are key=value "
        f"overrides: a dotted name (train.lr=3e-4, task.hyperparams.steps=200) or a short name ({short})."
    )


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (not the whole usage) and points at --help."""

    commands: dict[str, argparse.ArgumentParser]  # the top-level parser's subcommands, by name

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata costs every command ~60 ms)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, help="print rl_gpt's version and where it is installed")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        import rl_gpt

        print(f"rl-gpt {rl_gpt.__version__} ({Path(rl_gpt.__file__).parent})")
        parser.exit()


def _presets_line() -> str:
    from rl_gpt.config import PRESETS

    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    return f"presets (a config argument names one, or a YAML file of yours that may extend one): {', '.join(names)}"


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="rl-gpt",
        description="Generative models of neural-network checkpoints (after G.pt).",
        epilog=_presets_line(),
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # each command's parser: its errors point at its own --help

    p = sub.add_parser(
        "collect",
        help="train SB3 agents (or classifiers) and store their checkpoints as a dataset",
        epilog=_epilog("collect"),
    )
    p.add_argument("config", nargs="?", default=None, help="config file or preset (default: embedded CartPole)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. runs=8 timesteps=20000 out=runs/x")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    p = sub.add_parser(
        "train", help="train the generator on a checkpoint dataset (torchrun-ready)", epilog=_epilog("train")
    )
    p.add_argument("config", nargs="?", default=None, help="config file or preset (the same as for collect)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset=DIR model=mlp steps=2000 batch=256")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true", help="ignore a saved training state and start over")

    p = sub.add_parser(
        "sweep", help="prompt sweep from unseen inits, with baselines and novelty", epilog=_epilog("sweep")
    )
    p.add_argument(
        "config", nargs="?", default=None, help="config file or preset (default: --model's own, else embedded CartPole)"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. inits=16 prompts=10 samples=2")
    p.add_argument("--model", help="model directory (default: <out>/model)")
    p.add_argument(
        "--out",
        help="report directory only (default: <out>/sweep, or with --model the sweep/ folder beside it); "
        "the model is --model or <out>/model",
    )
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser(
        "calibrate",
        help="measure the prompt bias on training runs' inits; store calibration.json",
        epilog=_epilog("calibrate"),
    )
    p.add_argument(
        "config", nargs="?", default=None, help="config file or preset (default: --model's own, else embedded CartPole)"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. guidance=2 sweep.calibration_inits=32")
    p.add_argument("--model", help="model directory (default: <out>/model); calibration.json is written there")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser(
        "generate", help="generate policies (or classifiers) prompted with a target return (or test loss/error)"
    )
    p.add_argument("--model", required=True, help="model directory written by `rl-gpt train`")
    p.add_argument(
        "--target-return",
        type=_finite,
        nargs="+",
        required=True,
        help="the prompted return (or test loss/error); several values sweep them from the same start",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="from_zip",
        help="start from this network: an SB3 policy .zip, or for a classifier task a classifier .safetensors",
    )
    start.add_argument(
        "--random-init",
        action="store_true",
        help="start from the task's own random initialiser (SB3's for policies; the default)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of sampling; the random init is the sweep's unseen init SEED (initialiser seed sweep.init_seed "
        "+ SEED), never a training run's",
    )
    p.add_argument("--num", type=_count, default=1, help="number of networks (samples from the one start network)")
    p.add_argument("--guidance", type=_scale, default=None, help="guidance scale (default: the model's sweep.guidance)")
    p.add_argument(
        "--dataset", default=None, help="use this dataset (it must hold the model's runs) instead of the recorded one"
    )
    p.add_argument(
        "--steps", type=_count, default=None, help="diffusion sampling steps (default: the model's sweep.steps)"
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="ignore calibration.json (a target outside the training range still goes to its end: --extrapolate)",
    )
    p.add_argument(
        "--extrapolate",
        action="store_true",
        help="condition on a target outside the training data's range as given (default: the range's nearest end)",
    )
    p.add_argument(
        "--average",
        type=_count,
        default=None,
        help="each policy is the mean of this many samples (default: the model's sweep.average)",
    )
    p.add_argument(
        "--rerank",
        type=_count,
        default=None,
        help="keep, of this many candidates per policy, the one the model's ranker predicts nearest the target "
        "(default: the model's sweep.rerank)",
    )
    p.add_argument("--episodes", type=_count, default=16, help="evaluation episodes per policy (RL tasks)")
    p.add_argument("--out", required=True, help="output directory")

    p = sub.add_parser("demo", help="collect, train and sweep the embedded CartPole default (or --task digits)")
    p.add_argument("config", nargs="?", default=None, help="optional config file or preset")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--task", help="preset to demo instead of the embedded CartPole default (e.g. digits)")
    p.add_argument("--out", default=None, help="output directory (default runs/demo, or runs/demo-<task>)")
    p.add_argument("--restart", action="store_true", help="retrain the generator, ignoring a saved training state")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser(
        "compare",
        help="paired comparison of sweep reports over the same inits, with 95%% intervals",
        description="Compare sweep reports of the same task, inits and prompts init by init: R², the one-step "
        "metric and their paired differences from the first report with bootstrap 95% intervals, and the share "
        "of squared error that all inits share (bias).",
    )
    p.add_argument("reports", nargs="+", help="report.json files or sweep --out directories; the first is the base")
    p.add_argument("--json", help="also write the rows to this JSON file")

    p = sub.add_parser(
        "evaluate",
        help="evaluate SB3 policies (.zip, dataset rows) by their return, classifiers (.safetensors, dataset rows) "
        "by their test loss and error",
    )
    p.add_argument(
        "target",
        nargs="+",
        help="POLICY.zip, CLASSIFIER.safetensors, DATASET or DATASET:rows (e.g. runs/x/dataset:0:100); several "
        ".zip files (runs/gen/*.zip) are rolled out together, several .safetensors files one after another",
    )
    p.add_argument(
        "--episodes",
        type=_count,
        default=None,
        help="episodes per policy (default 10; dataset rows: as many as their labels were measured with; "
        "classifiers: the whole test split)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="the evaluator's seed for start states (default 0; dataset rows: their labels' seed, so the labels "
        "are reproduced; rl_gpt's batched environments, not Gymnasium's reset(seed=))",
    )
    p.add_argument(
        "--dataset",
        help="a classifier file's checkpoint dataset, for files that do not name their network and data set",
    )
    p.add_argument("--data-root", help="folder of the MNIST / CIFAR-10 files classifiers are tested on")
    p.add_argument(
        "--env",
        metavar="ENV_ID",
        help="Gymnasium id to evaluate a .zip policy in (default: from the generated.json beside it, else the one "
        "of CartPole, Pendulum, Acrobot, MountainCarContinuous whose spaces fit)",
    )
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic ones")
    p.add_argument("--json", help="also write the returns to this JSON file")

    from rl_gpt.cli_data import add_data_parser

    add_data_parser(sub)

    p = sub.add_parser("info", help="summarise a checkpoint dataset, a generator model, a sweep or an experiment")
    p.add_argument(
        "dataset", metavar="FOLDER", help="a dataset, a model, a sweep's --out, or an experiment folder holding them"
    )
    p.add_argument("--spec", action="store_true", help="also print spec.json")
    return parser


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


#: What torch's file writes and safetensors say when the disk is full or a file outgrows its limit.
_DISK_ERRORS = ("No space left on device", "File too large", "Disk quota exceeded")
_DISK_ADVICE = (
    "; free space (or raise the limit) and run the same command again (collect and train go on from their last save)"
)


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
            command.error(f"unrecognized arguments: {' '.join(flags or extra)}{_override_hint(args.command, flags)}")
        args.overrides = [*args.overrides, *extra]
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():  # `rl-gpt train steps=10`: no config named
        args.overrides, args.config = [config, *args.overrides], None
    try:  # these pull in torch and friends (seconds): a Ctrl-C here is a quiet stop, not a traceback
        from rl_gpt.config import ConfigError
        from rl_gpt.dataset import DatasetError
        from rl_gpt.evaluate import PolicyFileError
        from rl_gpt.interrupt import Terminated, sigterm_as_interrupt
        from rl_gpt.io import FolderInUseError
        from rl_gpt.supervised.files import ClassifierFileError
        from rl_gpt.sweep.compare import ReportError
        from rl_gpt.train.modelfile import ModelFileError
    except KeyboardInterrupt:
        return 130

    silent_before = os.environ.get("WANDB_SILENT")
    if getattr(args, "quiet", False):  # -q quiets W&B's own banners too (the run is still logged)
        os.environ.setdefault("WANDB_SILENT", "true")
    previous_format = _one_line_warnings(args.command)
    try:
        with sigterm_as_interrupt():  # `kill PID` saves as Ctrl-C does
            COMMANDS[args.command](args)
    except (
        ConfigError,
        DatasetError,
        ModelFileError,
        PolicyFileError,
        ClassifierFileError,
        ReportError,
        PermissionError,
        FileNotFoundError,
        FloatingPointError,
        FolderInUseError,
    ) as exc:
        print(f"rl-gpt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        return 143  # the shell's code for a SIGTERM exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rl-gpt compare ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except OSError as exc:  # full disk and friends: say so in one line; nothing half-written is left
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        advice = _DISK_ADVICE if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
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
