"""Denoiser networks over parameter vectors and their registry.

Every model maps ``(x_t, theta, t, metric, prompt, cond_drop) -> prediction``, all (B, D) or (B,)
plain tensors that are already normalised. The model never sees the noise schedule: that lives in
``rl_gpt.diffusion``.
"""

from rl_gpt.model.dit import DiT
from rl_gpt.model.embed import METRIC_FREQ_SCALE, ConditionEmbedder, ScalarEmbedder, frequency_embedding
from rl_gpt.model.mlp import ResidualMLP
from rl_gpt.model.registry import MODELS, ModelConfig, build_model
from rl_gpt.model.td import IN_KEYS, OUT_KEY, as_tensordict_module
from rl_gpt.model.tokenize import TOKENIZERS, LayerTokenizer, NeuronTokenizer, Tokenizer, make_tokenizer

__all__ = [
    "IN_KEYS",
    "METRIC_FREQ_SCALE",
    "MODELS",
    "OUT_KEY",
    "TOKENIZERS",
    "ConditionEmbedder",
    "DiT",
    "LayerTokenizer",
    "ModelConfig",
    "NeuronTokenizer",
    "ResidualMLP",
    "ScalarEmbedder",
    "Tokenizer",
    "as_tensordict_module",
    "build_model",
    "frequency_embedding",
    "make_tokenizer",
]
