"""A transformer denoiser over parameter tokens (G.pt: Peebles et al. 2022; blocks from DiT).

Both parameter vectors go through the same tokeniser encoder, as in G.pt, and a learned per-token
embedding (``type_ids``) gives layer/chunk tokens their position and neuron tokens only their group,
so a neuron-token model has no way to tell units of a group apart. ``theta_tokens`` decides how θ
meets the noised x_t:

* ``fused`` (default): token k is a linear map of [enc(x_t)_k ; enc(θ)_k], one token per unit (or
  chunk) carrying both, so each unit's update is computed next to its own start weights;
* ``separate`` (the first design, kept for old model files): the sequence is ``[θ tokens ; x_t
  tokens]`` with a learned source embedding; neuron tokens then pair θ and x_t units by content only.

Four conditioning tokens are prepended in ``tokens`` mode. The prediction is the tokeniser's decoder
applied to the x_t (or fused) token outputs.

Conditioning (t, m, m', m' - m; see :mod:`rl_gpt.model.embed`):

* ``adaln``: the summed embeddings modulate every block (DiT's adaLN-Zero);
* ``tokens``: the embeddings are four extra tokens in the sequence (G.pt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rl_gpt.layout import Layout
from rl_gpt.model.common import check_inputs
from rl_gpt.model.embed import ConditionEmbedder
from rl_gpt.model.tokenize import make_tokenizer

if TYPE_CHECKING:  # the registry imports this module to build models
    from rl_gpt.model.registry import ModelConfig

__all__ = ["DiT", "DiTBlock"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """DiT's adaLN: x (B, L, W) scaled and shifted by (B, 1, W) vectors.

    One fused ``addcmul`` instead of ``x * (1 + scale) + shift``: ~3x faster on the CPU, where this
    was 8 % of sampling time."""
    return torch.addcmul(shift, x, 1 + scale)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (no mask: parameters are a set/sequence)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads)  # (B, L, 3, H, W/H)
        # Unbound on dim 2, then each transposed: the same views as permute(2, 0, 3, 1, 4), but autograd's
        # backward is one stack instead of a stack and a permuted copy (session 42: the same numbers, faster).
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(2))  # 3 x (B, H, L, W/H)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, L, W/H)
        y = y.transpose(1, 2).reshape(batch, length, width)  # (B, L, W)
        return self.proj_drop(self.proj(y))  # (B, L, W)


class DiTBlock(nn.Module):
    """Pre-norm transformer block; with ``adaln`` its norms are modulated and its branches gated by c."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, adaln: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not adaln, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not adaln, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.mlp_drop = nn.Dropout(dropout)
        # adaLN-Zero: modulation starts at zero, so every block starts as the identity.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width)) if adaln else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x))  # (B, L, W)
            return x + self.mlp_drop(self.mlp(self.norm2(x)))  # (B, L, W)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).unsqueeze(1).chunk(6, dim=-1)  # 6 x (B, 1, W)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, L, W)
        return x + gate2 * self.mlp_drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))  # (B, L, W)


class DiT(nn.Module):
    """Transformer denoiser: (x_t, θ, t, m, m', cond_drop) -> prediction (B, D).

    With ``residual`` the output is θ + f(...), otherwise f(...); f's last layer (the tokeniser's
    decoders, and in adaln mode the final modulation) starts at zero, so an untrained model returns
    θ (or 0).
    """

    def __init__(self, config: ModelConfig, layout: Layout) -> None:
        super().__init__()
        self.config = config
        self.layout = layout
        width = config.width
        self.adaln = config.conditioning == "adaln"
        self.tokenizer = make_tokenizer(config.tokens, layout, width, config.chunk_size)
        self.type_embed = nn.Embedding(self.tokenizer.num_types, width)
        self.fused = config.theta_tokens == "fused"
        if self.fused:
            # Distinct maps for the two halves, so (θ, x_t) survives the shared linear encoder.
            self.fuse = nn.Linear(2 * width, width)
        else:
            self.source_embed = nn.Embedding(2, width)  # 0: θ tokens, 1: x_t tokens
        self.cond = ConditionEmbedder(width, config.metric_frequency)
        self.blocks = nn.ModuleList(
            DiTBlock(width, config.heads, config.mlp_ratio, config.dropout, self.adaln) for _ in range(config.depth)
        )
        self.norm_final = nn.LayerNorm(width, elementwise_affine=not self.adaln, eps=1e-6)
        self.ada_final = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width)) if self.adaln else None
        self._init_weights()

    @property
    def sequence_length(self) -> int:
        """Tokens each block sees: the parameter tokens (twice with separate θ tokens), and the four
        conditioning tokens unless they modulate (adaLN)."""
        n = self.tokenizer.num_tokens * (1 if self.fused else 2)
        return n if self.adaln else n + 4

    def _init_weights(self) -> None:
        # DiT: xavier for the transformer's linears, zero for every modulation (adaLN-Zero).
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            if block.ada is not None:
                nn.init.zeros_(block.ada[-1].weight)
                nn.init.zeros_(block.ada[-1].bias)
        if self.ada_final is not None:
            nn.init.zeros_(self.ada_final[-1].weight)
            nn.init.zeros_(self.ada_final[-1].bias)
        nn.init.normal_(self.type_embed.weight, std=0.02)
        if not self.fused:
            nn.init.normal_(self.source_embed.weight, std=0.02)

    def forward(
        self,
        x_t: torch.Tensor,
        theta: torch.Tensor,
        t: torch.Tensor,
        metric: torch.Tensor,
        prompt: torch.Tensor,
        cond_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_inputs(self.tokenizer.numel, x_t, theta, t, metric, prompt, cond_drop)
        n = self.tokenizer.num_tokens
        pos = self.type_embed(self.tokenizer.type_ids)  # (N, W)
        if self.fused:
            both = torch.cat([self.tokenizer.encode(x_t), self.tokenizer.encode(theta)], dim=-1)  # (B, N, 2W)
            h = self.fuse(both) + pos  # (B, N, W)
        else:
            theta_tok = self.tokenizer.encode(theta) + pos + self.source_embed.weight[0]  # (B, N, W)
            x_tok = self.tokenizer.encode(x_t) + pos + self.source_embed.weight[1]  # (B, N, W)
            h = torch.cat([theta_tok, x_tok], dim=1)  # (B, 2N, W)
        cond = self.cond(t, metric, prompt, cond_drop)  # (B, 4, W)
        if self.adaln:
            c = cond.sum(dim=1)  # (B, W)
        else:
            c = None
            h = torch.cat([cond, h], dim=1)  # (B, 4 + L, W)
        for block in self.blocks:
            h = block(h, c)  # (B, L, W)
        out = self.norm_final(h[:, -n:])  # (B, N, W): the x_t tokens
        if self.ada_final is not None:
            shift, scale = self.ada_final(c).unsqueeze(1).chunk(2, dim=-1)  # 2 x (B, 1, W)
            out = modulate(out, shift, scale)  # (B, N, W)
        f = self.tokenizer.decode(out)  # (B, D)
        return theta + f if self.config.residual else f  # (B, D)
