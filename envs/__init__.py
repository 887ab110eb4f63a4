"""Batched pure-torch reimplementations of Gymnasium tasks (see ``envs/base.py``).

``DYNAMICS`` maps a Gymnasium id to its dynamics class; ``make_dynamics`` and ``make_env`` build
the raw dynamics (for the fast evaluator) or the torchrl env (for ``env.rollout``).
"""

from __future__ import annotations

import torch

from .acrobot import AcrobotDynamics, AcrobotEnv
from .base import ActionSpace, Dynamics
from .cartpole import CartPoleDynamics, CartPoleEnv
from .mountain_car_continuous import MountainCarContinuousDynamics, MountainCarContinuousEnv
from .pendulum import PendulumDynamics, PendulumEnv
from .torchrl_env import BatchedTorchEnv

DYNAMICS: dict[str, type] = {
    cls.env_id: cls for cls in (CartPoleDynamics, AcrobotDynamics, PendulumDynamics, MountainCarContinuousDynamics)
}


def make_dynamics(env_id: str) -> Dynamics:
    """The batched dynamics reproducing Gymnasium's ``env_id``."""
    try:
        return DYNAMICS[env_id]()
    except KeyError:
        raise KeyError(f"no torch dynamics for {env_id!r}; known ids: {sorted(DYNAMICS)}") from None


def find_dynamics(env_id: str) -> Dynamics | None:
    """The batched dynamics of ``env_id``, or None where callers fall back to Gymnasium."""
    cls = DYNAMICS.get(env_id)
    return None if cls is None else cls()


def make_env(
    env_id: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
    one_hot_actions: bool = False,
) -> BatchedTorchEnv:
    """A torchrl env running ``batch_size`` copies of ``env_id`` (see :class:`BatchedTorchEnv`)."""
    dynamics = make_dynamics(env_id)
    return BatchedTorchEnv(dynamics, batch_size, device=device, dtype=dtype, seed=seed, one_hot_actions=one_hot_actions)


__all__ = [
    "DYNAMICS",
    "AcrobotDynamics",
    "AcrobotEnv",
    "ActionSpace",
    "BatchedTorchEnv",
    "CartPoleDynamics",
    "CartPoleEnv",
    "Dynamics",
    "MountainCarContinuousDynamics",
    "MountainCarContinuousEnv",
    "PendulumDynamics",
    "PendulumEnv",
    "find_dynamics",
    "make_dynamics",
    "make_env",
]
