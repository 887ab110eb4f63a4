"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any denoiser.

Convention: ``out = uncond + scale · (cond - uncond)``; scale 0 is the unconditional model, 1 the
conditional model, > 1 extrapolates away from the unconditional prediction (sharper, less diverse).

The combination is applied to the model's raw output. That is the same as combining in eps space
(the usual statement) or in x0 space, for any of the x0/eps/v parameterisations: at fixed (x_t, t)
each is an affine function of the others, and an affine combination (weights 1 - scale and scale
sum to 1) commutes with affine maps.
"""

from __future__ import annotations

from typing import Any

import torch

from .gaussian import ModelFn

__all__ = ["guided"]


def guided(model_fn: ModelFn, scale: float, drop_kwarg: str = "cond_drop") -> ModelFn:
    """A model_fn returning ``uncond + scale·(cond - uncond)``, both halves from one batched call.

    The unconditional half passes ``drop_kwarg`` (default ``cond_drop``), a bool (B,) mask, set to
    True: the model must then ignore its prompt (zero or learned null embedding). In the conditional
    half the mask is the caller's ``cond_drop`` if given, else all False. Tensor kwargs whose first
    dimension is B are treated as per-example and concatenated along the batch; others pass as is.
    Scales 0 and 1 call the model once, on B examples.
    """

    def fn(x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        b = x_t.shape[0]
        cond_mask = model_kwargs.pop(drop_kwarg, None)
        if cond_mask is None:
            cond_mask = torch.zeros(b, dtype=torch.bool, device=x_t.device)
        if scale == 1.0:  # purely conditional: skip the wasted half
            return model_fn(x_t, t, **{drop_kwarg: cond_mask}, **model_kwargs)
        uncond_mask = torch.ones(b, dtype=torch.bool, device=x_t.device)
        if scale == 0.0:
            return model_fn(x_t, t, **{drop_kwarg: uncond_mask}, **model_kwargs)

        def both(v: Any) -> Any:
            return torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == b else v

        kwargs = {k: both(v) for k, v in model_kwargs.items()}
        kwargs[drop_kwarg] = torch.cat([cond_mask.to(torch.bool), uncond_mask])  # (2B,)
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs)  # (2B, ...)
        cond, uncond = out[:b], out[b:]
        return uncond + scale * (cond - uncond)

    return fn
