"""Acrobot-v1 (gymnasium ``classic_control/acrobot.py``, ``book_or_nips="book"``), batched in torch."""

from __future__ import annotations

from math import pi

import torch

from .base import ActionSpace


def _wrap(x: torch.Tensor, m: float, M: float) -> torch.Tensor:
    """Gymnasium's ``wrap``: shift by ``M - m`` until ``m <= x <= M``.

    Gymnasium subtracts one period at a time. Two unrolled passes reproduce that bit for bit whenever a
    step moves an angle by less than two periods (|dtheta| <= 9*pi rad/s over 0.2 s is under one), and
    ``remainder`` catches anything further out without a data-dependent loop.
    """
    diff = M - m
    for _ in range(2):
        x = torch.where(x > M, x - diff, x)
    for _ in range(2):
        x = torch.where(x < m, x + diff, x)
    # Like the loops, land in (m, M] from above and in [m, M) from below.
    far = torch.where(x > M, M - torch.remainder(M - x, diff), m + torch.remainder(x - m, diff))
    return torch.where((x > M) | (x < m), far, x)


class AcrobotDynamics:
    """State ``[theta1, theta2, dtheta1, dtheta2]``; one RK4 step of dt = 0.2 s per action."""

    env_id = "Acrobot-v1"
    obs_dim = 6
    state_dim = 4
    action_space = ActionSpace(discrete=True, n=3)
    max_episode_steps = 500

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * pi
    MAX_VEL_2 = 9 * pi
    reset_low, reset_high = -0.1, 0.1

    def initial_state(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        u = torch.rand(batch, self.state_dim, generator=generator, dtype=dtype, device=generator.device)
        state = self.reset_low + (self.reset_high - self.reset_low) * u
        # Gymnasium stores the reset state as float32 (then float64 after the first step).
        return state.to(torch.float32).to(dtype).to(device)  # (B, 4)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        th1, th2, dth1, dth2 = state.unbind(-1)
        obs = torch.stack((torch.cos(th1), torch.sin(th1), torch.cos(th2), torch.sin(th2), dth1, dth2), dim=-1)
        return obs.to(torch.float32).to(state.dtype)  # (B, 6), float32 values as gymnasium returns them

    def _dsdt(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, 4) state, (B,) torque -> (B, 4) time derivative; gymnasium's expressions verbatim."""
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1, lc2 = self.LINK_COM_POS_1, self.LINK_COM_POS_2
        I1 = I2 = self.LINK_MOI
        g = 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        cos, sin = torch.cos, torch.sin
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos(theta2)) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        # "book" variant (the java implementation / Sutton & Barto), gymnasium's default
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin(theta2) - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=-1)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torque = action.to(state.dtype) - 1.0  # (B,) actions 0, 1, 2 -> -1, 0, +1
        # gymnasium's rk4 over t = [0, dt]; the torque rides along as a constant fifth state entry.
        dt = self.dt - 0
        dt2 = dt / 2.0
        k1 = self._dsdt(state, torque)
        k2 = self._dsdt(state + dt2 * k1, torque)
        k3 = self._dsdt(state + dt2 * k2, torque)
        k4 = self._dsdt(state + dt * k3, torque)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)  # (B, 4)

        th1, th2, dth1, dth2 = ns.unbind(-1)
        th1 = _wrap(th1, -pi, pi)
        th2 = _wrap(th2, -pi, pi)
        dth1 = dth1.clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        dth2 = dth2.clamp(-self.MAX_VEL_2, self.MAX_VEL_2)
        next_state = torch.stack((th1, th2, dth1, dth2), dim=-1)  # (B, 4)

        terminated = -torch.cos(th1) - torch.cos(th2 + th1) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(state.dtype)
        return next_state, reward, terminated
