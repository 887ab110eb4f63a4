"""Observations that policies actually visit: the inputs on which their behaviour is compared.

The generator's function-space loss (:mod:`rl_gpt.train.function_loss`) compares a generated
policy's actions with the real checkpoint's on such states. Random points of the observation box
would mostly be states no policy ever reaches (CartPole's velocities are unbounded).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from envs import make_dynamics
from rl_gpt.evaluate.policy import BatchedPolicy, PolicySpec
from rl_gpt.layout import Layout
from rl_gpt.threads import torch_threads

__all__ = ["visited_observations"]


@torch.inference_mode()
def visited_observations(
    layout: Layout,
    spec: PolicySpec,
    env_id: str,
    params: torch.Tensor,
    steps: int,
    seed: int = 0,
    obs_mean: torch.Tensor | None = None,
    obs_var: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw observations (B·steps, obs_dim) of B policies (params (B, D)) acting deterministically.

    One episode per policy, restarted from a fresh start state when it ends, for ``steps`` steps.
    Runs the task's torch dynamics where ``envs`` has them, a Gymnasium vector env otherwise.
    ``obs_mean``/``obs_var`` (obs_dim,) are the VecNormalize statistics the policies read through.
    """
    if params.dim() != 2 or params.shape[0] == 0:
        raise ValueError(f"params must be (B > 0, D), got {tuple(params.shape)}")
    B = params.shape[0]
    policy = BatchedPolicy(layout, spec)
    mean = var = None
    if spec.normalize_obs:
        if obs_mean is None or obs_var is None:
            raise ValueError("the spec has normalize_obs=True: pass obs_mean and obs_var (obs_dim,)")
        mean, var = obs_mean.reshape(1, -1).expand(B, -1), obs_var.reshape(1, -1).expand(B, -1)
    weights = policy.prepare(params.float(), mean, var)
    seen = []
    try:
        dynamics = make_dynamics(env_id)
    except KeyError:
        dynamics = None
    with torch_threads(1):
        if dynamics is not None:
            g = torch.Generator().manual_seed(seed)
            state = dynamics.initial_state(B, g, torch.float32, "cpu")  # (B, S)
            length = torch.zeros(B, dtype=torch.int64)
            for _ in range(steps):
                obs = dynamics.observe(state)  # (B, obs_dim)
                seen.append(obs)
                action = policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1)
                state, _, terminated = dynamics.step(state, action)
                length += 1
                done = (terminated | (length >= dynamics.max_episode_steps)).nonzero().squeeze(1)
                if done.numel():
                    state = state.clone()
                    state[done] = dynamics.initial_state(done.numel(), g, torch.float32, "cpu")
                    length[done] = 0
        else:
            envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(B)])
            try:
                dtype = np.int64 if isinstance(envs.single_action_space, gym.spaces.Discrete) else np.float32
                obs_np, _ = envs.reset(seed=[seed + b for b in range(B)])
                for _ in range(steps):
                    obs = torch.as_tensor(obs_np, dtype=torch.float32)
                    seen.append(obs)
                    action = policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1)
                    obs_np, *_ = envs.step(action.numpy().astype(dtype, copy=False))
            finally:
                envs.close()
    return torch.stack(seen, 1).reshape(B * steps, -1)
