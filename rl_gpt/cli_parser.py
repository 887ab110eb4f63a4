"""``rl-gpt``'s arguments: the commands, their flags and help, and argparse's errors in one line."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["build_parser", "override_hint"]


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


def override_hint(command: str, flags: list[str]) -> str:
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
        + (_OWN_ENV if command == "collect" else "")
    )


#: How a user's own environment is named, under collect's --help (the README's "Your own environment").
_OWN_ENV = (
    " Your own environment: task.env_id=MODULE:ENV_ID, where MODULE registers ENV_ID (with max_episode_steps) "
    "when imported and its folder is on PYTHONPATH, e.g. PYTHONPATH=. rl-gpt collect cartpole "
    "task.env_id=my_envs:Corridor-v0 task.metric_range=[-1,1] task.reward_threshold=null."
)


def _demo_epilog() -> str:
    """How the demo's settings are changed, under its --help: it runs collect, train and sweep in one folder."""
    from rl_gpt.config import ALIASES

    short = " ".join(f"{k}=" for k in ALIASES["demo"])
    return (
        "--out DIR is the folder it writes DIR/dataset, DIR/model and DIR/report.json to, and resumes. Settings are "
        "key=value overrides of the config (the embedded default, --task's preset or the config file): a dotted "
        f"name (train.lr=3e-4, task.hyperparams.n_epochs=10, sweep.rerank=1) or a short name ({short})."
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
        "--target",
        dest="target_return",
        metavar="TARGET",
        type=_finite,
        nargs="+",
        required=True,
        help="the prompted return, or for a classifier task the test loss/error (--target says either); several "
        "values sweep them from the same start",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="from_zip",
        metavar="FILE",
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
        "--data-root",
        default=None,
        help="folder of the MNIST / CIFAR-10 files classifiers are tested on (default: where they were collected)",
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

    p = sub.add_parser(
        "demo",
        help="collect, train and sweep the embedded CartPole default (or --task digits)",
        epilog=_demo_epilog(),
    )
    p.add_argument("config", nargs="?", default=None, help="optional config file or preset")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. runs=32 steps=1000 inits=16")
    p.add_argument("--task", help="preset to demo instead of the embedded CartPole default (e.g. digits)")
    p.add_argument("--out", default=None, help="output directory (default runs/demo, or runs/demo-<task>)")
    p.add_argument("--restart", action="store_true", help="retrain the generator, ignoring a saved training state")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser(
        "compare",
        help="paired comparison of sweep reports over the same inits, with 95%% intervals",
        description="Compare sweep reports of the same task, inits and prompts init by init: R², the one-step "
        "metric and their paired differences from the first report with 95% intervals (Student t over inits), "
        "and the share of squared error that all inits share (bias).",
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
        help="Gymnasium id to evaluate a .zip policy in, or MODULE:ENV_ID for one your module registers (its folder "
        "on PYTHONPATH; default: from the generated.json beside it, else the one of CartPole, Pendulum, Acrobot, "
        "MountainCarContinuous whose spaces fit)",
    )
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic ones")
    p.add_argument("--json", help="also write the returns to this JSON file")

    from rl_gpt.cli_data import add_data_parser

    add_data_parser(sub)

    p = sub.add_parser("info", help="summarise a checkpoint dataset, a generator model, a sweep or an experiment")
    p.add_argument(
        "folder", metavar="FOLDER", help="a dataset, a model, a sweep's --out, or an experiment folder holding them"
    )
    p.add_argument("--spec", action="store_true", help="also print spec.json")
    return parser
