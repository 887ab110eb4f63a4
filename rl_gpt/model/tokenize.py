"""Tokenisers: flat parameter vectors (B, D) <-> token sequences (B, N, W), derived from a Layout.

Every tokeniser splits the flat vector into pieces with index tensors computed once from the
:class:`~rl_gpt.layout.Layout` (``split``), encodes pieces to width W, and decodes tokens back to
pieces that are reassembled by the inverse permutation (``merge``). The pieces partition the
vector exactly, so ``merge(split(x)) == x`` bit for bit.

* ``layer`` / ``chunk`` (:class:`LayerTokenizer`): one token per affine layer (weight and bias
  together; parameters outside any layer, such as ``log_std``, get a token each), optionally cut
  into near-equal chunks of at most ``chunk_size`` values (G.pt). Each token has its own linear
  encoder and decoder; tokens of equal size share one batched matmul (:class:`TokenLinear`).
* ``neuron`` (:class:`NeuronTokenizer`): one token per hidden unit plus tokens for the fixed
  parameters, with nothing that tells units of a group apart, so the network built on it is
  permutation-equivariant. See that class for why a unit's ``unit_index`` row is not encoded by
  a single Linear.

The decoders are the model's final layer and start at zero (DiT's zero-init), so a residual model
returns θ exactly until trained.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from rl_gpt.layout import Layout

__all__ = ["TOKENIZERS", "LayerTokenizer", "NeuronTokenizer", "TokenLinear", "Tokenizer", "make_tokenizer"]

#: Token kinds accepted by :func:`make_tokenizer`.
TOKENIZERS = ("layer", "chunk", "neuron")


def _indices(start: int, stop: int) -> torch.Tensor:
    """Flat positions start..stop-1, always on the CPU: bookkeeping that a build on the meta device (which
    checks a model file's shapes without allocating its weights) must still compute."""
    return torch.arange(start, stop, device="cpu")


def _balanced_chunks(index: torch.Tensor, chunk_size: int | None) -> list[torch.Tensor]:
    """Cut a 1-D index into ceil(n / chunk_size) contiguous chunks whose sizes differ by at most 1.

    Near-equal sizes avoid a tiny remainder token and keep at most two distinct sizes per segment,
    so most chunks share a batched matmul.
    """
    n = index.numel()
    if chunk_size is None or n <= chunk_size:
        return [index]
    pieces = math.ceil(n / chunk_size)
    return list(torch.tensor_split(index, pieces))


class TokenLinear(nn.Module):
    """``n`` independent ``Linear(k_in, k_out)`` maps applied token-wise, or one shared by all tokens.

    Independent maps run as one batched matmul over the token axis (einsum ``bnk,nkw->bnw``); this
    avoids padding tokens of different sizes and replaces a Python loop over a ModuleList.
    """

    def __init__(self, n: int, k_in: int, k_out: int, shared: bool = False, zero: bool = False) -> None:
        super().__init__()
        copies = 1 if shared else n
        self.n, self.k_in, self.k_out, self.shared = n, k_in, k_out, shared
        self.weight = nn.Parameter(torch.zeros(copies, k_in, k_out))
        self.bias = nn.Parameter(torch.zeros(copies, k_out))
        if not zero and k_in > 0:
            bound = 1.0 / math.sqrt(k_in)  # nn.Linear's default range
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared or self.n == 1:
            return x @ self.weight[0] + self.bias[0]  # (B, n, k_out)
        return torch.einsum("bnk,nkw->bnw", x, self.weight) + self.bias  # (B, n, k_out)

    def extra_repr(self) -> str:
        return f"n={self.n}, k_in={self.k_in}, k_out={self.k_out}, shared={self.shared}"


class Tokenizer(nn.Module):
    """Base class: index bookkeeping (split/merge) shared by all tokenisers.

    Subclasses register their pieces' index tensors with :meth:`_set_pieces` and implement
    ``encode`` (B, D) -> (B, N, W) and ``decode`` (B, N, W) -> (B, D). ``type_ids`` (N,) names each
    token's learned embedding in the model: a position for layer/chunk tokens, a group for neuron
    tokens (shared by all units of a group, so no unit has a position).
    """

    type_ids: torch.Tensor

    def __init__(self, layout: Layout, width: int) -> None:
        super().__init__()
        self.numel = layout.numel
        self.width = width
        self.num_tokens = 0
        self.num_types = 0
        self._num_pieces = 0

    def _set_pieces(self, indices: list[torch.Tensor]) -> None:
        flat = torch.cat([i.reshape(-1) for i in indices])
        if flat.numel() != self.numel or not torch.equal(torch.sort(flat).values, _indices(0, self.numel)):
            raise AssertionError("tokeniser pieces do not partition the flat vector")  # a bookkeeping bug
        for k, idx in enumerate(indices):
            self.register_buffer(f"_piece{k}", idx, persistent=False)
        self.register_buffer("_flat", flat, persistent=False)
        self.register_buffer("_inverse", torch.argsort(flat), persistent=False)
        self._num_pieces = len(indices)

    def piece_indices(self) -> list[torch.Tensor]:
        """The index tensors of the pieces, in the order :meth:`split` returns them."""
        return [getattr(self, f"_piece{k}") for k in range(self._num_pieces)]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, D) -> pieces ``x[:, idx]``, each (B, *idx.shape)."""
        if x.dim() != 2 or x.shape[1] != self.numel:
            raise ValueError(f"expected (B, {self.numel}) parameters, got {tuple(x.shape)}")
        # One index_select then views: cheaper than advanced indexing per piece, forward and backward.
        flat = x.index_select(1, self._flat)  # (B, D) in piece order
        sizes = [idx.numel() for idx in self.piece_indices()]
        return [p.reshape(x.shape[0], *idx.shape) for p, idx in zip(flat.split(sizes, dim=1), self.piece_indices())]

    def merge(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`: pieces -> (B, D)."""
        batch = pieces[0].shape[0]
        flat = torch.cat([p.reshape(batch, -1) for p in pieces], dim=1)  # (B, D) in piece order
        return flat.index_select(1, self._inverse)  # (B, D) in layout order

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LayerTokenizer(Tokenizer):
    """One token per layer (weight + bias), or per chunk of at most ``chunk_size`` values of a layer."""

    def __init__(self, layout: Layout, width: int, chunk_size: int | None = None) -> None:
        super().__init__(layout, width)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        tokens = [c for seg in self._segments(layout) for c in _balanced_chunks(seg, chunk_size)]
        by_size: dict[int, list[int]] = defaultdict(list)  # token size -> token positions
        for pos, tok in enumerate(tokens):
            by_size[tok.numel()].append(pos)
        self.sizes = sorted(by_size)
        indices, order = [], []
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for size in self.sizes:
            positions = by_size[size]
            indices.append(torch.stack([tokens[p] for p in positions]))  # (n_s, size)
            order.extend(positions)
            self.encoders.append(TokenLinear(len(positions), size, width))
            self.decoders.append(TokenLinear(len(positions), width, size, zero=True))
        self._set_pieces(indices)
        order_t = torch.tensor(order, device="cpu")
        # Tokens are computed grouped by size; these permutations restore layout order and back.
        self.register_buffer("_to_layout_order", torch.argsort(order_t), persistent=False)
        self.register_buffer("_to_size_order", order_t, persistent=False)
        self.register_buffer("type_ids", torch.arange(len(tokens), device="cpu"), persistent=False)
        self.num_tokens = self.num_types = len(tokens)
        self.token_sizes = [t.numel() for t in tokens]

    @staticmethod
    def _segments(layout: Layout) -> list[torch.Tensor]:
        """Flat indices of each layer (weight then bias) and of each parameter outside a layer, in layout order."""
        owner: dict[str, str] = {}
        for layer in layout.layers:
            for suffix in ("weight", "bias"):
                name = f"{layer.prefix}.{suffix}"
                if name in layout:
                    owner[name] = layer.prefix
        segments: dict[str, list[torch.Tensor]] = {}
        for p in layout.params:
            segments.setdefault(owner.get(p.name, p.name), []).append(_indices(p.offset, p.stop))
        return [torch.cat(parts) for parts in segments.values()]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pieces = self.split(x)  # [(B, n_s, s)]
        h = torch.cat([enc(p) for enc, p in zip(self.encoders, pieces)], dim=1)  # (B, N, W) by size
        return h.index_select(1, self._to_layout_order)  # (B, N, W)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        h = h.index_select(1, self._to_size_order)  # (B, N, W) by size
        counts = [dec.n for dec in self.decoders]
        pieces = [dec(part) for dec, part in zip(self.decoders, h.split(counts, dim=1))]  # [(B, n_s, s)]
        return self.merge(pieces)  # (B, D)


class NeuronTokenizer(Tokenizer):
    """One token per hidden unit, plus tokens for the fixed parameters (``Layout.fixed_index``).

    A unit's ``unit_index`` row mixes two kinds of values. Weights whose only permutable axis is the
    unit's own group (incoming weights from the network's inputs, the bias, outgoing weights to its
    outputs) are in a fixed order and go through one Linear shared by the group. Weights *between
    two hidden groups* (W2 of a 4->16->8->2 MLP) are not: unit j of the second group holds W2[j, :],
    whose entries reorder when the first group is permuted, so a Linear over the whole row would
    break equivariance. Such a matrix is treated as edges between two token sets instead:

    * encode: each side receives the message ``sum_i W[j, i] V e_i / sqrt(fan)`` from the other
      side's unit embeddings ``e_i`` (a learned forward/backward pass through the weights; it is
      injective in the row while ``fan * kernel <= width``);
    * decode: ``W[j, i] = h_j^T A h_i / sqrt(width) + b`` (a bilinear form per kernel entry).

    Both commute with permutations of either group. Fixed parameters are cut into chunks of at most
    ``chunk_size`` values, each with its own encoder and type id (they have no symmetry).
    """

    def __init__(self, layout: Layout, width: int, chunk_size: int | None = None) -> None:
        super().__init__(layout, width)
        self.groups = list(layout.groups)
        gid = {g: k for k, g in enumerate(self.groups)}
        own: dict[str, list[torch.Tensor]] = {g: [] for g in self.groups}
        edges: list[tuple[str, str, torch.Tensor]] = []  # (row group, column group, (n_a, n_b, kernel))
        fixed: list[torch.Tensor] = []
        for p in layout.params:
            idx = _indices(p.offset, p.stop).reshape(p.shape)
            if len(p.perm_axes) == 0:
                fixed.extend(_balanced_chunks(idx.reshape(-1), chunk_size))
            elif len(p.perm_axes) == 1:
                (axis, g) = p.perm_axes[0]
                own[g].append(idx.movedim(axis, 0).reshape(p.shape[axis], -1))
            elif len(p.perm_axes) == 2:
                (a, ga), (b, gb) = p.perm_axes
                edge = idx.movedim((a, b), (0, 1))
                edges.append((ga, gb, edge.reshape(edge.shape[0], edge.shape[1], -1)))
            else:
                raise ValueError(f"{p.name}: neuron tokens support at most two permutable axes, got {p.perm_axes}")

        indices: list[torch.Tensor] = []
        self.own_encoders = nn.ModuleDict()
        self.own_decoders = nn.ModuleDict()
        self.unit_counts = [layout.groups[g] for g in self.groups]
        for g in self.groups:
            n = layout.groups[g]
            own_idx = torch.cat(own[g], dim=1) if own[g] else torch.zeros(n, 0, dtype=torch.long, device="cpu")
            indices.append(own_idx)  # (n_g, k_g)
            self.own_encoders[g] = TokenLinear(n, own_idx.shape[1], width, shared=True)
            self.own_decoders[g] = TokenLinear(n, width, own_idx.shape[1], shared=True, zero=True)

        self.edges = [(gid[ga], gid[gb], e.shape[2]) for ga, gb, e in edges]
        self.edge_to_row = nn.ParameterList()  # V: column-unit embedding -> message to row units
        self.edge_to_col = nn.ParameterList()  # U: row-unit embedding -> message to column units
        self.edge_decoders = nn.ParameterList()  # A: bilinear form per kernel entry
        self.edge_biases = nn.ParameterList()
        for _, _, e in edges:
            kernel = e.shape[2]
            indices.append(e)  # (n_a, n_b, kernel)
            bound = 1.0 / math.sqrt(width)
            self.edge_to_row.append(nn.Parameter(torch.empty(width, kernel * width).uniform_(-bound, bound)))
            self.edge_to_col.append(nn.Parameter(torch.empty(width, kernel * width).uniform_(-bound, bound)))
            self.edge_decoders.append(nn.Parameter(torch.zeros(width, kernel * width)))
            self.edge_biases.append(nn.Parameter(torch.zeros(kernel)))

        by_size: dict[int, list[int]] = defaultdict(list)
        for pos, tok in enumerate(fixed):
            by_size[tok.numel()].append(pos)
        self.fixed_encoders = nn.ModuleList()
        self.fixed_decoders = nn.ModuleList()
        order: list[int] = []
        for size in sorted(by_size):
            positions = by_size[size]
            indices.append(torch.stack([fixed[p] for p in positions]))  # (n_s, size)
            order.extend(positions)
            self.fixed_encoders.append(TokenLinear(len(positions), size, width))
            self.fixed_decoders.append(TokenLinear(len(positions), width, size, zero=True))
        self._set_pieces(indices)
        order_t = torch.tensor(order, dtype=torch.long, device="cpu")
        self.register_buffer("_fixed_to_layout_order", torch.argsort(order_t), persistent=False)
        self.register_buffer("_fixed_to_size_order", order_t, persistent=False)

        n_units = sum(self.unit_counts)
        self.num_fixed = len(fixed)
        self.num_tokens = n_units + self.num_fixed
        self.num_types = len(self.groups) + self.num_fixed
        type_ids = [gid[g] for g in self.groups for _ in range(layout.groups[g])]
        type_ids += [len(self.groups) + k for k in range(self.num_fixed)]
        self.register_buffer("type_ids", torch.tensor(type_ids, dtype=torch.long, device="cpu"), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pieces = self.split(x)
        n_groups, n_edges = len(self.groups), len(self.edges)
        units = [self.own_encoders[g](p) for g, p in zip(self.groups, pieces[:n_groups])]  # [(B, n_g, W)]
        messages = [torch.zeros_like(u) for u in units]
        for k, (ga, gb, kernel) in enumerate(self.edges):
            w = pieces[n_groups + k]  # (B, n_a, n_b, kernel)
            batch, n_a, n_b = w.shape[:3]
            col = (units[gb] @ self.edge_to_row[k]).reshape(batch, n_b, kernel, self.width)  # (B, n_b, c, W)
            row = (units[ga] @ self.edge_to_col[k]).reshape(batch, n_a, kernel, self.width)  # (B, n_a, c, W)
            messages[ga] = messages[ga] + torch.einsum("bjic,bicw->bjw", w, col) / math.sqrt(n_b * kernel)
            messages[gb] = messages[gb] + torch.einsum("bjic,bjcw->biw", w, row) / math.sqrt(n_a * kernel)
        tokens = [u + m for u, m in zip(units, messages)]  # [(B, n_g, W)]
        if self.num_fixed:
            fixed = [enc(p) for enc, p in zip(self.fixed_encoders, pieces[n_groups + n_edges :])]  # [(B, n_s, W)]
            tokens.append(torch.cat(fixed, dim=1).index_select(1, self._fixed_to_layout_order))  # (B, F, W)
        return torch.cat(tokens, dim=1)  # (B, N, W)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        batch = h.shape[0]
        parts = list(h.split([*self.unit_counts, self.num_fixed], dim=1))
        units, fixed = parts[: len(self.groups)], parts[-1]  # [(B, n_g, W)], (B, F, W)
        pieces = [self.own_decoders[g](u) for g, u in zip(self.groups, units)]  # [(B, n_g, k_g)]
        for k, (ga, gb, kernel) in enumerate(self.edges):
            left = (units[ga] @ self.edge_decoders[k]).reshape(batch, -1, kernel, self.width)  # (B, n_a, c, W)
            w = torch.einsum("bjcw,biw->bjic", left, units[gb]) / math.sqrt(self.width)  # (B, n_a, n_b, c)
            pieces.append(w + self.edge_biases[k])  # (B, n_a, n_b, c)
        if self.num_fixed:
            fixed = fixed.index_select(1, self._fixed_to_size_order)  # (B, F, W) by size
            counts = [dec.n for dec in self.fixed_decoders]
            pieces += [dec(f) for dec, f in zip(self.fixed_decoders, fixed.split(counts, dim=1))]  # [(B, n_s, s)]
        return self.merge(pieces)  # (B, D)


def make_tokenizer(kind: str, layout: Layout, width: int, chunk_size: int | None = None) -> Tokenizer:
    """Build the tokeniser ``kind`` ("layer", "chunk" or "neuron") for ``layout``.

    ``chunk_size`` cuts chunk tokens (required for "chunk") and neuron-mode fixed parameters; it is
    ignored for "layer".
    """
    if kind == "layer":
        return LayerTokenizer(layout, width, None)
    if kind == "chunk":
        if chunk_size is None:
            raise ValueError("chunk tokens need a chunk_size")
        return LayerTokenizer(layout, width, chunk_size)
    if kind == "neuron":
        return NeuronTokenizer(layout, width, chunk_size)
    raise ValueError(f"unknown tokens {kind!r}: choose one of {TOKENIZERS}")
