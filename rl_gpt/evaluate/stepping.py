"""Batches of episodes stepped together: where the autoreset of either backend and the space checks live.

Rollouts (:mod:`~rl_gpt.evaluate.rollout`), visited states (:mod:`~rl_gpt.evaluate.states`) and
behavioural novelty (:mod:`rl_gpt.sweep.behaviour`) all step N episodes at once, either on a
Gymnasium vector env (:class:`GymEpisodes`) or on a task's torch dynamics (:func:`run_episodes`),
and refuse a policy whose spaces are not the task's (:func:`check_spaces`, :func:`check_dynamics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

import gymnasium as gym
import numpy as np
import torch

from rl_gpt.env_modules import check_env, make_env
from rl_gpt.envs.base import Dynamics
from rl_gpt.evaluate.policy import PolicySpec

__all__ = ["GymEpisodes", "check_dynamics", "check_spaces", "run_episodes"]


def check_spaces(spec: PolicySpec, env_id: str, obs_dim: int, discrete: bool, action_dim: int) -> None:
    """Refuse a policy whose observation size or action kind (and size) is not ``env_id``'s."""
    if obs_dim != spec.obs_dim:
        raise ValueError(f"{env_id} has obs_dim={obs_dim}, the policy spec {spec.obs_dim}")
    if discrete != spec.discrete or (not discrete and action_dim != spec.action_dim):
        kind = "discrete" if discrete else f"continuous ({action_dim})"
        raise ValueError(f"{env_id} has {kind} actions; the policy's head is {spec.head} ({spec.action_dim})")


def check_dynamics(spec: PolicySpec, dynamics: Dynamics, env_id: str) -> None:
    """:func:`check_spaces` against a task's torch dynamics."""
    space = dynamics.action_space
    check_spaces(spec, env_id, dynamics.obs_dim, space.discrete, space.dim)


# ---------------------------------------------------------------------------------------- gymnasium
class GymEpisodes:
    """N copies of a Gymnasium env in one vector env, copy i reset with ``seeds[i]``; a context manager.

    Gymnasium 1.x autoresets an ended env on its *next* step, which ignores that step's action and
    returns the new episode's first observation (reward 0, not ended). Callers read that here rather
    than from ``terminated | truncated``:

    * ``acting`` (N,): the next :meth:`step` acts on :meth:`observations`' row; False for the
      autoreset step, whose row is the ended episode's last observation, no state a policy acts in.
    * ``first`` (N,): still in the episode ``reset(seed=seeds[i])`` began; ``returns`` (N,) float64
      and ``lengths`` (N,) int64 count that episode only, up to its end.
    """

    def __init__(self, env_id: str, spec: PolicySpec, seeds: Sequence[int], async_envs: bool = False) -> None:
        # AsyncVectorEnv steps each env in its own process: worth it only for slow simulators.
        vector_env = gym.vector.AsyncVectorEnv if async_envs else gym.vector.SyncVectorEnv
        check_env(env_id)  # an env whose episodes never end would hang the loop that steps it
        self._envs = vector_env([lambda: make_env(env_id) for _ in seeds])
        try:
            space = self._envs.single_action_space
            discrete = isinstance(space, gym.spaces.Discrete)
            obs_dim = int(np.prod(self._envs.single_observation_space.shape))
            check_spaces(spec, env_id, obs_dim, discrete, 1 if discrete else space.shape[0])
            self._act_dtype = np.int64 if discrete else np.float32  # what SB3's predict hands the env
            self._obs, _ = self._envs.reset(seed=list(seeds))  # (N, *obs_shape)
        except BaseException:
            self._envs.close()
            raise
        n = len(seeds)
        self.acting = torch.ones(n, dtype=torch.bool)
        self.first = torch.ones(n, dtype=torch.bool)
        self.returns = torch.zeros(n, dtype=torch.float64)
        self.lengths = torch.zeros(n, dtype=torch.int64)

    def observations(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, obs_dim) the observations the next step acts on (where ``acting``)."""
        return torch.as_tensor(self._obs, dtype=dtype).to(device).reshape(len(self.acting), -1)

    def step(self, action: torch.Tensor) -> None:
        """Step every env with its row of ``action`` ((N,) discrete, (N, A) continuous; any device)."""
        obs, reward, terminated, truncated, _ = self._envs.step(
            action.cpu().numpy().astype(self._act_dtype, copy=False)
        )
        self._obs = obs
        ended = torch.as_tensor(terminated | truncated)
        # torch.where, not a product: a finished episode's reward may be NaN after divergence.
        self.returns += torch.where(self.first, torch.as_tensor(reward, dtype=torch.float64), 0.0)
        self.lengths += self.first
        self.first &= ~ended
        self.acting = ~ended

    def close(self) -> None:
        self._envs.close()

    def __enter__(self) -> GymEpisodes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- torch dynamics
def run_episodes(
    dynamics: Dynamics,
    state: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    generator: torch.Generator,
) -> None:
    """Step N episodes of torch ``dynamics`` from ``state`` (N, S) for ``steps`` steps.

    ``act`` maps each step's observations (N, obs_dim) to actions; an episode that terminates or
    reaches the time limit restarts from a fresh start state drawn with ``generator``, so unlike
    :class:`GymEpisodes` every step acts on a state of some episode.
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
