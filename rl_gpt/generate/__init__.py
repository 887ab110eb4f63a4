"""User-facing generation and exports (SB3 .zip, safetensors)."""

from rl_gpt.generate.export import export_safetensors, export_sb3
from rl_gpt.generate.run import generate
from rl_gpt.generate.sample import GeneratedParams, generate_params

__all__ = ["GeneratedParams", "export_safetensors", "export_sb3", "generate", "generate_params"]
