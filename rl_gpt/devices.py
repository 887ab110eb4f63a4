"""Turn a configured device name into a torch device, or a one-line error that says what to do."""

from __future__ import annotations

import torch

from rl_gpt.config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str, key: str) -> torch.device:
    """``name`` as a ``torch.device``; ``key`` (e.g. ``train.device``) names the setting in errors."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key}={name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        fix = f"{key} cpu" if key.startswith("--") else "device=cpu"
        raise ConfigError(f"{key}={name}: this machine has no CUDA device; pass {fix}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
