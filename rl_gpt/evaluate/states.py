"""Observations that policies actually visit: the inputs on which their behaviour is compared.

The generator's function-space loss (:mod:`rl_gpt.train.function_loss`) compares a generated
policy's actions with the real checkpoint's on such states. Random points of the observation box
would mostly be states no policy ever reaches (CartPole's velocities are unbounded).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from rl_gpt.env_modules import make_env
from rl_gpt.envs import Dynamics, find_dynamics
from rl_gpt.evaluate.policy import BatchedPolicy, PolicySpec
from rl_gpt.layout import Layout
from rl_gpt.threads import torch_threads

__all__ = ["run_episodes", "shared_obs_stats", "visited_observations"]


def shared_obs_stats(
    spec: PolicySpec, batch: int, obs_mean: torch.Tensor | None, obs_var: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """One set of VecNormalize statistics (obs_dim,) for ``batch`` policies: (B, obs_dim) views, or Nones."""
    if not spec.normalize_obs:
        return None, None
    if obs_mean is None or obs_var is None:
        raise ValueError("the spec has normalize_obs=True: pass obs_mean and obs_var (obs_dim,)")
    return obs_mean.reshape(1, -1).expand(batch, -1), obs_var.reshape(1, -1).expand(batch, -1)


def run_episodes(
    dynamics: Dynamics,
    state: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    generator: torch.Generator,
) -> None:
    """Step N episodes of torch ``dynamics`` from ``state`` (N, S) for ``steps`` steps.

    ``act`` maps each step's observations (N, obs_dim) to actions; an episode that terminates or
    reaches the time limit restarts from a fresh start state drawn with ``generator``.
    """
    length = torch.zeros(state.shape[0], dtype=torch.int64, device=state.device)
    for _ in range(steps):
        state, _, terminated = dynamics.step(state, act(dynamics.observe(state)))
        length += 1
        done = (terminated | (length >= dynamics.max_episode_steps)).nonzero().squeeze(1)
        if done.numel():
            state = state.clone()
            state[done] = dynamics.initial_state(done.numel(), generator, state.dtype, state.device)
            length[done] = 0


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
    """Raw observations (about B·steps, obs_dim) of B policies (params (B, D)) acting deterministically.

    One episode per policy, restarted from a fresh start state when it ends, for ``steps`` steps.
    With torch dynamics the rows are grouped by policy. On the Gymnasium fallback they are grouped
    by step, and an ended episode's final observation is left out (the policy never acts on it),
    so a few fewer rows come back.
    Runs the task's torch dynamics where ``envs`` has them, a Gymnasium vector env otherwise.
    ``obs_mean``/``obs_var`` (obs_dim,) are the VecNormalize statistics the policies read through.
    """
    if params.dim() != 2 or params.shape[0] == 0:
        raise ValueError(f"params must be (B > 0, D), got {tuple(params.shape)}")
    B = params.shape[0]
    policy = BatchedPolicy(layout, spec)
    weights = policy.prepare(params.float(), *shared_obs_stats(spec, B, obs_mean, obs_var))
    seen = []
    dynamics = find_dynamics(env_id)
    with torch_threads(1):
        if dynamics is not None:
            g = torch.Generator().manual_seed(seed)

            def act(obs: torch.Tensor) -> torch.Tensor:
                seen.append(obs)
                return policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1)

            run_episodes(dynamics, dynamics.initial_state(B, g, torch.float32, "cpu"), act, steps, g)
            return torch.stack(seen, 1).reshape(B * steps, -1)  # grouped by policy
        envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(B)])
        try:
            dtype = np.int64 if isinstance(envs.single_action_space, gym.spaces.Discrete) else np.float32
            obs_np, _ = envs.reset(seed=[seed + b for b in range(B)])
            fresh = torch.ones(B, dtype=torch.bool)  # the env will act on this observation
            for _ in range(steps):
                obs = torch.as_tensor(obs_np, dtype=torch.float32)
                seen.append(obs[fresh])
                action = policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1)
                obs_np, _, terminated, truncated, _ = envs.step(action.numpy().astype(dtype, copy=False))
                # Gymnasium 1.x resets on the *next* step, ignoring its action: an ended
                # episode's last observation is no state the policy acts in.
                fresh = ~torch.as_tensor(terminated | truncated)
        finally:
            envs.close()
    return torch.cat(seen)
