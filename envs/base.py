"""The small interface every batched torch environment implements.

An environment is split in two: pure tensor *dynamics* (no TensorDicts, no Python loop over the
batch) that the fast evaluator drives directly, and a torchrl ``EnvBase`` wrapper built on them for
users who want ``env.rollout(...)``. Dynamics reproduce the Gymnasium task exactly: the same state
update, reward, termination, truncation (``max_episode_steps``) and initial-state distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class ActionSpace:
    """Discrete (``n`` actions) or continuous (``low``/``high`` of length ``dim``)."""

    discrete: bool
    n: int = 0  # number of discrete actions
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def dim(self) -> int:
        return 1 if self.discrete else len(self.low)


class Dynamics(Protocol):
    """Batched, stateless dynamics of one Gymnasium task. State is a (B, S) tensor."""

    env_id: str  # the Gymnasium id it reproduces, e.g. "CartPole-v1"
    obs_dim: int
    state_dim: int
    action_space: ActionSpace
    max_episode_steps: int

    def initial_state(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """(B, S) start states drawn like Gymnasium's ``reset``."""
        ...

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, obs_dim) observations, as Gymnasium returns them."""
        ...

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next_state (B, S), reward (B,), terminated (B,) bool).

        ``action`` is (B,) int64 for discrete tasks and (B, dim) floats for continuous ones, given
        exactly as a Gymnasium agent would pass it (no clipping applied by the caller).
        """
        ...
