"""Read and evaluate SB3 PPO/SAC ``.zip`` files without unpickling them.

SB3's own ``PPO.load`` runs ``cloudpickle.loads`` on parts of the file (spaces, schedules, policy
kwargs), so loading a stranger's policy runs their code. Here the weights come from the file's
``policy.pth`` through ``torch.load(weights_only=True)``, the architecture from the readable half of
its ``data`` JSON, and the spaces from the Gymnasium env the policy is for: a fresh SB3 policy is
built and given the weights.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from envs import DYNAMICS
from rl_gpt.evaluate.policy import policy_spec_from_sb3
from rl_gpt.evaluate.rollout import EvalResult, evaluate_params
from rl_gpt.sb3_policy import ACTIVATIONS, actor_layout, read_actor

__all__ = ["SB3File", "detect_algo", "evaluate_sb3_file", "infer_env_id", "load_sb3_policy", "read_sb3_file"]

#: Policy kwargs that shape the network (and so the weights) and survive SB3's JSON as plain values.
_ARCH_KWARGS = {
    "ppo": ("net_arch", "share_features_extractor", "squash_output", "use_sde", "log_std_init", "full_std"),
    "sac": ("net_arch", "share_features_extractor", "n_critics", "use_sde", "log_std_init", "clip_mean"),
}


@dataclass(frozen=True)
class SB3File:
    """What rl_gpt reads from an SB3 save file: algorithm, policy weights and architecture kwargs."""

    path: Path
    algo: str
    state: dict[str, torch.Tensor]
    policy_kwargs: dict[str, Any]

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


def _zip_members(path: str | Path) -> tuple[set[str], dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as z:
            return set(z.namelist()), json.loads(z.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not an SB3 save file ({err})") from err


def detect_algo(path: str | Path) -> str:
    """``"ppo"`` or ``"sac"`` from an SB3 save file's contents (SB3 does not record the class name)."""
    names, data = _zip_members(path)
    module = data.get("policy_class", {}).get("__module__", "")
    if "actor.optimizer.pth" in names or "stable_baselines3.sac" in module:
        return "sac"
    if "policy.optimizer.pth" in names:
        return "ppo"
    raise ValueError(f"{path}: not an SB3 PPO or SAC save file (policy module {module!r})")


def _readable_policy_kwargs(data: dict[str, Any], algo: str) -> dict[str, Any]:
    """The architecture kwargs from SB3's JSON, using only its plain-text copies of pickled values."""
    raw = data.get("policy_kwargs") or {}
    kwargs = {k: raw[k] for k in _ARCH_KWARGS[algo] if k in raw}
    act = raw.get("activation_fn")
    if act is not None:  # stored as the text "<class 'torch.nn.modules.activation.Tanh'>"
        match = re.search(r"\.(\w+)'?>?$", str(act))
        by_class = {cls.__name__: cls for cls in ACTIVATIONS.values()}
        if not match or match.group(1) not in by_class:
            raise ValueError(f"unsupported activation {act}: rl_gpt reads {sorted(ACTIVATIONS)}")
        kwargs["activation_fn"] = by_class[match.group(1)]
    return kwargs


def read_sb3_file(path: str | Path) -> SB3File:
    """The policy weights (``weights_only`` torch load) and architecture of an SB3 save file."""
    algo = detect_algo(path)
    _, data = _zip_members(path)
    with zipfile.ZipFile(path) as z:
        try:
            blob = z.read("policy.pth")
        except KeyError as err:
            raise ValueError(f"{path}: an SB3 save file without policy.pth") from err
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return SB3File(Path(path), algo, dict(state), _readable_policy_kwargs(data, algo))


def _spaces_fit(file: SB3File, env_id: str) -> bool:
    env = gym.make(env_id)
    obs, act = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs, gym.spaces.Box) or obs.shape != (file.obs_dim,):
        return False
    if file.discrete:
        return isinstance(act, gym.spaces.Discrete) and int(act.n) == file.action_dim
    return isinstance(act, gym.spaces.Box) and act.shape == (file.action_dim,)


def infer_env_id(file: SB3File) -> str:
    """The env id of an SB3 save file, which SB3 itself does not record.

    Tried in order: ``generated.json`` beside the file (``rl-gpt generate`` writes one), then the
    torch-dynamics ids whose observation and action sizes fit the weights (a unique match only).
    """
    sidecar = file.path.with_name("generated.json")
    if sidecar.is_file():
        env_id = json.loads(sidecar.read_text()).get("env_id")
        if env_id:
            return str(env_id)
    matches = [env_id for env_id in sorted(DYNAMICS) if _spaces_fit(file, env_id)]
    if len(matches) != 1:
        found = f"several ({matches})" if matches else "none"
        raise ValueError(f"{file.path}: cannot tell its env id ({found} match its sizes); pass env_id")
    return matches[0]


def load_sb3_policy(path: str | Path, env_id: str | None = None) -> tuple[SB3File, str, nn.Module]:
    """A fresh SB3 policy for ``env_id`` holding the weights of the save file at ``path``.

    Returns the file, the env id (inferred when not given) and the policy; nothing is unpickled.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy  # heavy imports, for this entry only
    from stable_baselines3.sac.policies import SACPolicy

    file = read_sb3_file(path)
    env_id = env_id or infer_env_id(file)
    if not _spaces_fit(file, env_id):
        kind = "actions" if file.discrete else "action dims"
        raise ValueError(
            f"{path}: a policy for {file.obs_dim} observations and {file.action_dim} {kind} does not fit {env_id}"
        )
    env = gym.make(env_id)
    policy_cls = ActorCriticPolicy if file.algo == "ppo" else SACPolicy
    policy = policy_cls(env.observation_space, env.action_space, lambda _: 0.0, **file.policy_kwargs)
    env.close()
    try:
        policy.load_state_dict(file.state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit a {file.algo} MlpPolicy {file.policy_kwargs}: {first}") from err
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
