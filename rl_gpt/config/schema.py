"""The configuration's schema: one dataclass per section, their defaults (the embedded CartPole demo),
the command-line short names and the bounds :mod:`.checks` enforces."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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
        if self.metric == "test_error" and not (r[0] >= 0.0 and r[1] <= 1.0):  # a preset's loss range kept by mistake
            raise ConfigError(
                f"task.metric_range: {r!r} reaches outside [0, 1], where test_error (a fraction) lies; set "
                "task.metric_range=null (the collected range) or a range inside [0, 1]"
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
    # Weight of the function-space loss (rl_gpt/train/function_loss.py): how far the outputs of the x0
    # estimate are from the real θ''s on probe inputs (function_compare says how), weighted over noise
    # levels by function_signal_power. 0 = off (weights-only MSE, G.pt's loss).
    function_loss: float = 0.0
    # The function term's weight over noise levels is ᾱ(t)**power: 1 keeps it off the blurry x0
    # estimates at high noise; 0 weights every noise level alike.
    function_signal_power: float = 1.0
    function_probes: int = 256  # probe inputs: states the training runs' policies visit, or training images
    # How the outputs are compared: "mse", their squared difference (any task); "kl", KL(θ' ‖ x0 estimate)
    # of the class or action probabilities (classifiers, discrete actions), which weighs a confident
    # output's misses as the test loss does.
    function_compare: Literal["mse", "kl"] = "mse"
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
    # so that sweeps and generate condition on it; `rl-gpt train` and `rl-gpt demo` do this (from
    # Python: rl_gpt.sweep.calibrate.ensure_calibrated). ~50 s on CartPole at rerank 4; 48 unseen
    # inits x 20 prompts, training seeds 0 / 1: +0.024 / +0.020 R2 (docs/results.md).
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
    # The noise baseline adds this many of the normaliser's standard deviations to the retrieved checkpoint:
    # one per tensor (a weight and its bias apart), one per input feature with train.normalize_input_columns.
    noise_scale: float = 0.1
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
    project: str | None = None  # W&B project; None = WANDB_PROJECT, else rl_gpt
    entity: str | None = None  # W&B entity (team); None = your default
    artifacts: bool = True  # log the dataset's and the model's files as W&B artifacts (the memmaps stay on disk)


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


def to_dict(cfg: Any) -> dict[str, Any]:
    """The fully resolved config as plain data (for YAML/JSON/W&B)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
