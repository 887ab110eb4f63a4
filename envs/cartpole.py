"""CartPole-v1 (gymnasium ``classic_control/cartpole.py``), batched in torch."""

from __future__ import annotations

import math

import torch

from .base import ActionSpace


class CartPoleDynamics:
    """State ``[x, x_dot, theta, theta_dot]``; explicit Euler with tau = 0.02 s."""

    env_id = "CartPole-v1"
    obs_dim = 4
    state_dim = 4
    action_space = ActionSpace(discrete=True, n=2)
    max_episode_steps = 500

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    # Derived constants are computed exactly as gymnasium does so float64 results agree bit for bit.
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    reset_low, reset_high = -0.05, 0.05

    def initial_state(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        u = torch.rand(batch, self.state_dim, generator=generator, dtype=dtype, device=generator.device)
        return (self.reset_low + (self.reset_high - self.reset_low) * u).to(device)  # (B, 4)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        # Gymnasium hands out float32 observations; round through float32 so float64 runs see the same values.
        return state.to(torch.float32).to(state.dtype)  # (B, 4)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, x_dot, theta, theta_dot = state.unbind(-1)  # each (B,)
        force = torch.where(action == 1, self.force_mag, -self.force_mag).to(state.dtype)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        # Same operation order as gymnasium (https://coneural.org/florian/papers/05_cart_pole.pdf).
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass

        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        next_state = torch.stack((x, x_dot, theta, theta_dot), dim=-1)  # (B, 4)

        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        reward = torch.ones_like(x)  # +1 every step, the terminating one included
        return next_state, reward, terminated
