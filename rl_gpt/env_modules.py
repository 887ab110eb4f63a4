"""Gymnasium's ``module:EnvId``: the module that registers an environment, imported from where the user put it.

``gym.make("module:EnvId")`` imports ``module`` from anywhere on ``sys.path``, and ``python -m rl_gpt.cli``
puts the current folder there. An env id read from a dataset's or a model's files would then run any
``module.py`` that lies in the folder the user opened. :func:`import_env_module` imports the module the
same way but without the current folder (unless ``PYTHONPATH`` names it): from an installed package or a
folder the user chose. Imported once, the module is in ``sys.modules`` and ``gym.make`` does not look again.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["EnvModuleError", "import_env_module", "make_env"]


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
    except ImportError as exc:
        here = " (the current folder is not searched)" if hidden else ""
        where = f"is its folder on PYTHONPATH?{here}"
        raise EnvModuleError(f"cannot import {module!r} for {name!r} ({exc}; {where})") from None
    finally:
        added = [p for p in sys.path if p not in saved]  # what the module itself put there stays
        sys.path[:] = saved + added
    return name


def make_env(env_id: str) -> Any:
    """``gym.make`` after :func:`import_env_module`: the env factory of vector envs, so that a worker
    process started by spawn or forkserver (which imports anew) does not search the current folder either."""
    import gymnasium as gym

    import_env_module(env_id)
    return gym.make(env_id)
