"""Embeddings of the scalar conditioning: diffusion step t, metric m, prompt m' and gap m' - m.

Each scalar goes through a sinusoidal frequency embedding and a two-layer MLP, as DiT's
``TimestepEmbedder`` (Peebles & Xie 2023). The diffusion step lives in [0, 999] and uses DiT's
frequencies unchanged. Metrics arrive normalised to roughly [-1, 1], where those frequencies
(1 down to 1e-4 rad per unit) would barely move: a change of 0.01 in a normalised return would turn
the fastest feature by 0.01 rad. Metrics are therefore multiplied by ``ModelConfig.metric_frequency``
(default :data:`METRIC_FREQ_SCALE`) first, so at the default their frequencies run from 1000 down to
0.1 rad per normalised unit: the fastest resolves ~1e-3 of the range, the slowest is still
near-linear (monotone) across [-2, 2].
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["METRIC_FREQ_SCALE", "ConditionEmbedder", "ScalarEmbedder", "frequency_embedding"]

#: Frequency embedding size before the MLP (DiT's value).
FREQ_DIM = 256
#: Longest period of the frequency embedding, in input units after scaling (DiT's value).
MAX_PERIOD = 10_000.0
#: Multiplier applied to normalised metrics before the frequency embedding (see module docstring).
METRIC_FREQ_SCALE = 1000.0
#: Order of the conditioning embeddings returned by :class:`ConditionEmbedder`.
CONDITION_NAMES = ("t", "metric", "prompt", "delta")


def frequency_embedding(
    s: torch.Tensor, dim: int = FREQ_DIM, scale: float = 1.0, max_period: float = MAX_PERIOD
) -> torch.Tensor:
    """Sinusoidal features of scalars ``s`` (B,): (B, dim), frequencies scale * max_period**(-k/half)."""
    half = dim // 2
    freqs = scale * torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    args = s.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class ScalarEmbedder(nn.Module):
    """Frequency embedding of one scalar followed by Linear-SiLU-Linear to ``width``."""

    def __init__(self, width: int, scale: float = 1.0, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.scale = scale
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)  # DiT's init for the timestep MLP
            nn.init.zeros_(layer.bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        freq = frequency_embedding(s, self.freq_dim, self.scale)  # (B, F)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (B, W)


class ConditionEmbedder(nn.Module):
    """Embeds (t, m, m', m' - m) into (B, 4, W), one row per scalar in :data:`CONDITION_NAMES` order.

    Where ``cond_drop`` is True the prompt and gap embeddings are replaced by learned null
    embeddings, so the output no longer depends on the prompt (classifier-free guidance training
    and the unconditional branch at sampling time). The metric m of the starting parameters is
    kept: it describes θ, not the request.
    """

    def __init__(self, width: int, metric_scale: float = METRIC_FREQ_SCALE) -> None:
        super().__init__()
        self.t_embed = ScalarEmbedder(width)
        self.metric_embed = ScalarEmbedder(width, metric_scale)
        self.prompt_embed = ScalarEmbedder(width, metric_scale)
        self.delta_embed = ScalarEmbedder(width, metric_scale)
        self.null_prompt = nn.Parameter(torch.randn(width) * 0.02)
        self.null_delta = nn.Parameter(torch.randn(width) * 0.02)

    def forward(
        self, t: torch.Tensor, metric: torch.Tensor, prompt: torch.Tensor, cond_drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        e_t = self.t_embed(t)  # (B, W)
        e_m = self.metric_embed(metric)  # (B, W)
        e_p = self.prompt_embed(prompt)  # (B, W)
        e_d = self.delta_embed(prompt - metric)  # (B, W)
        if cond_drop is not None:
            drop = cond_drop.reshape(-1, 1).bool()  # (B, 1)
            e_p = torch.where(drop, self.null_prompt.to(e_p.dtype), e_p)  # (B, W)
            e_d = torch.where(drop, self.null_delta.to(e_d.dtype), e_d)  # (B, W)
        return torch.stack([e_t, e_m, e_p, e_d], dim=1)  # (B, 4, W)
