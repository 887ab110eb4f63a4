"""Gymnasium's ``module:EnvId``: the module that registers an environment, imported from where the user put it.

``gym.make("module:EnvId")`` imports ``module`` from anywhere on ``sys.path``, and ``python -m rl_gpt.cli``
puts the current folder there. An env id read from a dataset's or a model's files would then run any
``module.py`` that lies in the folder the user opened. :func:`import_env_module` imports the module the
same way but without the current folder (unless ``PYTHONPATH`` names it): from an installed package or a
folder the user chose. Imported once, the module is in ``sys.modules`` and ``gym.make`` does not look again.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["EnvModuleError", "FiniteCheck", "check_env", "import_env_module", "make_env"]


class EnvModuleError(ValueError):
    """The module an env id names cannot be imported from an installed package or ``PYTHONPATH``."""


def _current_folder_entries() -> list[str]:
    """``sys.path`` entries that stand for the current folder and that ``PYTHONPATH`` does not name."""
    chosen = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    here = os.getcwd()
    return [p for p in sys.path if os.path.abspath(p or ".") == here and os.path.abspath(p or ".") not in chosen]


def import_env_module(env_id: str) -> str:
    """Import the module of a ``module:EnvId`` id (nothing for a plain id); returns the id without it."""
    module, sep, name = env_id.partition(":")
    if not sep:
        return env_id
    if module in sys.modules:
        return name
    hidden = _current_folder_entries()
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in hidden]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise EnvModuleError(_not_found(module, name, exc)) from None
    except Exception as exc:  # the module's own code failed: one line, not its traceback
        raise EnvModuleError(f"importing {module!r} (for {name!r}) failed: {type(exc).__name__}: {exc}") from None
    finally:
        added = [p for p in sys.path if p not in saved]  # what the module itself put there stays
        sys.path[:] = saved + added
    return name


def _not_found(module: str, name: str, exc: ModuleNotFoundError) -> str:
    """Which module is missing: the user's own (a folder to name) or one it imports (a package to install)."""
    missing = exc.name or ""
    if missing and not (module == missing or module.startswith(missing + ".")):
        return f"{module!r} (for {name!r}) imports {missing!r}, which is not installed: install it ({exc})"
    return (
        f"cannot import {module!r} for {name!r}: module not found; run with its folder on PYTHONPATH "
        "(PYTHONPATH=. for the current folder, which is not searched otherwise)"
    )


def make_env(env_id: str) -> Any:
    """``gym.make`` after :func:`import_env_module`: the env factory of vector envs, so that a worker
    process started by spawn or forkserver (which imports anew) does not search the current folder either."""
    import_env_module(env_id)
    return gym.make(env_id)


def check_env(env_id: str) -> str:
    """Refuse, in one line, an env id that rl_gpt cannot collect or evaluate; returns the registered id.

    Every command that steps an env calls this (collect, evaluate, calibrate, sweep rollouts): the module
    of a ``module:EnvId`` imports (:func:`import_env_module`), the id is registered, its episodes end
    (rollouts run until every episode has), observations are a flat Box and actions Discrete or a 1-D
    Box with finite bounds (what the stored actor's layout and the batched evaluator read).
    """
    name = import_env_module(env_id)
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; is it registered (gymnasium.register) on import?"
        raise EnvModuleError(f"unknown Gymnasium environment {name!r}{hint}")
    _check_made(name)
    return name


@functools.cache
def _check_made(name: str) -> None:  # cached: making a MuJoCo env takes ~50 ms, and rollouts call this per batch
    try:
        env = gym.make(name)
    except gym.error.DependencyNotInstalled as exc:  # Box2D, Atari, ...: an extra of gymnasium's
        raise EnvModuleError(f"{name}: {exc}") from None
    try:
        obs, act = env.observation_space, env.action_space
        if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
            raise EnvModuleError(
                f"{name} observes {obs}; rl_gpt's policies read a flat Box: register it wrapped in "
                "gymnasium.wrappers.FlattenObservation"
            )
        if isinstance(act, gym.spaces.Box):
            if len(act.shape) != 1:
                raise EnvModuleError(f"{name} acts in {act}; rl_gpt's policies act in a 1-D Box: flatten its actions")
            if not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
                raise EnvModuleError(
                    f"{name} acts in {act}, whose bounds are infinite; rl_gpt's policies (SAC's squashing, PPO's "
                    "clipping) need finite bounds: register it with finite low and high"
                )
        elif not isinstance(act, gym.spaces.Discrete):
            raise EnvModuleError(f"{name} acts in {act}; rl_gpt's policies act in Discrete or Box spaces")
        limited, inner = False, env
        while isinstance(inner, gym.Wrapper):
            limited = limited or isinstance(inner, gym.wrappers.TimeLimit)
            inner = inner.env
        if not limited:  # an episode that never ends would hang collection's and every evaluation's rollouts
            raise EnvModuleError(
                f"{name} has no time limit: register it with max_episode_steps (gymnasium.register({name!r}, "
                "entry_point=..., max_episode_steps=N)), or return it wrapped in gymnasium.wrappers.TimeLimit"
            )
    finally:
        env.close()


def _finite(value: Any) -> bool:
    """Whether an observation or reward holds only finite numbers: for an array its sum first (one C call),
    the elements only when the sum is not finite (finite values can overflow it)."""
    if isinstance(value, np.ndarray):
        return math.isfinite(value.sum(dtype=np.float64)) or bool(np.isfinite(value).all())
    try:
        return math.isfinite(value)  # a reward: 0.1 us
    except TypeError:  # a list or another array-like
        return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


class FiniteCheck(gym.Wrapper):
    """Stops at an env's first NaN or infinite observation or reward with one line: SB3 would train on it
    silently (or fail deep in its networks) and the dataset would hold NaN policies. A few us a step."""

    def __init__(self, env: gym.Env, env_id: str) -> None:
        super().__init__(env)
        self._env_id, self._steps = env_id, 0

    def _check(self, obs: Any, reward: Any, where: str) -> None:
        for what, value in (("observation", obs), ("reward", reward)):
            if not _finite(value):
                raise EnvModuleError(
                    f"{self._env_id} returned a non-finite {what} ({value!r:.60}) {where}; collection stopped: "
                    "fix the env (or clip its outputs) and collect again"
                )

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        self._steps = 0
        if not _finite(obs):
            self._check(obs, 0.0, "on reset")
        return obs, info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        if not (_finite(reward) and _finite(obs)):
            self._check(obs, reward, f"at step {self._steps} of an episode")
        return obs, reward, terminated, truncated, info
