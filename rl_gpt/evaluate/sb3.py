"""Read and evaluate SB3 PPO/SAC ``.zip`` files without unpickling them.

SB3's own ``PPO.load`` runs ``cloudpickle.loads`` on parts of the file (spaces, schedules, policy
kwargs), so loading a stranger's policy runs their code. Here the weights come from the file's
``policy.pth`` through ``torch.load(weights_only=True)``, the architecture from the readable half of
its ``data`` JSON, and the spaces from the Gymnasium env the policy is for: a fresh SB3 policy is
built and given the weights.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_gpt.env_modules import EnvModuleError, check_env, make_env
from rl_gpt.envs import DYNAMICS
from rl_gpt.evaluate.policy import policy_spec_from_sb3
from rl_gpt.evaluate.rollout import EvalResult, evaluate_params
from rl_gpt.sb3_policy import ACTIVATIONS, actor_layout, read_actor

__all__ = [
    "env_source",
    "evaluate_sb3_files",
    "PolicyFileError",
    "SB3File",
    "detect_algo",
    "evaluate_sb3_file",
    "infer_env_id",
    "load_sb3_policy",
    "read_sb3_file",
]

#: Policy kwargs that shape the network (and so the weights) and survive SB3's JSON as plain values.
_ARCH_KWARGS = {
    "ppo": ("net_arch", "share_features_extractor", "squash_output", "use_sde", "log_std_init", "full_std"),
    "sac": ("net_arch", "share_features_extractor", "n_critics", "use_sde", "log_std_init", "clip_mean"),
}


class PolicyFileError(ValueError):
    """An SB3 save file rl_gpt cannot or will not read; the message says which file and why."""


@dataclass(frozen=True)
class SB3File:
    """What rl_gpt reads from an SB3 save file: algorithm, policy weights and architecture kwargs."""

    path: Path
    algo: str
    state: dict[str, torch.Tensor]
    policy_kwargs: dict[str, Any]
    spaces: dict[str, dict[str, Any]]  # SB3's plain-text copies of the observation and action spaces

    @property
    def obs_dim(self) -> int:
        first = _first_layer(self.state, self.algo)
        return int(self.state[f"{first}.weight"].shape[1])

    @property
    def action_dim(self) -> int:
        head = "action_net" if self.algo == "ppo" else "actor.mu"
        return int(self.state[f"{head}.weight"].shape[0])

    @property
    def discrete(self) -> bool:
        return self.algo == "ppo" and "log_std" not in self.state


def _first_layer(state: dict[str, torch.Tensor], algo: str) -> str:
    stem, head = ("mlp_extractor.policy_net", "action_net") if algo == "ppo" else ("actor.latent_pi", "actor.mu")
    hidden = sorted(int(k.split(".")[-2]) for k in state if k.startswith(stem + ".") and k.endswith(".weight"))
    return f"{stem}.{hidden[0]}" if hidden else head


# The most bytes read of an SB3 zip's members: a few kB of zip can unpack to gigabytes. SB3's own
# files are far smaller (policy.pth of a 2x256 MuJoCo policy: ~0.6 MB).
_MOST_BYTES = {"data": 16 << 20, "policy.pth": 256 << 20}


def _read_member(z: zipfile.ZipFile, name: str, path: str | Path) -> bytes:
    """One member of an SB3 zip, read no further than ``_MOST_BYTES`` whatever its header says."""
    most = _MOST_BYTES[name]
    with z.open(name) as f:
        blob = f.read(most + 1)
    if len(blob) > most:
        raise PolicyFileError(f"{path}: its {name} unpacks to more than {most >> 20} MB; not a policy rl_gpt reads")
    return blob


def _zip_members(path: str | Path) -> tuple[set[str], dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as z:
            return set(z.namelist()), json.loads(_read_member(z, "data", path))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, RecursionError) as err:
        raise PolicyFileError(f"{path}: not an SB3 save file ({err})") from err


def detect_algo(path: str | Path) -> str:
    """``"ppo"`` or ``"sac"`` from an SB3 save file's contents (SB3 does not record the class name)."""
    return _algo_of(path, *_zip_members(path))


def _algo_of(path: str | Path, names: set[str], data: dict[str, Any]) -> str:
    module = data.get("policy_class", {}).get("__module__", "")
    if "actor.optimizer.pth" in names or "stable_baselines3.sac" in module:
        return "sac"
    if "policy.optimizer.pth" in names:
        return "ppo"
    raise PolicyFileError(f"{path}: not an SB3 PPO or SAC save file (policy module {module!r})")


#: SB3's JSON keeps a class as the text of its repr, e.g. "<class 'torch.nn.modules.activation.Tanh'>".
_ACTIVATION_TEXT = {f"<class '{cls.__module__}.{cls.__qualname__}'>": cls for cls in ACTIVATIONS.values()}


def _readable_policy_kwargs(path: str | Path, data: dict[str, Any], algo: str) -> dict[str, Any]:
    """The architecture kwargs from SB3's JSON, using only its plain-text copies of pickled values."""
    raw = data.get("policy_kwargs") or {}
    if data.get("use_sde") or raw.get("use_sde"):
        raise PolicyFileError(f"{path}: gSDE policies (use_sde=True) are not supported by the batched evaluator")
    kwargs = {k: raw[k] for k in _ARCH_KWARGS[algo] if k in raw}
    act = raw.get("activation_fn")
    if act is not None:
        if act not in _ACTIVATION_TEXT:  # a class of the user's own, even if named like torch's
            raise PolicyFileError(f"{path}: unsupported activation {act}; rl_gpt reads {sorted(ACTIVATIONS)}")
        kwargs["activation_fn"] = _ACTIVATION_TEXT[act]
    return kwargs


def read_sb3_file(path: str | Path) -> SB3File:
    """The policy weights (``weights_only`` torch load) and architecture of an SB3 save file."""
    names, data = _zip_members(path)
    algo = _algo_of(path, names, data)
    kwargs = _readable_policy_kwargs(path, data, algo)
    with zipfile.ZipFile(path) as z:
        try:
            blob = _read_member(z, "policy.pth", path)
        except KeyError as err:
            raise PolicyFileError(f"{path}: an SB3 save file without policy.pth") from err
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise PolicyFileError(f"{path}: policy.pth holds more than plain tensors; refusing it") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PolicyFileError(f"{path}: policy.pth is not a state dict of tensors")
    heads = ["action_net.weight"] if algo == "ppo" else ["actor.mu.weight", "actor.log_std.weight"]
    if any(h not in state for h in heads):
        raise PolicyFileError(f"{path}: not an SB3 {algo.upper()} MlpPolicy (no {' / '.join(heads)}; TD3, DQN?)")
    arch = kwargs.get("net_arch")
    if isinstance(arch, list) and any(isinstance(layer, dict) for layer in arch):
        raise PolicyFileError(
            f"{path}: its net_arch {arch!r} is SB3 1.x's form (shared layers, then a dict), which SB3 2.x no longer "
            "builds; save the policy again with SB3 1.8 as net_arch=dict(pi=[...], vf=[...]), or train it again"
        )
    if "net_arch" in kwargs and not _is_net_arch(kwargs["net_arch"]):
        raise PolicyFileError(
            f"{path}: its net_arch {kwargs['net_arch']!r} is not SB3's list of layer widths (or dict of such lists); "
            "the file is damaged or was not written by SB3"
        )
    dims = {d for t in state.values() for d in t.shape}
    if any(w not in dims for w in _ints(kwargs.get("net_arch"))):  # checked before SB3 allocates a network of that size
        raise PolicyFileError(f"{path}: its net_arch {kwargs['net_arch']} does not match its weights")
    spaces = {k: data.get(k) or {} for k in ("observation_space", "action_space")}
    return SB3File(Path(path), algo, state, kwargs, spaces)


def _is_net_arch(value: Any) -> bool:
    """SB3's forms: a list of positive widths, or a dict of such lists (``pi``/``vf``, ``pi``/``qf``)."""
    if isinstance(value, dict):
        return all(isinstance(v, list) and _is_net_arch(v) for v in value.values())
    return isinstance(value, list) and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value)


def _ints(tree: Any) -> list[int]:
    if isinstance(tree, dict):
        return [w for v in tree.values() for w in _ints(v)]
    if isinstance(tree, (list, tuple)):
        return [w for v in tree for w in _ints(v)]
    return [tree] if isinstance(tree, int) else []


@functools.cache
def _env_spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """An env's observation and action spaces (making an env is the slow part of inference)."""
    env = make_env(env_id)
    env.close()
    return env.observation_space, env.action_space


def _spaces_fit(file: SB3File, env_id: str, bounds: bool = False) -> bool:
    """Whether the weights' sizes fit ``env_id``'s spaces (and, with ``bounds``, the file's recorded bounds)."""
    obs, act = _env_spaces(env_id)
    if not isinstance(obs, gym.spaces.Box) or obs.shape != (file.obs_dim,):
        return False
    if file.discrete:
        fits = isinstance(act, gym.spaces.Discrete) and int(act.n) == file.action_dim
    else:
        fits = isinstance(act, gym.spaces.Box) and act.shape == (file.action_dim,)
    if fits and bounds:
        fits = _bounds_fit(file.spaces["observation_space"], obs) and _bounds_fit(file.spaces["action_space"], act)
    return fits


def _numbers(text: Any) -> np.ndarray | None:
    """numpy's printed array ("[-5. -5.  inf]") back to numbers; None where it cannot be read."""
    try:
        return np.array([float(v) for v in str(text).strip("[]").split()], dtype=np.float64)
    except ValueError:
        return None


def _bounds_fit(readable: dict[str, Any], space: gym.Space) -> bool:
    """Whether SB3's text copy of a space agrees with ``space``; unreadable parts are not held against it."""
    if isinstance(space, gym.spaces.Discrete):
        return "n" not in readable or int(readable["n"]) == int(space.n)
    for key, want in (("low", space.low), ("high", space.high)):
        got = _numbers(readable.get(key, ""))
        if got is not None and got.size == want.size and not np.allclose(got, want.ravel(), rtol=1e-5):
            return False
    return True


def _sidecar_env_id(file: SB3File) -> str | None:
    sidecar = file.path.with_name("generated.json")
    if not sidecar.is_file():
        return None
    env_id = json.loads(sidecar.read_text(encoding="utf-8")).get("env_id")
    if env_id:  # a "module:Env" id is imported from an installed package or PYTHONPATH only, never the current folder
        try:
            check_env(env_id)
        except EnvModuleError as exc:
            raise PolicyFileError(f"{sidecar}: env_id {env_id}: {exc}; or pass --env ENV_ID") from None
    return env_id or None


def infer_env_id(file: SB3File) -> str:
    """The env id of an SB3 save file, which SB3 itself does not record.

    Tried in order: ``generated.json`` beside the file (``rl-gpt generate`` writes one), then the
    torch-dynamics ids whose spaces fit the weights' sizes and the file's recorded bounds (a unique
    match only).
    """
    env_id = _sidecar_env_id(file)
    if env_id:
        return env_id
    matches = [env_id for env_id in sorted(DYNAMICS) if _spaces_fit(file, env_id, bounds=True)]
    if len(matches) != 1:
        found = f"several ({matches})" if matches else "none"
        raise PolicyFileError(
            f"{file.path}: cannot tell its environment ({found} of {', '.join(sorted(DYNAMICS))} match its spaces); "
            "pass --env ENV_ID (a Gymnasium id)"
        )
    return matches[0]


def env_source(path: str | Path, env_id: str | None = None) -> tuple[str, str]:
    """The env id a save file is evaluated in, and how it was found: ``--env``, the ``generated.json``
    beside it, or a guess from its spaces (which a user should be told: CartPole-v0 and v1 look alike)."""
    if env_id is not None:
        return env_id, "--env"
    file = read_sb3_file(path)
    if _sidecar_env_id(file):
        return infer_env_id(file), "generated.json"
    return infer_env_id(file), "guessed from its spaces: pass --env ENV_ID to choose"


def load_sb3_policy(path: str | Path, env_id: str | None = None) -> tuple[SB3File, str, nn.Module]:
    """A fresh SB3 policy for ``env_id`` holding the weights of the save file at ``path``.

    Returns the file, the env id (inferred when not given) and the policy; nothing is unpickled.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy  # heavy imports, for this entry only
    from stable_baselines3.sac.policies import SACPolicy

    file = read_sb3_file(path)
    if env_id is not None:  # "module:Env" imports module from an installed package or PYTHONPATH only
        try:
            check_env(env_id)
        except EnvModuleError as exc:
            raise PolicyFileError(f"--env {env_id}: {exc}") from None
    env_id = env_id or infer_env_id(file)
    if not _spaces_fit(file, env_id):
        kind = "actions" if file.discrete else "action dims"
        raise PolicyFileError(
            f"{path}: a policy for {file.obs_dim} observations and {file.action_dim} {kind} does not fit {env_id}"
        )
    policy_cls = ActorCriticPolicy if file.algo == "ppo" else SACPolicy
    policy = policy_cls(*_env_spaces(env_id), lambda _: 0.0, **file.policy_kwargs)
    want = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in file.state.items()}
    wrong = sorted(set(want) ^ set(got)) + sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if wrong:
        raise PolicyFileError(
            f"{path}: its weights do not fit a {file.algo.upper()} MlpPolicy built from its net_arch "
            f"{file.policy_kwargs.get('net_arch')} for {env_id} (first differences: {', '.join(wrong[:3])})"
        )
    actor = set(actor_layout(policy, file.algo).names)  # a diverged critic does not stop the actor acting
    bad = [k for k in sorted(actor) if file.state[k].is_floating_point() and not torch.isfinite(file.state[k]).all()]
    if bad:  # its returns would be those of a broken policy, and an update of it nonsense
        raise PolicyFileError(f"{path}: {', '.join(bad[:3])} hold NaN or infinite weights; use another policy file")
    policy.load_state_dict(file.state)
    return file, env_id, policy.eval()


def evaluate_sb3_file(
    path: str | Path,
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    env_id: str | None = None,
    obs_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    clip_obs: float = 10.0,
    norm_epsilon: float = 1e-8,
) -> EvalResult:
    """Read ``path`` (PPO or SAC) safely, take its actor through the layout and evaluate it on ``env_id``.

    ``env_id`` defaults to :func:`infer_env_id`'s answer. ``obs_stats`` = (mean, var) are the
    VecNormalize observation statistics the policy was trained with. They are taken as numbers, not
    read from SB3's ``VecNormalize.save`` file: that file is a pickle, and rl_gpt never unpickles.
    """
    file, env_id, policy = load_sb3_policy(path, env_id)
    layout = actor_layout(policy, file.algo)
    obs_mean = obs_var = None
    if obs_stats is None:
        spec = policy_spec_from_sb3(policy, file.algo)
    else:
        spec = policy_spec_from_sb3(policy, file.algo, normalize_obs=True, clip_obs=clip_obs, norm_epsilon=norm_epsilon)
        obs_mean, obs_var = (torch.as_tensor(x, dtype=torch.float64) for x in obs_stats)
    params = read_actor(policy, layout).unsqueeze(0)  # (1, D)
    return evaluate_params(
        params, layout, spec, env_id, episodes, deterministic, seed, device, obs_mean=obs_mean, obs_var=obs_var
    )


def evaluate_sb3_files(
    paths: list[str | Path],
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    env_id: str | None = None,
) -> EvalResult:
    """:func:`evaluate_sb3_file` for several files, in the order given: policies of one environment and
    architecture are rolled out together, in one batch (deterministic returns equal those of one file alone:
    episode e of every policy starts from the same state)."""
    groups: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    how: dict[tuple[str, str], tuple[Any, Any, str]] = {}
    for i, path in enumerate(paths):
        file, env, policy = load_sb3_policy(path, env_id)
        layout = actor_layout(policy, file.algo)
        spec = policy_spec_from_sb3(policy, file.algo)
        key = (env, json.dumps([spec.to_dict(), layout.to_dict()], sort_keys=True))
        groups.setdefault(key, []).append((i, read_actor(policy, layout)))
        how[key] = (layout, spec, env)
    mean, std = torch.zeros(len(paths), dtype=torch.float64), torch.zeros(len(paths), dtype=torch.float64)
    returns = torch.zeros(len(paths), episodes, dtype=torch.float64)
    lengths = torch.zeros(len(paths), episodes, dtype=torch.int64)
    for key, members in groups.items():
        layout, spec, env = how[key]
        index = torch.tensor([i for i, _ in members])
        res = evaluate_params(
            torch.stack([p for _, p in members]), layout, spec, env, episodes, deterministic, seed, device
        )
        mean[index], std[index] = res.mean.double(), res.std.double()
        returns[index], lengths[index] = res.returns.double(), res.lengths.long()
    return EvalResult(mean, std, returns, lengths)
