"""Training the generator: the loop, EMA, resumable checkpoints, DDP and model files.

The names below are imported on first use: they load torch (~5 s), and :mod:`rl_gpt.train.saved_config`,
which ``rl-gpt sweep --model DIR`` reads its config through, must not, so that a typo is said at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_gpt.train.generator import ParameterGenerator
    from rl_gpt.train.loop import train
    from rl_gpt.train.modelfile import ModelFileError, check_compatible, load_generator, save_model

_MODULE_OF = {
    "ParameterGenerator": "generator",
    "train": "loop",
    "ModelFileError": "modelfile",
    "check_compatible": "modelfile",
    "load_generator": "modelfile",
    "save_model": "modelfile",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # the lazy names too: completion, help(), inspect


__all__ = ["ModelFileError", "ParameterGenerator", "check_compatible", "load_generator", "save_model", "train"]
