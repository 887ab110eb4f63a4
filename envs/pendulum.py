"""Pendulum-v1 (gymnasium ``classic_control/pendulum.py``, g = 10), batched in torch."""

from __future__ import annotations

from math import pi

import torch

from .base import ActionSpace


def _angle_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + pi, 2 * pi) - pi  # Python-style modulo, like numpy's %


class PendulumDynamics:
    """State ``[theta, theta_dot]`` with theta left unwrapped, as gymnasium keeps it. Never terminates."""

    env_id = "Pendulum-v1"
    obs_dim = 3
    state_dim = 2
    action_space = ActionSpace(discrete=False, low=(-2.0,), high=(2.0,))
    max_episode_steps = 200

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0
    reset_high = (pi, 1.0)  # theta ~ U(-pi, pi), theta_dot ~ U(-1, 1)

    def initial_state(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        high = torch.tensor(self.reset_high, dtype=dtype, device=generator.device)  # (2,)
        u = torch.rand(batch, self.state_dim, generator=generator, dtype=dtype, device=generator.device)
        return (-high + (high - -high) * u).to(device)  # (B, 2)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        th, thdot = state.unbind(-1)
        obs = torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)
        return obs.to(torch.float32).to(state.dtype)  # (B, 3), float32 values as gymnasium returns them

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        th, thdot = state.unbind(-1)  # (B,)
        g, m, l, dt = self.g, self.m, self.l, self.dt
        u = action[:, 0].to(state.dtype).clamp(-self.max_torque, self.max_torque)  # (B,)
        # The cost is taken on the pre-step state, with the angle folded into [-pi, pi).
        costs = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        next_state = torch.stack((newth, newthdot), dim=-1)  # (B, 2)
        return next_state, -costs, torch.zeros_like(th, dtype=torch.bool)
