"""Named model sizes and the one function that builds a network from a name or config.

A model file stores ``config.to_dict()`` and the layout, so ``build_model(ModelConfig.from_dict(d),
layout)`` rebuilds the same network before loading its weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from torch import nn

from rl_gpt.layout import Layout
from rl_gpt.model.embed import METRIC_FREQ_SCALE
from rl_gpt.model.tokenize import TOKENIZERS

__all__ = ["MODELS", "ModelConfig", "build_model"]

KINDS = ("dit", "mlp")
CONDITIONINGS = ("adaln", "tokens")
THETA_TOKENS = ("fused", "separate")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a denoiser; the defaults are the ``small`` transformer."""

    kind: str = "dit"  # "dit": transformer over parameter tokens; "mlp": residual MLP on the flat vector
    width: int = 256  # token width (dit) or hidden width (mlp)
    depth: int = 6  # transformer blocks (dit) or residual blocks (mlp)
    heads: int = 4  # attention heads (dit only); must divide width
    tokens: str = "chunk"  # tokeniser (dit only): "layer", "chunk" or "neuron" (permutation-equivariant)
    chunk_size: int = 64  # most values per chunk token; also cuts neuron-mode fixed parameters
    conditioning: str = "adaln"  # (dit only) "adaln": adaLN-Zero modulation; "tokens": embeddings as tokens
    residual: bool = True  # predict θ + f (untrained model = identity) instead of f
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as a multiple of width
    dropout: float = 0.0  # dropout in attention and MLPs
    # (dit only) "fused": one token per unit/chunk carrying both θ and x_t; "separate": θ and x_t as
    # two token sets (the first design). Neuron tokens have no position among a layer's units, so in
    # "separate" mode unit j's θ token and x_t token can only find each other by content, which noise
    # destroys; "fused" keeps them together and halves the sequence.
    theta_tokens: str = "fused"
    # Multiplier of the normalised metrics m, m' and m' - m before their frequency embedding: its
    # fastest feature turns by this many radians per normalised unit (see rl_gpt/model/embed.py).
    metric_frequency: float = METRIC_FREQ_SCALE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: choose one of {KINDS}")
        if self.tokens not in TOKENIZERS:
            raise ValueError(f"tokens={self.tokens!r}: choose one of {TOKENIZERS}")
        if self.theta_tokens not in THETA_TOKENS:
            raise ValueError(f"theta_tokens={self.theta_tokens!r}: choose one of {THETA_TOKENS}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}: choose one of {CONDITIONINGS}")
        if self.width < 1 or self.depth < 0 or self.chunk_size < 1 or self.mlp_ratio <= 0:
            raise ValueError(f"width, chunk_size and mlp_ratio must be positive and depth >= 0: {self}")
        if self.kind == "dit" and self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not (math.isfinite(self.metric_frequency) and self.metric_frequency > 0):
            raise ValueError(f"metric_frequency must be positive, got {self.metric_frequency}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are refused rather than silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; known: {sorted(known)}")
        # Files written before ``theta_tokens`` existed used separate θ tokens.
        return cls(**{"theta_tokens": "separate", **data})


#: Named sizes; the CLI offers these names. Override single fields through ``build_model(..., **overrides)``.
MODELS: dict[str, ModelConfig] = {
    # The baseline that worked on a 114-parameter CartPole policy (W=512, 3 blocks).
    "mlp": ModelConfig(kind="mlp", width=512, depth=3, mlp_ratio=1.0),
    # The default: one token per hidden unit (permutation-equivariant by construction). On the CartPole
    # demo it beat the 4.9M-parameter MLP at equal CPU time (R2 0.63 vs 0.38), and depth 4 beat depth
    # 2 at equal steps (R2 0.76 vs 0.70 on 48 unseen inits; docs/results.md).
    # Metric frequency 30 instead of 1000: with the fast features the achieved return jumped by up to
    # ~150 between prompts 5 apart; at 30 it follows the prompt smoothly, at the same R2, and then
    # a calibration helps (docs/results.md, session 17).
    "neuron": ModelConfig(width=64, depth=4, heads=2, tokens="neuron", mlp_ratio=2.0, metric_frequency=30.0),
    "tiny": ModelConfig(width=32, depth=2, heads=2, tokens="layer", mlp_ratio=2.0),  # for tests
    "small": ModelConfig(width=256, depth=6, heads=4, tokens="chunk", chunk_size=64),
    "base": ModelConfig(width=512, depth=12, heads=8, tokens="chunk", chunk_size=64),
}


def build_model(name_or_config: str | ModelConfig, layout: Layout, **overrides: Any) -> nn.Module:
    """Build the denoiser named in :data:`MODELS` (or given as a config) for ``layout``.

    ``overrides`` replace single config fields, e.g. ``build_model("small", layout, tokens="neuron")``.
    The returned module carries ``.config`` (the resolved :class:`ModelConfig`) and ``.layout``.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in MODELS:
            raise KeyError(f"unknown model {name_or_config!r}; named models: {sorted(MODELS)}")
        config = MODELS[name_or_config]
    else:
        config = name_or_config
    config = replace(config, **overrides)
    # Imported here: dit and mlp refer back to ModelConfig for their type hints.
    from rl_gpt.model.dit import DiT
    from rl_gpt.model.mlp import ResidualMLP

    return DiT(config, layout) if config.kind == "dit" else ResidualMLP(config, layout)
