"""TensorDict adapter: the model reads and writes named entries instead of positional tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from tensordict.nn import TensorDictModule

__all__ = ["IN_KEYS", "OUT_KEY", "as_tensordict_module"]

#: Entries the model reads, in its forward's argument order; "cond_drop" may be absent (no dropout).
IN_KEYS = ("x_t", "theta", "t", "metric", "prompt", "cond_drop")
#: Entry the model writes.
OUT_KEY = "prediction"


def as_tensordict_module(model: nn.Module) -> TensorDictModule:
    """Wrap a denoiser so ``module(td)`` reads :data:`IN_KEYS` and writes ``td["prediction"]`` (B, D)."""
    from tensordict.nn import TensorDictModule  # imported here: tensordict.nn adds ~1.5 s to `import rl_gpt.model`

    # strict=False (the default) passes None for a missing "cond_drop", which the models accept.
    return TensorDictModule(model, in_keys=list(IN_KEYS), out_keys=[OUT_KEY])
