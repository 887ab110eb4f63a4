"""Typed experiment configuration: dataclass defaults, YAML presets that override, CLI overrides.

One :class:`ExperimentConfig` drives every stage (collect, train, sweep). Its defaults are the
embedded CartPole demo; a file in ``configs/`` overrides only what differs, and ``key=value``
arguments override both. Unknown keys and wrong types are refused before any work starts, with
a message naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "ALIASES",
    "CollectConfig",
    "SweepConfig",
    "TrainConfig",
    "ConfigError",
    "ExperimentConfig",
    "TaskConfig",
    "WandbConfig",
    "find_preset",
    "load_config",
    "task_config",
    "to_dict",
]


def _presets_folder() -> Path:
    """The presets: ``rl_gpt/configs`` when installed (pyproject maps the checkout's top-level ``configs/``
    there), the checkout's ``configs/`` in an editable install or a clone."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


PRESETS = _presets_folder()


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the key."""


@dataclass
class TaskConfig:
    """What is being learned: the environment (or data set), the network and its metric."""

    name: str = "cartpole"  # preset name, used in file names and reports
    kind: Literal["rl", "supervised"] = "rl"  # RL policies or supervised classifiers
    env_id: str = "CartPole-v1"  # Gymnasium id (RL tasks)
    network: str = ""  # supervised tasks: classifier name in rl_gpt.supervised (digits_mlp, mnist_mlp, cifar_cnn)
    data_root: str | None = None  # supervised tasks: folder with the MNIST/CIFAR-10 files (digits ships with sklearn)
    algo: Literal["ppo", "sac"] = "ppo"  # Stable-Baselines3 algorithm
    # SB3 policy_kwargs; activation_fn is a name (tanh/relu). A small actor keeps the generator's job small.
    policy_kwargs: dict[str, Any] = field(default_factory=lambda: {"net_arch": {"pi": [16], "vf": [64, 64]}})
    # SB3 constructor arguments; "lin_X" is a linear schedule from X to 0 (rl-baselines3-zoo convention)
    hyperparams: dict[str, Any] = field(
        default_factory=lambda: {
            # rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1 (tuned)
            "n_steps": 32,
            "batch_size": 256,
            "gae_lambda": 0.8,
            "gamma": 0.98,
            "n_epochs": 20,
            "ent_coef": 0.0,
            "learning_rate": "lin_0.001",
            "clip_range": "lin_0.2",
        }
    )
    n_envs: int = 8  # parallel training environments per run (DummyVecEnv)
    normalize: bool = False  # VecNormalize observations (saved with every checkpoint)
    metric: str = "return"  # what `metric` in the dataset measures
    higher_is_better: bool = True  # direction of the metric
    reward_threshold: float | None = 475.0  # return at which the task counts as solved
    # [low, high] prompts are swept over; None: the dataset's recorded range, else the data's; "data": the data's
    metric_range: list[float] | Literal["data"] | None = None

    def __post_init__(self) -> None:
        r = self.metric_range
        if r is None or r == "data":
            return
        if not (len(r) == 2 and math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] < r[1]):
            raise ConfigError(
                f"task.metric_range: {r!r} is not [low, high] with low < high; write it as "
                f"[low, high] whichever way the metric improves (task.higher_is_better says that), or `data` for "
                "the range the training data spans"
            )


@dataclass
class CollectConfig:
    """How many training runs, how long, and how often to checkpoint and evaluate."""

    runs: int = 64  # training runs, each with its own seed (seed + run index)
    timesteps: int = 32_768  # environment steps per run
    # Environment steps between checkpoints (RL: at the first rollout boundary from each multiple on),
    # plus step 0 and the trained policy at the end; supervised tasks count optimiser steps.
    checkpoint_every: int = 512
    # Evaluation episodes per checkpoint (deterministic and stochastic). The metric is the prompt the
    # generator learns from; 64 instead of 10 lifted retrieval's R2 from 0.96 to 0.99 (docs/results.md).
    eval_episodes: int = 64
    eval_seed: int = 10_000  # fixed evaluation seed: every checkpoint sees the same start states
    seed: int = 0  # base seed; run i uses seed + i
    workers: int = 0  # parallel worker processes; 0 = one per core
    executor: Literal["local", "ray"] = "local"  # local processes or a Ray cluster
    ray_address: str | None = None  # Ray cluster address; None starts a local Ray instance
    # hyperparameters sampled log-uniformly per run from [low, high], e.g. {learning_rate: [3e-4, 3e-3]}
    sample_hyperparams: dict[str, list[float]] = field(default_factory=dict)
    max_abs_weight: float = 1_000.0  # checkpoints with a larger |weight| (or NaN/inf) are flagged invalid
    # task.normalize: fold each checkpoint's VecNormalize statistics into its first layer, so every
    # stored policy reads raw observations. A generated policy has no statistics of its own; with
    # averaged ones, real checkpoints reproduced their labels only with R2 0.75 (docs/results.md).
    fold_normalisation: bool = True
    # Supervised tasks: up to this many runs train together in one job, their weights stacked (one
    # Python step serves them all: the digits demo's 512 runs took 30-36 s on 2 cores, against
    # 67-99 s one at a time; docs/benchmarks.md). 1 trains one run at a time. Unused by RL tasks
    # and by the CNN on the CPU, whose runs train one by one (a stacked conv step is slower there).
    batch_runs: int = 64

    def __post_init__(self) -> None:
        for key, bounds in self.sample_hyperparams.items():
            ok = isinstance(bounds, list) and len(bounds) == 2
            ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in bounds)
            if not ok or bounds[0] > bounds[1]:
                raise ConfigError(
                    f"collect.sample_hyperparams.{key}: {bounds!r} is not [low, high] with 0 < low <= high "
                    f"(drawn log-uniformly); write it as '{{{key}: [1e-4, 1e-3]}}'"
                )
        if self.seed + self.runs - 1 >= 2**32:  # run r is seeded seed + r; numpy takes seeds below 2**32
            raise ConfigError(f"collect.seed: {self.seed} + {self.runs} runs reaches 2**32; use a smaller seed")


@dataclass
class TrainConfig:
    """The generator and its training; defaults are a known-good CPU run on the CartPole demo."""

    model: str = "neuron"  # name in rl_gpt.model.MODELS (neuron, mlp, tiny, small, base)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {width: 256, tokens: neuron}
    # Optimiser steps. With ranked samples (sweep.rerank 4) the demo's models score alike at 3,000 and
    # 4,000 steps (48 unseen inits, training seeds 0 / 1: 0.949 / 0.947 against 0.947 / 0.945) and
    # lower at 2,000 (0.931 for seed 0), so 3,000 buys the ranking's sampling time (docs/results.md).
    steps: int = 3_000
    batch: int = 256  # pairs per step (per process under DDP)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: int = 200  # linear warm-up steps before the cosine decay
    grad_clip: float = 1.0  # max global gradient norm
    ema: float = 0.999  # EMA decay of the weights used for sampling
    target: Literal["theta", "delta"] = "theta"  # denoise θ' itself or the update θ' - θ
    # False: the prompt-free reference p(θ' | m') (p-diff without a prompt); θ and m are not inputs.
    # The product's mode is True; comparing the two shows how much conditioning on an unseen init costs.
    condition_on_theta: bool = True
    prediction: Literal["x0", "eps", "v"] = "v"  # what the network predicts
    schedule: Literal["cosine", "linear"] = "cosine"  # noise schedule (1000 steps)
    loss_weight: Literal["none", "snr", "min_snr", "truncated_snr"] = "none"  # loss weighting over noise levels
    prompt_dropout: float = 0.1  # probability of dropping the prompt (classifier-free guidance)
    # Gaussian noise on the start metric m and the prompt m' while training, as a fraction of the
    # metric range (0 = off): the model must not read an exact label value as a flag.
    metric_jitter: float = 0.0
    # False: jitter only the start metric m (where every init carries the same label), not the prompt
    # m', whose exact value says how good the target network is.
    jitter_prompt: bool = True
    # Weight of the function-space loss (rl_gpt/train/function_loss.py): the squared difference of
    # the outputs of the x0 estimate and of the real θ' on probe inputs, weighted over noise levels
    # by function_signal_power. 0 = off (weights-only MSE, G.pt's loss).
    function_loss: float = 0.0
    # The function term's weight over noise levels is ᾱ(t)**power: 1 keeps it off the blurry x0
    # estimates at high noise; 0 weights every noise level alike.
    function_signal_power: float = 1.0
    function_probes: int = 256  # probe inputs: states the training runs' policies visit, or training images
    init_fraction: float = 0.5  # share of pairs whose θ is the run's initialisation
    bins: int = 10  # θ' is sampled balanced over this many metric bins
    # One mean/std per input feature for the layers reading the input (instead of per tensor): for
    # features of different scales, e.g. VecNormalize statistics folded into the first layer.
    normalize_input_columns: bool = False
    augment: bool = True  # random hidden-unit permutations, the same for θ and θ'
    test_fraction: float = 0.2  # share of runs held out (never trained on)
    split_seed: int = 0  # seed of the run-level train/test split
    seed: int = 0  # training seed
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    ckpt_every: int = 500  # save a resumable checkpoint every N steps (and on Ctrl-C)
    log_every: int = 50  # W&B/progress-bar logging interval in steps
    probe_every_s: float = 180.0  # seconds between quick prompt-alignment probes logged to W&B (0 = off)
    sample_steps: int = 20  # diffusion steps when sampling (DDIM)
    guidance: float = 2.0  # guidance scale of probes (1 = plain conditional, 2 = extrapolate once)
    final_probe: bool = True  # after training, write model/alignment.json (R2 from train and held-out inits)
    # After training, measure the prompt calibration (`rl-gpt calibrate`, with the sweep.* settings)
    # so that sweeps and generate condition on it; `rl-gpt train` and `rl-gpt demo` do this. ~17 s on
    # CartPole; 48 unseen inits x 20 prompts, training seeds 0 / 1: +0.024 / +0.020 R2 (docs/results.md).
    calibrate: bool = True


@dataclass
class SweepConfig:
    """G.pt's desired-versus-observed protocol on unseen random initialisations."""

    # Unseen random inits (SB3's initialiser, seeds never used in collection). 48, not 16: the demo
    # model scored 0.863 on its first 16 and 0.799 on the next 32; at 16 R2 moves by +-0.07 between
    # init sets, more than most changes are worth. 32 more cost the CartPole demo ~10 s.
    inits: int = 48
    prompts: int = 10  # prompts evenly over the task's metric range
    samples: int = 2  # samples per init and prompt
    # Each sample is the mean of this many draws from the same init and prompt (an estimate of the
    # conditional mean; see ParameterGenerator.sample). 1 reports single draws.
    average: int = 1
    # Each sample is the one of this many candidates (each a mean of ``average`` draws) whose metric,
    # as the model's ranker predicts it from the network's outputs on probe inputs, is nearest the
    # prompt (rl_gpt/train/ranker.py; fitted on the training runs' checkpoints). 1: no ranking.
    # CartPole demo models, 48 unseen inits: R2 0.82 -> 0.95 for 4x the sampling (docs/results.md).
    rerank: int = 4
    # Evaluation episodes per sample. A 16-episode mean of a mid-range CartPole policy is noisy
    # enough to cost ~0.05 R2 for every method alike (docs/results.md); the batched evaluator makes 64 cheap.
    episodes: int = 64
    steps: int = 20  # diffusion sampling steps (DDIM)
    guidance: float = 2.0  # classifier-free guidance scale (2 beat 1 on CartPole: docs/results.md)
    recursive: int = 3  # recursive prompting steps (output fed back as input)
    init_seed: int = 1_000_000  # first seed of the unseen inits (collection uses seed + run)
    # Where the inits come from: unseen random inits (the product's case), or the step-0 networks of
    # the model's training runs or held-out runs (G.pt's protocol; how well the model fits its data).
    init_source: Literal["unseen", "train", "heldout"] = "unseen"
    noise_scale: float = 0.1  # the noise baseline adds this many per-layer stds to the retrieved checkpoint
    seed: int = 0  # sampling seed
    device: str | None = None  # sampling and torch-dynamics rollouts (cpu, cuda, ...); None: train.device
    # Condition on the prompts of the model's calibration.json (``rl-gpt calibrate``) where it was
    # measured with this sweep's guidance, steps, average and rerank; false: the prompts as given.
    calibrated: bool = True
    # Condition on prompts inside the training data's metric range (the nearest end for one outside
    # it); the prompt itself is still what the achieved metric is scored against. False: as given.
    clamp_prompts: bool = True
    calibration_inits: int = 32  # training runs whose step-0 networks ``rl-gpt calibrate`` prompts
    calibration_prompts: int = 20  # prompts over the metric range that it measures

    def __post_init__(self) -> None:
        if self.init_seed + self.inits - 1 >= 2**32:  # unseen init k is seeded init_seed + k; numpy: below 2**32
            raise ConfigError(f"sweep.init_seed: {self.init_seed} + {self.inits} inits reaches 2**32; use less")


WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older names for its modes


@dataclass
class WandbConfig:
    """Weights & Biases logging; offline by default so nothing leaves the machine unasked."""

    mode: Literal["offline", "online", "disabled"] = "offline"  # wandb.init mode
    project: str = "rl_gpt"  # W&B project
    entity: str | None = None  # W&B entity (team); None = your default


@dataclass
class ExperimentConfig:
    """Everything one experiment needs; saved resolved next to every output."""

    out: str = "runs/cartpole"  # experiment directory: dataset/, model/, sweep/ live under it
    dataset: str | None = None  # checkpoint dataset path; None = <out>/dataset
    task: TaskConfig = field(default_factory=TaskConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def dataset_dir(self) -> Path:
        return Path(self.dataset) if self.dataset else Path(self.out) / "dataset"

    @property
    def dataset_option(self) -> str:
        """The option that chose :attr:`dataset_dir`, for messages that say what to change."""
        return "dataset=" if self.dataset else "out="

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"


#: Short command-line names for the knobs people turn most, per command.
ALIASES: dict[str, dict[str, str]] = {
    "collect": {
        "runs": "collect.runs",
        "timesteps": "collect.timesteps",
        "workers": "collect.workers",
        "seed": "collect.seed",
        "executor": "collect.executor",
    },
    "sweep": {
        "inits": "sweep.inits",
        "prompts": "sweep.prompts",
        "samples": "sweep.samples",
        "average": "sweep.average",
        "rerank": "sweep.rerank",
        "episodes": "sweep.episodes",
        "guidance": "sweep.guidance",
        "device": "sweep.device",
    },
    "train": {
        "model": "train.model",
        "steps": "train.steps",
        "batch": "train.batch",
        "seed": "train.seed",
        "device": "train.device",
        "lr": "train.lr",
    },
}
# Calibration samples and evaluates as the sweep does, from its own inits and prompts.
ALIASES["calibrate"] = ALIASES["sweep"] | {"inits": "sweep.calibration_inits", "prompts": "sweep.calibration_prompts"}
# The demo runs all three stages: it takes their short names, except the ambiguous seed=.
ALIASES["demo"] = {k: v for stage in ("collect", "train", "sweep") for k, v in ALIASES[stage].items() if k != "seed"}
ALIASES["demo"]["device"] = "train.device"  # the demo's sweep follows train.device


#: Counts a run cannot do without; below these a stage would crash later or report nonsense.
MINIMUMS: dict[str, int] = {
    "collect.runs": 1,
    "task.n_envs": 1,
    "collect.timesteps": 1,
    "collect.checkpoint_every": 1,
    "collect.eval_episodes": 1,
    "collect.batch_runs": 1,
    "train.steps": 1,
    "train.batch": 1,
    "train.function_probes": 1,
    "train.sample_steps": 1,
    "train.bins": 1,
    "sweep.inits": 1,
    "sweep.prompts": 2,  # R² needs two prompts
    "sweep.samples": 1,
    "sweep.episodes": 1,
    "sweep.steps": 1,
    "sweep.average": 1,
    "sweep.rerank": 1,
    "sweep.calibration_inits": 1,
    "sweep.calibration_prompts": 2,
}

#: Weights and exponents that a negative value would turn into nonsense (a loss to be maximised).
NON_NEGATIVE: frozenset[str] = frozenset(
    {
        "collect.workers",  # 0: one per core
        # seeds of Gymnasium environments and SB3 runs, which take 0 or more
        "collect.seed",
        "collect.eval_seed",
        "sweep.seed",
        "sweep.init_seed",
        "train.function_loss",
        "train.function_signal_power",
        "train.metric_jitter",
        "train.weight_decay",
        "train.warmup",
        "train.prompt_dropout",
        "train.guidance",  # 0 = prompt-free, 1 = plain conditional; below 0 steers away from the prompt
        "sweep.guidance",
        "sweep.noise_scale",
    }
)

#: Rates and sizes that must be above zero.
POSITIVE: frozenset[str] = frozenset({"train.lr", "train.grad_clip", "train.ckpt_every", "train.log_every"})

#: Shares and probabilities: (low, high, whether high itself is allowed).
FRACTIONS: dict[str, tuple[float, float, bool]] = {
    "train.ema": (0.0, 1.0, False),  # 1 would never move the sampling weights from their start
    "train.prompt_dropout": (0.0, 1.0, True),
    "train.init_fraction": (0.0, 1.0, True),
    "train.test_fraction": (0.0, 1.0, False),  # some run must be left to train on
}

#: Seeds numpy, SB3 and Gymnasium take: below 2**32 (torch's alone would take 64 bits).
SEEDS: frozenset[str] = frozenset({"collect.seed", "collect.eval_seed", "sweep.seed", "sweep.init_seed"})
_LARGEST_INT = 2**63 - 1  # what torch and numpy index and seed with


# ---------------------------------------------------------------------------- loading
def find_preset(name_or_path: str) -> Path:
    """A config file path, or the name of a preset in ``configs/`` (``cartpole`` → configs/cartpole.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PRESETS / f"{name_or_path}.yaml", PRESETS / name_or_path):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in PRESETS.glob("*.yaml")) if PRESETS.is_dir() else []
    raise ConfigError(f"no config file or preset {name_or_path!r}; presets: {', '.join(known) or 'none found'}")


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), command: str | None = None
) -> ExperimentConfig:
    """Defaults, then the YAML file (if any; or its sections as a mapping), then ``key=value``
    overrides; validated throughout."""
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = _read_preset(str(source)) if source is not None else {}
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:  # wandb.init's mode argument beats the variable; honour it ourselves, below the command line
        mode = WANDB_MODE_ALIASES.get(env_mode, env_mode)
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not offline, online or disabled; unset it or fix it")
        _set_path(data, ["wandb", "mode"], mode)
    aliases = ALIASES.get(command or "", {})
    preset_task = copy.deepcopy(data.get("task")) if isinstance(data.get("task"), dict) else {}
    overridden: set[str] = set()
    # The default hyperparams and policy_kwargs are PPO's on CartPole: only a PPO policy task starts from them.
    default_task = _final_task_value(data, overrides, aliases, "kind", "rl") == "rl"
    default_task &= _final_task_value(data, overrides, aliases, "algo", "ppo") == "ppo"
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        key = aliases.get(key, key)
        if "." not in key and key not in _TOP_LEVEL:
            raise ConfigError(_unknown_short_name(key, aliases))
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if default_task:
            _seed_default_mapping(data, key.split("."))
        before = _get_path(data, key.split("."))
        if before is None and (default_task or not key.startswith("task.")):  # a mapping left at its default
            before = _default_mapping(key.split("."))
        _warn_if_mapping_replaced(key, before, value)
        _set_path(data, key.split("."), value)
        overridden.add(key)
    _warn_if_env_outgrows_task(preset_task, data.get("task"), overridden)
    cfg = _build(ExperimentConfig, data, "")
    if cfg.task.kind == "rl" and cfg.task.network:
        raise ConfigError(
            f"task.network: {cfg.task.network!r} names a classifier, but task.kind is rl (the default); add "
            "task.kind: supervised for a classifier task, or drop task.network"
        )
    _warn_if_sampled_over(cfg, overridden)
    return cfg


def _warn_if_sampled_over(cfg: ExperimentConfig, overridden: set[str]) -> None:
    """A ``task.hyperparams.X=`` override that ``collect.sample_hyperparams`` draws anew for every run
    (the digits preset's ``lr``) changes nothing: say so instead of ignoring it."""
    given = {k.removeprefix("task.hyperparams.") for k in overridden if k.startswith("task.hyperparams.")}
    if "task.hyperparams" in overridden:
        given |= set(cfg.task.hyperparams)
    drawn = sorted(given & set(cfg.collect.sample_hyperparams))
    if drawn:
        names = ", ".join(f"task.hyperparams.{k}" for k in drawn)
        warnings.warn(
            f"collect.sample_hyperparams draws {', '.join(drawn)} for every run, so {names} is not used; "
            f"set 'collect.sample_hyperparams={{}}' (or drop those keys from it) to train every run with it",
            stacklevel=3,
        )


def _warn_if_env_outgrows_task(preset: dict[str, Any], task: Any, overridden: set[str], by: str = "") -> None:
    """A preset's ``task.env_id`` replaced (on the command line, or by a file that extends it) keeps the
    preset's return range and threshold, which belong to the preset's environment (CartPole's [0, 500]
    on Pendulum, or on CartPole-v0, whose episodes end at 200): say so. ``overridden``: the dotted keys
    set over the preset; ``by``: the file that set them, for the message (the command line if empty)."""
    if not isinstance(task, dict) or "task.env_id" not in overridden:
        return
    new, old = task.get("env_id"), preset.get("env_id")
    if new == old or not isinstance(new, str) or not isinstance(old, str):
        return
    import gymnasium

    if new not in gymnasium.registry:  # refused by collect with a hint; warning first would bury it
        return
    if old in gymnasium.registry and new.rsplit("-v", 1)[0] == old.rsplit("-v", 1)[0]:
        a, b = gymnasium.spec(new), gymnasium.spec(old)
        if (a.max_episode_steps, a.reward_threshold) == (b.max_episode_steps, b.reward_threshold):
            return  # another version of the same task: the same range and threshold
    kept = [
        f"task.{key}={preset[key]}"
        for key in ("metric_range", "reward_threshold")
        if preset.get(key) is not None and f"task.{key}" not in overridden and "task" not in overridden
    ]
    if kept:
        where = f" ({by})" if by else ""
        warnings.warn(
            f"task.env_id={new}{where} replaces the preset's {old} but keeps its "
            f"{' and '.join(kept)}; set them for the new environment (null: the collected range, no threshold), "
            "or start from a preset for it",
            stacklevel=3,
        )


_TOP_LEVEL = frozenset(f.name for f in dataclasses.fields(ExperimentConfig))


#: Constructor arguments of SB3's PPO and SAC and of the classifiers' training (``task.hyperparams``),
#: named in a hint when given as a short name.
_TRAINING_ARGUMENTS = frozenset(
    [
        "n_steps",
        "batch_size",
        "n_epochs",
        "gamma",
        "gae_lambda",
        "ent_coef",
        "vf_coef",
        "max_grad_norm",
        "learning_rate",
        "clip_range",
        "clip_range_vf",
        "normalize_advantage",
        "target_kl",
        "use_sde",
        "sde_sample_freq",
        "buffer_size",
        "learning_starts",
        "tau",
        "train_freq",
        "gradient_steps",
        "target_update_interval",
        "target_entropy",
        "optimize_memory_usage",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "steps",
    ]
)


def _unknown_short_name(key: str, aliases: Mapping[str, str]) -> str:
    """The message for ``key=value`` whose key is neither a short name nor a section.key."""
    hints = typing.get_type_hints(ExperimentConfig)
    sections = {name: tp for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    dotted = [f"{name}.{f.name}" for name, tp in sections.items() for f in dataclasses.fields(tp)]
    same_leaf = [d for d in dotted if d.endswith(f".{key}")]
    if key in _TRAINING_ARGUMENTS:  # n_steps=64 as rl-baselines3-zoo spells it: a run's hyperparameter
        if key == "learning_rate" and "lr" in aliases:  # train: the generator's, more likely meant
            same_leaf.append(f"lr ({aliases['lr']})")
        same_leaf.append(f"task.hyperparams.{key}")
    if same_leaf:  # e.g. seed= where the command has no short name for it: several sections have one
        return f"unknown config key {key}; did you mean {' or '.join(same_leaf)}?"
    short = [*aliases, *sorted(_TOP_LEVEL)]
    close = difflib.get_close_matches(key, short, n=1) or difflib.get_close_matches(
        key, [d.split(".", 1)[1] for d in dotted], n=1
    )
    if close and close[0] in aliases:
        return f"unknown config key {key}; did you mean {close[0]} ({aliases[close[0]]})?"
    if close and close[0] in _TOP_LEVEL:
        return f"unknown config key {key}; did you mean {close[0]}?"
    if close:
        full = [d for d in dotted if d.endswith(f".{close[0]}")]
        return f"unknown config key {key}; did you mean {' or '.join(full)}?"
    names = ", ".join([*aliases, "out", "dataset"])
    return f"unknown config key {key}; use section.key (e.g. train.steps) or one of: {names}"


def task_config(data: Mapping[str, Any]) -> TaskConfig:
    """A TaskConfig from the ``task`` section a dataset or model stores, checked like a config file's."""
    return _build(TaskConfig, data, "task.")


def _read_preset(source: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file's sections; ``extends: NAME`` starts from that preset and deep-merges this file over it."""
    path = find_preset(source)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in seen)})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # where the parser stopped (0-based), if it knows
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML ({where}{problem}); fix the file") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = loaded or {}
    base = data.pop("extends", None)
    if base is None:
        return _deep_merge(_inherited_defaults({}, data), data)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' names one preset or file, got {base!r}")
    chain = _read_preset(str(_base_preset(path, base)), (*seen, path.resolve()))
    merged = _deep_merge(_inherited_defaults(chain, data), data)
    top_task = data.get("task") if isinstance(data.get("task"), dict) else {}
    base_task = chain.get("task") if isinstance(chain.get("task"), dict) else {}
    _warn_if_env_outgrows_task(base_task, merged.get("task"), {f"task.{k}" for k in top_task}, by=str(path))
    return merged


def _inherited_defaults(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the embedded default's ``task.hyperparams`` / ``task.policy_kwargs`` written out
    where ``top`` (a file over it) sets some of their keys and ``base`` leaves them at that default.

    The file then changes only what it names, as a ``task.hyperparams.X=`` override does: a file that
    extends ``cartpole`` with ``hyperparams: {ent_coef: 0.001}`` kept that one key and trained with SB3's
    defaults for the rest. Only for the default's own task (PPO on CartPole-v1): another environment's
    file spells out its own values, which CartPole's must not fill in.
    """
    top_task, base_task = top.get("task"), base.get("task") if isinstance(base.get("task"), dict) else {}
    if not isinstance(top_task, dict):
        return base
    default = TaskConfig()
    final = {"kind": default.kind, "algo": default.algo, "env_id": default.env_id} | {
        k: v for k, v in (base_task | top_task).items() if k in ("kind", "algo", "env_id")
    }
    if (final["kind"], final["algo"], final["env_id"]) != (default.kind, default.algo, default.env_id):
        return base
    seeded = {
        name: copy.deepcopy(getattr(default, name))
        for name in ("hyperparams", "policy_kwargs")
        if isinstance(top_task.get(name), dict) and name not in base_task
    }
    return base | {"task": base_task | seeded} if seeded else base


def _base_preset(path: Path, base: str) -> Path:
    """What ``extends: base`` in ``path`` names: a file beside ``path`` (``.yaml`` may be left out), else a preset."""
    for candidate in (path.parent / base, path.parent / f"{base}.yaml", PRESETS / f"{base}.yaml", PRESETS / base):
        # a copied preset that extends the preset of its name (cartpole.yaml: extends: cartpole) means the preset
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return candidate
    raise ConfigError(f"{path}: 'extends: {base}' names no file beside it and no preset in {PRESETS}")


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(out.get(key), dict) and value is None:  # an empty section keeps the base's
            continue
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both_dicts else value
    return out


def _final_task_value(data: dict, overrides: Sequence[str], aliases: Mapping[str, str], key: str, default: str) -> Any:
    """``task.KEY`` as the config will end up with it: the last override that sets it, else the file's."""
    value = (data.get("task") or {}).get(key, default) if isinstance(data.get("task"), dict) else default
    for item in overrides:
        name, _, raw = item.partition("=")
        if aliases.get(name, name) == f"task.{key}":
            value = raw.strip()
    return value


def _seed_default_mapping(data: dict, keys: list[str]) -> None:
    """Before ``section.mapping.key=value`` sets one key of a mapping field the config leaves at its
    default, copy the default in: ``task.hyperparams.n_steps=64`` on the embedded CartPole must change
    that one of its tuned hyperparameters, not replace them all with SB3's defaults."""
    cls: Any = ExperimentConfig
    for key in keys[:-1]:
        if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
            return
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key not in fields:
            return  # refused later, with a hint
        tp = typing.get_type_hints(cls)[key]
        if dataclasses.is_dataclass(tp):
            cls, data = tp, data.setdefault(key, {})  # as _set_path would make it
            continue
        factory = fields[key].default_factory
        if typing.get_origin(tp) is dict and key not in data and factory is not dataclasses.MISSING:
            data[key] = factory()  # a fresh copy of the default
        return


def _get_path(data: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def _default_mapping(keys: list[str]) -> dict | None:
    """The default of a mapping field (``task.hyperparams``: PPO's CartPole settings), not of a section:
    a section given in part keeps its other fields' defaults."""
    obj: Any = ExperimentConfig()
    for k in keys:
        obj = getattr(obj, k, None) if dataclasses.is_dataclass(obj) else obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else None


def _warn_if_mapping_replaced(key: str, old: Any, new: Any) -> None:
    """``key={a: 1}`` replaces the whole mapping (``{}`` clears it, on purpose): say which of the keys it
    had are gone, since ``key.a=1`` is what changes one field."""
    if not (isinstance(old, dict) and isinstance(new, dict) and new):
        return
    from_environment = {"mode"} if key == "wandb" else set()  # WANDB_MODE's, set below the command line
    dropped = [k for k in old if k not in new and k not in from_environment]
    if dropped:
        listed = ", ".join(f"{k}: {_scalar_text(old[k])}" for k in dropped)
        warnings.warn(
            f"{key}={{...}} replaces the whole mapping, dropping {listed}; to change single fields write "
            f"{key}.FIELD=VALUE (e.g. {key}.{next(iter(new))}=...)",
            stacklevel=3,
        )


def _scalar_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = data.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {k} is not a section")
        data = nxt
    data[keys[-1]] = value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        least = MINIMUMS.get(f"{prefix}{key}")
        if least is not None and kwargs[key] < least:
            raise ConfigError(f"{prefix}{key}: {value!r} is too small; it counts things and needs at least {least}")
        if f"{prefix}{key}" in NON_NEGATIVE and kwargs[key] < 0:
            raise ConfigError(f"{prefix}{key}: {value!r} is negative; use 0 or more")
        if f"{prefix}{key}" in POSITIVE and not kwargs[key] > 0:
            raise ConfigError(f"{prefix}{key}: {value!r} must be above 0")
        span = FRACTIONS.get(f"{prefix}{key}")
        if span is not None and not (span[0] <= kwargs[key] <= span[1] and (span[2] or kwargs[key] < span[1])):
            upper = f"{span[1]:g}" if span[2] else f"below {span[1]:g}"
            raise ConfigError(f"{prefix}{key}: {value!r} is a fraction: give {span[0]:g} to {upper}")
        if f"{prefix}{key}" in SEEDS and kwargs[key] >= 2**32:
            raise ConfigError(f"{prefix}{key}: {value!r} is too large for a seed; use 0 to {2**32 - 1}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
                if isinstance(value, list) and typing.get_origin(arg) in (list, Sequence):
                    raise  # a list that fails the list type: what is wrong inside it says more
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is Any:
        return _numbers_read_as_text(value)
    if origin in (list, Sequence):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        given = value
        number = None if isinstance(value, int) else _as_float(value)
        if number is not None and number.is_integer():
            value = int(number)  # YAML reads 1e5 as a string and 1.0e5 as a float
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _LARGEST_INT:
                raise ConfigError(f"{key}: {given!r} is out of range; use a number below 2**63")
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = _as_float(value)
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        if number is not None:
            return number
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_name(tp)}")


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numbers_read_as_text(value: Any) -> Any:
    """``value`` with strings such as ``1e-3`` made numbers, in nested lists and mappings too. YAML 1.1
    reads an exponent without a dot as text, and rl-baselines3-zoo writes learning rates so; SB3 then
    failed mid-training on ``ent_coef: '1e-3'``. Other strings (``lin_0.001``) stay as they are."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers_read_as_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers_read_as_text(v) for k, v in value.items()}
    return value


def _as_float(value: Any) -> float | None:
    """A number, or a string YAML left unparsed such as ``1e-3`` (YAML 1.1 wants a dot)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _name(tp: Any) -> str:
    """A type as a config user reads it: ``list[float] | 'data' | null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_name(a) for a in args)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if tp is type(None):
        return "null"
    if origin is not None and args:
        return f"{_name(origin)}[{', '.join(_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The fully resolved config as plain data (for YAML/JSON/W&B)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
