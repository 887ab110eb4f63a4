"""A generic torchrl ``EnvBase`` over any :class:`envs.base.Dynamics`.

The env is stateful: it keeps the (B, S) dynamics state and a (B,) step counter on ``self`` and
exposes ``observation`` and ``step_count``. ``truncated`` is raised when a sub-env reaches the task's
``max_episode_steps`` (as Gymnasium's ``TimeLimit``: it may coincide with ``terminated``). Partial
resets follow torchrl's ``"_reset"`` mask, so ``step_and_maybe_reset`` and
``rollout(..., break_when_any_done=False)`` restart only the finished sub-envs.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, OneHot, Unbounded
from torchrl.envs import EnvBase

from .base import Dynamics


class BatchedTorchEnv(EnvBase):
    """torchrl env running ``batch_size`` copies of ``dynamics`` in lockstep.

    Args:
        dynamics: the task's batched dynamics.
        batch_size: number of sub-environments B.
        device: where state, specs and outputs live.
        dtype: float dtype of state, observations, rewards and continuous actions.
        seed: seed of the env's own ``torch.Generator`` (``None``: non-deterministic).
        one_hot_actions: discrete tasks only; take ``OneHot`` actions instead of ``Categorical`` indices.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = 0,
        one_hot_actions: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype such as torch.float32, got {dtype}")
        if one_hot_actions and not dynamics.action_space.discrete:
            raise ValueError(f"one_hot_actions=True needs a discrete task; {dynamics.env_id} is continuous")
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.dynamics = dynamics
        self.dtype = dtype
        self.one_hot_actions = one_hot_actions
        self._make_specs()
        self._state = torch.zeros(batch_size, dynamics.state_dim, dtype=dtype, device=self.device)  # (B, S)
        self._step_count = torch.zeros(batch_size, dtype=torch.int64, device=self.device)  # (B,)
        self._rng = torch.Generator(device=self.device)
        self.set_seed(seed)

    def _make_specs(self) -> None:
        B, dyn = self.batch_size[0], self.dynamics
        self.observation_spec = Composite(
            observation=Unbounded(shape=(B, dyn.obs_dim), dtype=self.dtype, device=self.device),
            step_count=Unbounded(shape=(B, 1), dtype=torch.int64, device=self.device),
            shape=(B,),
            device=self.device,
        )
        space = dyn.action_space
        if space.discrete and self.one_hot_actions:
            self.action_spec = OneHot(space.n, shape=(B, space.n), dtype=torch.int64, device=self.device)
        elif space.discrete:
            self.action_spec = Categorical(space.n, shape=(B,), dtype=torch.int64, device=self.device)
        else:
            low = torch.tensor(space.low, dtype=self.dtype, device=self.device).expand(B, space.dim)
            high = torch.tensor(space.high, dtype=self.dtype, device=self.device).expand(B, space.dim)
            self.action_spec = Bounded(low=low, high=high, shape=(B, space.dim), dtype=self.dtype, device=self.device)
        self.reward_spec = Unbounded(shape=(B, 1), dtype=self.dtype, device=self.device)
        flag = Categorical(2, shape=(B, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(B,), device=self.device
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(seed)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        B = self.batch_size[0]
        reset = tensordict.get("_reset", None) if tensordict is not None else None
        # Draw for the whole batch and select: no host sync on which sub-envs restart.
        fresh = self.dynamics.initial_state(B, self._rng, self.dtype, self.device)  # (B, S)
        if reset is None:
            self._state, self._step_count = fresh, torch.zeros_like(self._step_count)
        else:
            mask = reset.reshape(B)  # (B,)
            self._state = torch.where(mask[:, None], fresh, self._state)
            self._step_count = torch.where(mask, 0, self._step_count)
        not_done = torch.zeros(B, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            observation=self.dynamics.observe(self._state),
            step_count=self._step_count[:, None],
            done=not_done,
            terminated=not_done.clone(),
            truncated=not_done.clone(),
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")  # (B,) index, (B, n) one-hot, or (B, dim) floats
        if self.one_hot_actions:
            action = action.argmax(-1)
        self._state, reward, terminated = self.dynamics.step(self._state, action)
        self._step_count = self._step_count + 1
        truncated = self._step_count >= self.dynamics.max_episode_steps  # (B,)
        return TensorDict(
            observation=self.dynamics.observe(self._state),
            step_count=self._step_count[:, None],
            reward=reward.to(self.dtype)[:, None],
            done=(terminated | truncated)[:, None],
            terminated=terminated[:, None],
            truncated=truncated[:, None],
            batch_size=self.batch_size,
            device=self.device,
        )


def make_env(
    env_id: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
    one_hot_actions: bool = False,
) -> BatchedTorchEnv:
    """A torchrl env running ``batch_size`` copies of ``env_id`` (see :class:`BatchedTorchEnv`)."""
    from . import make_dynamics

    dynamics = make_dynamics(env_id)
    return BatchedTorchEnv(dynamics, batch_size, device=device, dtype=dtype, seed=seed, one_hot_actions=one_hot_actions)
