"""User-facing generation and exports (SB3 .zip, safetensors)."""

from rl_gpt.generate.export import export_safetensors, export_sb3
from rl_gpt.generate.run import generate

__all__ = ["export_safetensors", "export_sb3", "generate"]
