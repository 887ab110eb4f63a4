"""The shared stepping primitive: Gymnasium's next-step autoreset, known answers, and the space checks."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_gpt.envs import find_dynamics
from rl_gpt.evaluate.policy import PolicySpec
from rl_gpt.evaluate.stepping import GymEpisodes, check_dynamics, run_episodes

SPEC = PolicySpec(algo="ppo", head="categorical", activation="tanh", obs_dim=1, action_dim=1, n_actions=2)


class _Countdown(gym.Env):
    """An episode of ``reset(seed=s)`` terminates after s steps (its TimeLimit truncates at 4);
    reward = 10·(step number) + action, so a sum says which steps and actions were counted. The
    observation is the step number."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:  # an autoreset (no seed) keeps the episode length
            self.length = seed
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.array([self.t], dtype=np.float32), 10.0 * self.t + int(action), self.t == self.length, False, {}


gym.register("RlGptCountdown-v0", entry_point=_Countdown, max_episode_steps=4)


def test_gym_episodes_mark_the_autoreset_step_and_count_the_first_episode_only() -> None:
    # Episodes of 1 step, 2 steps, and 6 steps truncated at 4.
    acting, observed = [], []
    with GymEpisodes("RlGptCountdown-v0", SPEC, [1, 2, 6]) as envs:
        for t in range(6):
            acting.append(envs.acting.tolist())
            observed.append(envs.observations()[:, 0].tolist())
            envs.step(torch.full((3,), t % 2))  # actions 0, 1, 0, 1, ...
    # The step after an end is Gymnasium's autoreset: it ignores the action, and the observation
    # before it (the ended episode's last) is no state the policy acts in.
    assert acting == [
        [True, True, True],
        [False, True, True],
        [True, False, True],
        [False, True, True],
        [True, True, False],
        [False, False, True],
    ]
    assert observed == [[0, 0, 0], [1, 1, 1], [0, 2, 2], [1, 0, 3], [0, 1, 4], [1, 2, 0]]
    assert envs.lengths.tolist() == [1, 2, 4]
    assert envs.returns.tolist() == [10.0, 10 + 21.0, 10 + 21 + 30 + 41.0]  # never a later episode's
    assert envs.first.tolist() == [False, False, False]
    assert envs.returns.dtype == torch.float64 and envs.lengths.dtype == torch.int64


def test_gym_episodes_refuse_a_policy_of_other_spaces() -> None:
    with pytest.raises(ValueError, match="RlGptCountdown-v0 has obs_dim=1, the policy spec 4"):
        GymEpisodes("RlGptCountdown-v0", PolicySpec("ppo", "categorical", "tanh", 4, 1, n_actions=2), [0])
    gaussian = PolicySpec("ppo", "gaussian", "tanh", 1, 1, action_low=(-1.0,), action_high=(1.0,))
    with pytest.raises(ValueError, match="has discrete actions; the policy's head is gaussian"):
        GymEpisodes("RlGptCountdown-v0", gaussian, [0])
    with pytest.raises(ValueError, match="CartPole-v1 has discrete actions"):
        check_dynamics(dataclasses.replace(gaussian, obs_dim=4), find_dynamics("CartPole-v1"), "CartPole-v1")


class _Clock:
    """Torch dynamics whose state is a step count: an episode terminates on reaching 2, and its
    time limit is 3 steps; start states are 0."""

    env_id, obs_dim, state_dim, max_episode_steps = "Clock", 1, 1, 3

    def initial_state(self, n: int, generator: torch.Generator, dtype: torch.dtype, device: str) -> torch.Tensor:
        return torch.zeros(n, 1, dtype=dtype, device=device)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = state + 1
        return state, torch.zeros(len(state)), state[:, 0] == 2


def test_run_episodes_restarts_an_ended_episode_at_once() -> None:
    seen = []

    def act(obs: torch.Tensor) -> torch.Tensor:
        seen.append(obs[:, 0].tolist())
        return torch.zeros(len(obs), dtype=torch.int64)

    # Row 0 terminates every 2 steps; row 1 starts at -5 and is cut by the time limit after 3.
    run_episodes(_Clock(), torch.tensor([[0.0], [-5.0]]), act, 7, torch.Generator())
    assert seen == [[0, -5], [1, -4], [0, -3], [1, 0], [0, 1], [1, 0], [0, 1]]
