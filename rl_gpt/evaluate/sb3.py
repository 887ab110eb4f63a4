"""Evaluate a saved SB3 PPO/SAC ``.zip`` with the batched evaluator."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from envs import DYNAMICS
from rl_gpt.evaluate.policy import policy_spec_from_sb3
from rl_gpt.evaluate.rollout import EvalResult, evaluate_params
from rl_gpt.sb3_policy import actor_layout, read_actor

__all__ = ["detect_algo", "evaluate_sb3_file", "infer_env_id"]


def detect_algo(path: str | Path) -> str:
    """``"ppo"`` or ``"sac"`` from an SB3 save file's contents (SB3 does not record the class name)."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        module = json.loads(z.read("data")).get("policy_class", {}).get("__module__", "")
    if "actor.optimizer.pth" in names or "stable_baselines3.sac" in module:
        return "sac"
    if "policy.optimizer.pth" in names:
        return "ppo"
    raise ValueError(f"{path}: not an SB3 PPO or SAC save file (policy module {module!r})")


def infer_env_id(path: str | Path, model: Any) -> str:
    """The env id of an SB3 save file, which SB3 itself does not record.

    Tried in order: ``generated.json`` beside the file (``rl-gpt generate`` writes one), then the
    torch-dynamics ids whose Gymnasium spaces equal the model's (a unique match only).
    """
    sidecar = Path(path).with_name("generated.json")
    if sidecar.is_file():
        env_id = json.loads(sidecar.read_text()).get("env_id")
        if env_id:
            return str(env_id)
    matches = []
    for env_id in sorted(DYNAMICS):
        env = gym.make(env_id)
        if env.observation_space == model.observation_space and env.action_space == model.action_space:
            matches.append(env_id)
        env.close()
    if len(matches) != 1:
        found = f"several ({matches})" if matches else "none"
        raise ValueError(f"{path}: cannot tell its env id ({found} match its spaces); pass env_id")
    return matches[0]


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
    """Load ``path`` (PPO or SAC), read its actor through the layout and evaluate it on ``env_id``.

    ``env_id`` defaults to :func:`infer_env_id`'s answer. ``obs_stats`` = (mean, var) are the
    VecNormalize observation statistics the policy was trained with. They are taken as numbers, not
    read from SB3's ``VecNormalize.save`` file: that file is a pickle, and rl_gpt never unpickles.
    """
    from stable_baselines3 import PPO, SAC  # heavy import, needed by this entry point only

    algo = detect_algo(path)
    model = (PPO if algo == "ppo" else SAC).load(path, device="cpu")
    env_id = env_id or infer_env_id(path, model)
    layout = actor_layout(model.policy, algo)
    obs_mean = obs_var = None
    if obs_stats is None:
        spec = policy_spec_from_sb3(model, algo)
    else:
        spec = policy_spec_from_sb3(model, algo, normalize_obs=True, clip_obs=clip_obs, norm_epsilon=norm_epsilon)
        obs_mean, obs_var = (torch.as_tensor(x, dtype=torch.float64) for x in obs_stats)
    params = read_actor(model.policy, layout).unsqueeze(0)  # (1, D)
    return evaluate_params(
        params, layout, spec, env_id, episodes, deterministic, seed, device, obs_mean=obs_mean, obs_var=obs_var
    )
