"""Turn a configured device name into a torch device, or a one-line error that says what to do."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from rl_gpt.config import ConfigError

__all__ = ["device_name", "machine_record", "resolve_device"]


def device_name(name: str, key: str) -> torch.device:
    """``name`` as a ``torch.device``, whether or not this machine has one; ``key`` names the setting in errors."""
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        # Python's None, where YAML's is null: `sweep.device=None` is the text 'None'
        null = "; null (not None) leaves it unset" if key == "sweep.device" and name.lower() == "none" else ""
        raise ConfigError(f"{key}={name!r} is not a device; use cpu, cuda or cuda:N{null}") from None


def resolve_device(name: str, key: str) -> torch.device:
    """``name`` as a ``torch.device``; ``key`` (e.g. ``train.device``) names the setting in errors."""
    device = device_name(name, key)
    if device.type == "cuda" and not torch.cuda.is_available():
        fix = f"{key} cpu" if key.startswith("--") else "device=cpu"
        raise ConfigError(f"{key}={name}: this machine has no CUDA device; pass {fix}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def machine_record(device: torch.device) -> dict[str, Any]:
    """What computed a result, beyond its code and seed: the same training gives other weights on another CPU
    (its math kernels round otherwise; the CartPole demo's R² moved in the third decimal between VMs), so
    models and reports record it."""
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to: AVX2, AVX512
        "cpu": _cpu_name(),
    }
    if device.type == "cuda":
        record["cuda"] = torch.cuda.get_device_name(device)
    return record


def _cpu_name() -> str:
    """The CPU's model name, with its family and model numbers where Linux says them (a VM's name may be
    just "AMD EPYC", for processors of several generations)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{name} (family {family}, model {model})" if family and model else name
