"""Batched pure-torch reimplementations of Gymnasium tasks (see ``envs/base.py``).

``DYNAMICS`` maps a Gymnasium id to its dynamics class; ``make_dynamics`` and ``make_env`` build
the raw dynamics (for the fast evaluator) or the torchrl env (for ``env.rollout``). The torchrl
pieces (``BatchedTorchEnv``, ``make_env``) are imported on first use: importing torchrl costs every
command about 2 s, and only users of the torchrl env need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .acrobot import AcrobotDynamics
from .base import ActionSpace, Dynamics
from .cartpole import CartPoleDynamics
from .mountain_car_continuous import MountainCarContinuousDynamics
from .pendulum import PendulumDynamics

if TYPE_CHECKING:
    from .torchrl_env import BatchedTorchEnv, make_env

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


def __getattr__(name: str) -> Any:
    if name in ("BatchedTorchEnv", "make_env"):
        from . import torchrl_env

        return getattr(torchrl_env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DYNAMICS",
    "AcrobotDynamics",
    "ActionSpace",
    "BatchedTorchEnv",
    "CartPoleDynamics",
    "Dynamics",
    "MountainCarContinuousDynamics",
    "PendulumDynamics",
    "find_dynamics",
    "make_dynamics",
    "make_env",
]
