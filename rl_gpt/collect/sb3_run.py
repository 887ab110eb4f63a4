"""One Stable-Baselines3 training run whose actor is checkpointed every K environment steps.

The run trains first and evaluates afterwards: all of its checkpoints are rolled out together by
the batched evaluator (one stacked forward pass per environment step), which is far cheaper than
pausing training for a Gymnasium evaluation at every checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecNormalize
from torch.distributions import Distribution

from rl_gpt.config import ConfigError, ExperimentConfig, TaskConfig
from rl_gpt.env_modules import EnvModuleError, FiniteCheck, check_env, make_env
from rl_gpt.evaluate import PolicySpec, evaluate_params, fold_obs_normalisation, policy_spec_from_sb3
from rl_gpt.layout import Layout
from rl_gpt.sb3_policy import actor_layout, read_actor, resolve_policy_kwargs

__all__ = [
    "RunResult",
    "build_model",
    "check_env_id",
    "check_rl_collection",
    "describe_policy",
    "describe_versions",
    "folds_normalisation",
    "policy_mismatch",
    "run_seed",
    "sample_hyperparams",
    "train_rl_run",
]

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}


@dataclass
class RunResult:
    """A finished run: per-checkpoint rows (C, ...) and run-level metadata."""

    rows: dict[str, torch.Tensor]
    meta: dict[str, Any]


def run_seed(cfg: ExperimentConfig, run: int) -> int:
    return cfg.collect.seed + run


def check_env_id(env_id: str) -> None:
    """Refuse, before any work starts, an env id rl_gpt cannot collect, in one line (:func:`check_env`:
    ``module:EnvId`` imported, but never from the current folder; registered; episodes that end; spaces)."""
    try:
        check_env(env_id)
    except EnvModuleError as exc:
        raise ConfigError(f"task.env_id={env_id}: {exc}") from None


def _checked_env(env_id: str) -> gym.Env:
    """The env SB3 trains in: :func:`make_env`'s, stopped at its first non-finite observation or reward."""
    return FiniteCheck(make_env(env_id), env_id)


def _schedule(value: Any) -> Any:
    """rl-baselines3-zoo's ``lin_X``: linear decay from X to 0 over training."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


#: Settings that count something (SB3's and supervised runs'): a draw of one is rounded to a whole number.
_WHOLE_NUMBER_HYPERPARAMS = frozenset(
    ("batch_size", "n_steps", "n_epochs", "buffer_size", "learning_starts", "train_freq", "gradient_steps")
    + ("steps", "epochs")
)


def sample_hyperparams(cfg: ExperimentConfig, run: int) -> dict[str, Any]:
    """The run's hyperparameters: the task's, with ``collect.sample_hyperparams`` drawn log-uniformly
    (rounded for the settings that count something, :data:`_WHOLE_NUMBER_HYPERPARAMS`)."""
    params = dict(cfg.task.hyperparams)
    rng = random.Random(run_seed(cfg, run) * 7919 + 17)
    for key, (low, high) in sorted(cfg.collect.sample_hyperparams.items()):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        params[key] = max(1, round(value)) if key in _WHOLE_NUMBER_HYPERPARAMS else value
    return params


#: The networks each algorithm's ``net_arch`` dict names: the actor and its critic.
_NET_ARCH_KEYS = {"ppo": {"pi", "vf"}, "sac": {"pi", "qf"}}

#: Counts SB3 checks only when training has begun (a negative batch fails in the replay buffer).
_POSITIVE_HYPERPARAMS = ("batch_size", "n_steps", "n_epochs", "buffer_size")


def check_rl_collection(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, RL settings that SB3 accepts but that train nothing or fail mid-run."""
    task, c = cfg.task, cfg.collect
    if task.metric != "return":  # what the spec and every report call the evaluation's mean episode return
        raise ConfigError(
            f"task.metric: {task.metric!r}; an RL task's metric is its episode return: task.metric=return"
        )
    if not task.higher_is_better:  # sweeps would prompt the lowest return as the best
        raise ConfigError("task.higher_is_better=false: a return is higher-is-better; set it to true")
    for key in _POSITIVE_HYPERPARAMS:
        value = task.hyperparams.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"task.hyperparams.{key}: {value!r} must be a whole number of 1 or more")
    algo = ALGOS[task.algo]
    arch = task.policy_kwargs.get("net_arch")
    unread = sorted(map(str, set(arch) - _NET_ARCH_KEYS[task.algo])) if isinstance(arch, dict) else []
    if unread:  # SB3 builds PPO's critic with no hidden layer when only SAC's qf is given, without a word
        keys = " and ".join(sorted(_NET_ARCH_KEYS[task.algo]))
        raise ConfigError(
            f"task.policy_kwargs.net_arch: {task.algo.upper()} reads {keys}, not {', '.join(unread)} (another "
            f"algorithm's, kept from the preset?); e.g. task.policy_kwargs={{net_arch: {{pi: [64, 64], "
            f"{'vf' if task.algo == 'ppo' else 'qf'}: [64, 64]}}}}"
        )

    def largest(name: str) -> int:  # a sampled hyperparameter at the top of its range: the longest wait
        sampled = c.sample_hyperparams.get(name)
        return int(math.ceil(sampled[1] if sampled else task.hyperparams.get(name, _default(algo, name))))

    # The last checkpoint is the policy after the run's last update (``_Snapshots``). PPO always updates
    # (SB3 rounds a run up to whole rollouts); SAC only once more than learning_starts steps are taken.
    if task.algo == "sac" and task.hyperparams.get("gradient_steps", 1) == 0:
        raise ConfigError(
            "task.hyperparams.gradient_steps=0: SAC would never update, so every stored policy "
            "would be the untrained one; use 1 or more (-1: as many as steps collected)"
        )
    if task.algo == "ppo":  # PPO updates once per rollout, and SB3 never stops inside one
        rollout = largest("n_steps") * task.n_envs
        if c.timesteps < rollout:
            raise ConfigError(
                f"collect.timesteps={c.timesteps} is less than one PPO rollout (task.hyperparams.n_steps "
                f"{largest('n_steps')} x task.n_envs {task.n_envs} = {rollout} steps): each run would train "
                f"{rollout} steps and record {c.timesteps}; raise collect.timesteps or lower task.hyperparams.n_steps"
            )
        if c.checkpoint_every < rollout:
            warnings.warn(
                f"collect.checkpoint_every={c.checkpoint_every} is less than one PPO rollout ({rollout} steps): "
                f"checkpoints are taken at rollout boundaries, so every {rollout} steps; lower "
                "task.hyperparams.n_steps for closer ones",
                stacklevel=2,
            )
    if task.algo == "sac" and c.timesteps <= largest("learning_starts"):
        raise ConfigError(
            f"collect.timesteps={c.timesteps} ends before SAC's first update (after learning_starts = "
            f"{largest('learning_starts')} steps): every stored policy would be the untrained one; raise "
            "collect.timesteps or lower task.hyperparams.learning_starts"
        )


def _default(algo: type[BaseAlgorithm], name: str) -> Any:
    return inspect.signature(algo.__init__).parameters[name].default


def build_model(task: TaskConfig, seed: int, hyperparams: dict[str, Any] | None = None) -> BaseAlgorithm:
    """A fresh SB3 model for the task (its vectorised env wrapped in VecNormalize where configured).

    The model logs nowhere: without a logger of its own, every ``learn()`` would call SB3's
    ``configure_logger``, which creates an empty ``SB3-<date>`` folder in the temp directory.
    """
    check_env_id(task.env_id)
    if (task.hyperparams if hyperparams is None else hyperparams).get("use_sde"):
        raise ConfigError(
            "task.hyperparams.use_sde: gSDE policies are not supported (rl_gpt stores and evaluates the actor's "
            "mean and log-std, not gSDE's noise matrices); remove it, as rl_gpt's presets do"
        )
    _check_net_arch(task.policy_kwargs.get("net_arch"))
    try:
        # rl_gpt's own factory, as evaluation's rollouts build theirs: given an id, SB3 would make it with
        # render_mode="rgb_array" (a warning for an env without render modes) and import a module:EnvId itself
        env = make_vec_env(functools.partial(_checked_env, task.env_id), n_envs=task.n_envs, seed=seed)
    except gym.error.DependencyNotInstalled as exc:  # Box2D, Atari, ...: an extra of gymnasium's
        raise ConfigError(f"task.env_id={task.env_id}: {exc}") from None
    if task.algo == "sac" and not isinstance(env.action_space, gym.spaces.Box):  # else SB3's words blame the settings
        env.close()
        raise ConfigError(
            f"task.algo=sac needs continuous (Box) actions; {task.env_id} has {env.action_space}: use task.algo=ppo"
        )
    if task.normalize:
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    hp = {k: _schedule(v) for k, v in (task.hyperparams if hyperparams is None else hyperparams).items()}
    try:
        kwargs = resolve_policy_kwargs(task.algo, task.policy_kwargs)
    except ValueError as exc:
        raise ConfigError(f"task.{exc}") from None
    try:
        model = ALGOS[task.algo]("MlpPolicy", env, seed=seed, policy_kwargs=kwargs, device="cpu", verbose=0, **hp)
    except TypeError as exc:  # an unknown keyword: the algorithm's (hyperparams) or the policy's (policy_kwargs,
        env.close()  # its optimizer_kwargs, features_extractor_kwargs, ...)
        taken = inspect.signature(ALGOS[task.algo].__init__).parameters
        unknown = sorted(k for k in hp if k not in taken)
        if not unknown:
            raise ConfigError(f"task.policy_kwargs: {exc}") from None
        # often a preset's settings for its own algorithm kept after task.algo=...
        raise ConfigError(
            f"task.hyperparams: {task.algo.upper()} takes no {', '.join(unknown)}; give its own settings, or "
            "task.hyperparams={} for Stable-Baselines3's defaults"
        ) from None
    except NotImplementedError as exc:  # spaces SB3's MlpPolicy does not take (Tuple, Graph, ...)
        env.close()
        raise ConfigError(
            f"task.env_id={task.env_id}: Stable-Baselines3 cannot build an MlpPolicy for it ({exc})"
        ) from None
    except (AssertionError, ValueError, KeyError) as exc:  # SB3's own checks of the values
        env.close()
        where = "task.hyperparams (or collect.sample_hyperparams) / task.policy_kwargs"
        raise ConfigError(f"Stable-Baselines3 refused {where}: {exc}") from None
    # A folder-less logger with no outputs; set_logger also stops learn() from configuring its own.
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


_WIDEST_LAYER = 1 << 16
_MOST_WEIGHTS = 10**8  # 400 MB of float32 weights between the hidden layers of one network
_MOST_LAYERS = 1000


def _short_arch(arch: Any) -> str:
    text = repr(arch)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_net_arch(arch: Any) -> None:
    """Refuse a ``net_arch`` SB3 would fail on deep inside (or build with an empty layer)."""
    if arch is None:
        return
    for widths in arch.values() if isinstance(arch, dict) else [arch]:
        if not isinstance(widths, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
            ok = False
        else:
            ok = all(w >= 1 for w in widths)
        if not ok:
            raise ConfigError(
                f"task.policy_kwargs.net_arch: {arch!r} must be a list of layer widths (positive integers) "
                "or a dict of such lists, e.g. {pi: [16], vf: [64, 64]}"
            )
        weights = sum(a * b for a, b in zip(widths, widths[1:]))
        if max(widths, default=0) > _WIDEST_LAYER or weights > _MOST_WEIGHTS or len(widths) > _MOST_LAYERS:
            # read from a model's or dataset's files too (the critic is in no layout): a typo or a
            # hostile file would otherwise take all memory building it, before any other check
            raise ConfigError(
                f"task.policy_kwargs.net_arch: {_short_arch(arch)} asks for more than {_MOST_LAYERS} layers, layers "
                f"wider than {_WIDEST_LAYER} units or more than {_MOST_WEIGHTS:.0e} weights; use a smaller network"
            )


def folds_normalisation(cfg: ExperimentConfig) -> bool:
    """Whether stored checkpoints have their VecNormalize statistics folded into the first layer."""
    return cfg.task.normalize and cfg.collect.fold_normalisation


def describe_policy(task: TaskConfig, folded: bool = False) -> tuple[Layout, dict[str, Any]]:
    """The actor layout and policy description of the task's network (built once, not trained).

    ``folded``: the stored parameters read raw observations, so the spec normalises nothing.
    """
    model = build_model(task, seed=0)
    try:
        return actor_layout(model.policy, task.algo), _policy_spec(model, task, folded).to_dict()
    except (ValueError, KeyError) as exc:  # spaces or a policy the batched evaluator cannot act with
        raise ConfigError(
            f"task.env_id={task.env_id} with {task.algo.upper()}: {str(exc).strip(chr(34))}; rl_gpt evaluates "
            "MLP policies on flat Box observations with Discrete or Box actions"
        ) from None


def policy_mismatch(task: TaskConfig, spec: dict[str, Any], layout: Layout) -> str | None:
    """Why ``task``'s SB3 algorithm or actor differs from a dataset's (``spec``, ``layout``), or None.

    A generator learns the dataset's networks whatever a config says; training with a config of
    another algorithm, shape or activation would record the wrong ones in the model's config.yaml.
    """
    algo = spec["task"].get("algo", "ppo")
    if task.algo != algo:
        return f"holds {algo.upper()} policies but the config has task.algo={task.algo}; pass task.algo={algo}"
    built, policy = describe_policy(task)
    stored = spec.get("policy") or {}
    activation = stored.get("activation", policy.get("activation"))  # older specs may not record one
    same_shapes = [(q.name, tuple(q.shape)) for q in built.params] == [(q.name, tuple(q.shape)) for q in layout.params]
    if not same_shapes or policy.get("activation") != activation:
        return (
            f"holds actors of another shape or activation than task.policy_kwargs={task.policy_kwargs} builds (the "
            f"dataset's: {spec['task'].get('policy_kwargs')}); pass the dataset's task.policy_kwargs"
        )
    return None


def _policy_spec(model: BaseAlgorithm, task: TaskConfig, folded: bool) -> PolicySpec:
    """How stored policies act: they normalise observations only when the statistics are not folded in."""
    return policy_spec_from_sb3(model, task.algo, normalize_obs=task.normalize and not folded)


class _Snapshots(BaseCallback):
    """Copies the actor (and VecNormalize statistics) at the first rollout boundary from every ``every``
    environment steps on, and at the end; a rollout longer than ``every`` gives one copy.

    A copy is the policy after every update on the steps it is labelled with. SB3 calls ``_on_step``
    while it collects a rollout, before it trains on it, so copies taken there were the policy that
    collected the steps and the run's last update was never stored. Copies are taken when the next
    rollout starts instead (PPO and SAC both train between rollouts), and once more when learning ends.
    """

    def __init__(self, layout: Layout, every: int, start: float, check_finite: bool = False):
        super().__init__()
        self.layout, self.every, self.start = layout, every, start
        self.check_finite = check_finite  # see _unchecked_distributions
        self.next = every
        self.items: list[dict[str, Any]] = []

    def snapshot(self, model: BaseAlgorithm, step: int) -> None:
        item = {"params": read_actor(model.policy, self.layout), "step": step, "wall_time": time.time() - self.start}
        env = model.get_env()
        if isinstance(env, VecNormalize):
            item["obs_mean"] = torch.as_tensor(env.obs_rms.mean, dtype=torch.float32)
            item["obs_var"] = torch.as_tensor(env.obs_rms.var, dtype=torch.float32)
        self.items.append(item)

    def check_weights(self) -> None:
        """With ``check_finite``: refuse a policy with a NaN/inf weight (see :func:`_unchecked_distributions`)."""
        if self.check_finite and not all(bool(torch.isfinite(p).all()) for p in self.model.policy.parameters()):
            raise ValueError(
                f"{type(self.model).__name__} training diverged: the policy has non-finite (NaN/inf) weights after "
                f"{self.model.num_timesteps} environment steps; lower task.hyperparams.learning_rate or max_grad_norm"
            )

    def _on_rollout_start(self) -> None:
        self.check_weights()
        step = self.model.num_timesteps
        if step >= self.next:
            self.snapshot(self.model, step)
            while self.next <= step:  # a rollout longer than ``every`` stores one copy
                self.next += self.every

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.check_weights()
        if not self.items or self.items[-1]["step"] != self.model.num_timesteps:
            self.snapshot(self.model, self.model.num_timesteps)


@contextlib.contextmanager
def _unchecked_distributions(model: BaseAlgorithm) -> Iterator[bool]:
    """Turn off torch.distributions' argument checks while a PPO run on Discrete actions trains; yields
    whether they are off (the run's callback then checks the weights instead).

    SB3 builds a Categorical for every rollout step and minibatch, and the checks (that logits are not NaN,
    that actions lie in the support) took about 5 % of a CartPole run; they compute nothing the run uses,
    and torch turns them off itself under ``python -O``. A diverged run still fails: its NaN weights are
    refused at the next rollout's start or at the end (:class:`_Snapshots`), before they act or are stored,
    where the checks refused them at the next minibatch. Gaussian heads keep the checks: there NaN actions
    would step the environment and the run would end normally.
    """
    if not (isinstance(model, PPO) and isinstance(model.action_space, gym.spaces.Discrete)):
        yield False
        return
    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield True
    finally:
        Distribution.set_default_validate_args(before)


def _sane(params: torch.Tensor, limit: float) -> torch.Tensor:
    """(N,) rows that are finite and no larger than ``limit`` in absolute value."""
    return torch.isfinite(params).all(dim=1) & (params.abs().amax(dim=1) <= limit)


def train_rl_run(cfg: ExperimentConfig, run: int) -> RunResult:
    """Train one run, checkpointing its actor at step 0, every ``checkpoint_every`` steps (at the rollout
    boundary that follows) and at the end, then evaluate."""
    torch.set_num_threads(1)  # one core per run; parallelism comes from running runs side by side
    seed = run_seed(cfg, run)
    hp = sample_hyperparams(cfg, run)
    start = time.time()
    model = build_model(cfg.task, seed, hp)
    layout = actor_layout(model.policy, cfg.task.algo)
    folded = folds_normalisation(cfg)
    policy_spec = _policy_spec(model, cfg.task, folded)
    snaps = _Snapshots(layout, cfg.collect.checkpoint_every, start)
    snaps.snapshot(model, 0)
    with _unchecked_distributions(model) as unchecked:
        snaps.check_finite = unchecked
        model.learn(total_timesteps=cfg.collect.timesteps, callback=snaps)
    train_time = time.time() - start

    rows: dict[str, torch.Tensor] = {
        k: torch.stack([torch.as_tensor(s[k]) for s in snaps.items]) for k in snaps.items[0]
    }
    rows["step"] = rows["step"].to(torch.int64)
    rows["wall_time"] = rows["wall_time"].to(torch.float32)
    params = rows["params"]
    limit = cfg.collect.max_abs_weight
    # Judged on the weights training produced, then again after folding (columns scale by 1/σ).
    valid = _sane(params, limit)
    stats = {"obs_mean": rows.get("obs_mean"), "obs_var": rows.get("obs_var")}
    if folded:
        eps = policy_spec.norm_epsilon
        params = rows["params"] = fold_obs_normalisation(params, layout, rows["obs_mean"], rows["obs_var"], eps)
        valid &= _sane(params, limit)
        stats = {}  # the statistics now live in the weights; obs_mean/obs_var stay in the rows for reference
    rows["valid"] = valid

    eval_start = time.time()
    results = {}
    for mode, deterministic in (("det", True), ("stoch", False)):
        results[mode] = evaluate_params(
            torch.where(valid[:, None], params, torch.zeros_like(params)),
            layout,
            policy_spec,
            cfg.task.env_id,
            episodes=cfg.collect.eval_episodes,
            deterministic=deterministic,
            seed=cfg.collect.eval_seed,
            **stats,
        )
    nan = torch.tensor(float("nan"))
    rows["metric"] = torch.where(valid, results["det"].mean.float(), nan)
    rows["return_std"] = torch.where(valid, results["det"].std.float(), nan)
    rows["return_stoch"] = torch.where(valid, results["stoch"].mean.float(), nan)
    rows["return_stoch_std"] = torch.where(valid, results["stoch"].std.float(), nan)
    rows["episode_length"] = results["det"].lengths.float().mean(dim=1)
    eval_time = time.time() - eval_start

    meta = {
        "seed": seed,
        "hyperparams": {k: v for k, v in hp.items()},
        "timesteps": cfg.collect.timesteps,
        "train_time": train_time,
        "eval_time": eval_time,
        "final_return": float(rows["metric"][-1]),
        "invalid_checkpoints": int((~valid).sum()),
    }
    return RunResult(rows, meta)


_VERSIONED = (
    "rl_gpt",
    "torch",
    "stable-baselines3",
    "gymnasium",
    "mujoco",
    "tensordict",
    "torchrl",
    "numpy",
    "scikit-learn",  # loads digits and splits it (train_test_split)
)


def describe_versions() -> dict[str, str]:
    """Installed versions of what a dataset depends on, and ``rl_gpt_commit``: the commit of the rl_gpt that
    runs, where it runs from a git checkout (its version number has stayed 0.1.0 across its history, and the
    installed distribution's version may be another copy's than the code on ``PYTHONPATH``)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    commit = source_commit()
    if commit is not None:
        out["rl_gpt_commit"] = commit
    return out


def source_commit(root: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out in ``root`` (default: where this rl_gpt's source lies), read from its ``.git``
    files (no git process); None for an installed package or anything unreadable. Uncommitted changes are
    not seen."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: PATH"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head if _is_sha(head) else None  # a detached HEAD
        ref = head[5:]
        common = git / "commondir"  # a worktree keeps its branches in the main .git
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        loose = base / ref
        if loose.is_file():
            sha = loose.read_text().strip()
            return sha if _is_sha(sha) else None
        packed = base / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else ():
            sha, _, name = line.partition(" ")
            if name == ref and _is_sha(sha):
                return sha
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    return None


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)
