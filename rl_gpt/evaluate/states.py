"""Observations that policies actually visit: the inputs on which their behaviour is compared.

The generator's function-space loss (:mod:`rl_gpt.train.function_loss`) compares a generated
policy's actions with the real checkpoint's on such states. Random points of the observation box
would mostly be states no policy ever reaches (CartPole's velocities are unbounded).
"""

from __future__ import annotations

import torch

from rl_gpt.envs import find_dynamics
from rl_gpt.evaluate.policy import BatchedPolicy, PolicySpec
from rl_gpt.evaluate.stepping import GymEpisodes, check_dynamics, run_episodes
from rl_gpt.layout import Layout
from rl_gpt.threads import torch_threads

__all__ = ["shared_obs_stats", "visited_observations"]


def shared_obs_stats(
    spec: PolicySpec, batch: int, obs_mean: torch.Tensor | None, obs_var: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """One set of VecNormalize statistics (obs_dim,) for ``batch`` policies: (B, obs_dim) views, or Nones."""
    if not spec.normalize_obs:
        return None, None
    if obs_mean is None or obs_var is None:
        raise ValueError("the spec has normalize_obs=True: pass obs_mean and obs_var (obs_dim,)")
    return obs_mean.reshape(1, -1).expand(batch, -1), obs_var.reshape(1, -1).expand(batch, -1)


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
            check_dynamics(spec, dynamics, env_id)
            g = torch.Generator().manual_seed(seed)

            def act(obs: torch.Tensor) -> torch.Tensor:
                seen.append(obs)
                return policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1)

            run_episodes(dynamics, dynamics.initial_state(B, g, torch.float32, "cpu"), act, steps, g)
            return torch.stack(seen, 1).reshape(B * steps, -1)  # grouped by policy
        with GymEpisodes(env_id, spec, [seed + b for b in range(B)]) as envs:
            for _ in range(steps):
                obs = envs.observations()  # (B, obs_dim)
                seen.append(obs[envs.acting])  # not an ended episode's last observation
                envs.step(policy.act_prepared(weights, obs.unsqueeze(1), True).squeeze(1))
    return torch.cat(seen)
