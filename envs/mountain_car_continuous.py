"""MountainCarContinuous-v0 (gymnasium ``classic_control/continuous_mountain_car.py``), batched in torch."""

from __future__ import annotations

import torch

from .base import ActionSpace


class MountainCarContinuousDynamics:
    """State ``[position, velocity]``, stored as float32 values after every step like gymnasium does.

    The step itself runs in the state dtype. Gymnasium's own arithmetic follows numpy's scalar promotion
    (float32 when its stored float32 state meets a float32 or clipped action, float64 otherwise), so a
    free-running gymnasium episode can drift from ours by float32 ulps; from the same state both agree.
    """

    env_id = "MountainCarContinuous-v0"
    obs_dim = 2
    state_dim = 2
    action_space = ActionSpace(discrete=False, low=(-1.0,), high=(1.0,))
    max_episode_steps = 999

    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0.0
    power = 0.0015
    reset_low, reset_high = -0.6, -0.4

    def initial_state(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        u = torch.rand(batch, generator=generator, dtype=dtype, device=generator.device)
        position = self.reset_low + (self.reset_high - self.reset_low) * u  # (B,)
        return torch.stack((position, torch.zeros_like(position)), dim=-1).to(device)  # (B, 2)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.to(torch.float32).to(state.dtype)  # (B, 2)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position, velocity = state.unbind(-1)  # (B,)
        a = action[:, 0].to(state.dtype)  # (B,) as given: the reward penalises the unclipped action
        force = a.clamp(self.min_action, self.max_action)  # min(max(a, -1), 1)
        velocity = velocity + (force * self.power - 0.0025 * torch.cos(3 * position))
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)

        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = torch.where(terminated, 100.0, 0.0).to(state.dtype) - a.square() * 0.1
        # gymnasium keeps its state as np.float32; reproduce the rounding in float64 runs.
        next_state = torch.stack((position, velocity), dim=-1).to(torch.float32).to(state.dtype)  # (B, 2)
        return next_state, reward, terminated
