"""Are generated networks new, or copies of training checkpoints?

Hidden units can be permuted without changing a network's function, so two parameter vectors are
compared only after permuting one's hidden units to best match the other (the layout says which
axes those are). With one hidden group the best permutation is a linear assignment problem and
Hungarian matching solves it exactly. With several groups (deeper MLPs) the joint problem is NP-hard;
we use weight matching in the spirit of Git Re-Basin (Ainsworth et al. 2022, arXiv:2209.04836):
coordinate descent over groups, each step an exact linear assignment with the other groups' fixed,
until a full sweep changes nothing. That is a local optimum, so with several groups an "aligned
distance" is an upper bound on the true minimum over permutations. Hidden groups are assumed to be
permuted one axis at a time (a feed-forward chain); a tensor indexed twice by the same group (a
recurrent hidden-to-hidden matrix) is not supported.

ReLU networks have a second symmetry: a unit's incoming weights and bias scaled by c > 0 and its
outgoing weights by 1/c compute the same function. :func:`canonical_scale` puts every such unit at
incoming norm 1 before networks are compared (a copy rescaled by factors in [1/3, 3] had scored
novelty 1.19 in session 35's audit, above the digits generator).

Metrics built on it:

* :func:`novelty_ratio`: mean aligned nearest-neighbour distance of generated policies to the
  training pool, over the same for held-out runs' final checkpoints (1.0 = as far from the training
  data as an independent training run is; ~0 = copies).
* :func:`init_fidelity`: does a generated policy stay near the init it was prompted with (distance to
  its own init over the mean distance to other inits; < 1 = yes, ~1 = it ignores its init)?
* :func:`behavioural_novelty`: share of states where two policies act differently (the test is
  :func:`actions_differ`; :mod:`rl_gpt.sweep.behaviour` applies it on the policies' own rollouts).

Every function takes flat vectors laid out by a :class:`~rl_gpt.layout.Layout`; nothing depends on
the evaluator or the generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from rl_gpt.layout import Layout
from rl_gpt.threads import torch_threads

__all__ = [
    "actions_differ",
    "align",
    "aligned_distance",
    "behavioural_novelty",
    "canonical_scale",
    "init_fidelity",
    "match_units",
    "nearest_aligned",
    "novelty_ratio",
    "proxy_features",
]

# Coordinate descent stops after a sweep that changes nothing; this only bounds pathological ties.
_MAX_SWEEPS = 20
# Pairs aligned per numpy batch: about this many floats per (pairs, D) array.
_CHUNK_FLOATS = 1 << 22
_BLOCK_FLOATS_MOST = 1 << 25  # the most (query, pool) distances one block of the proxy search holds


# ---------------------------------------------------------------------------------- helpers
def _as_np(x: torch.Tensor | np.ndarray, layout: Layout, name: str, ndim: int) -> np.ndarray:
    """float32 numpy copy of ``x``, checked to be (D,) or (B, D) for ``layout``."""
    t = torch.as_tensor(x).detach().cpu()
    if t.dim() != ndim or t.shape[-1] != layout.numel:
        want = "(D,)" if ndim == 1 else "(B, D)"
        raise ValueError(f"{name}: expected {want} with D={layout.numel} (the layout's size), got {tuple(t.shape)}")
    return t.to(torch.float32).numpy()


class _Units:
    """Numpy index tables for a layout's hidden groups, built once per call."""

    def __init__(self, layout: Layout) -> None:
        for p in layout.params:
            groups = [g for _, g in p.perm_axes]
            if len(set(groups)) != len(groups):
                raise ValueError(
                    f"{p.name} is indexed twice by one hidden group; alignment supports feed-forward chains"
                )
        self.layout = layout
        self.D = layout.numel
        self.rows = {g: layout.unit_index(g).numpy() for g in layout.groups}  # {g: (n_g, k_g)}

    def gather_index(self, perms: dict[str, np.ndarray], batch: int, skip: str | None = None) -> np.ndarray:
        """(B, D) index such that ``x[b, idx[b]]`` applies ``perms`` (all groups but ``skip``).

        Same convention as :meth:`Layout.permute`: unit ``i`` of the result is unit ``perms[g][b, i]``.
        Groups act on different axes, so their gathers compose in any order.
        """
        idx = np.broadcast_to(np.arange(self.D), (batch, self.D)).copy()
        for g, rows in self.rows.items():
            if g == skip:
                continue
            step = np.broadcast_to(np.arange(self.D), (batch, self.D)).copy()
            step[:, rows] = rows[perms[g]]  # (B, n, k): unit i's slots read unit perm[i]'s
            idx = np.take_along_axis(idx, step, 1)
        return idx


def _unit_features(layout: Layout, x: np.ndarray, group: str) -> np.ndarray:
    """(B, n, k) per-unit rows of ``group`` that no *other* group's permutation changes.

    Each tensor touching ``group`` is sorted along its other hidden axes (a unit's incoming weights
    from a hidden layer become their sorted values) and scaled by 1/sqrt(#hidden axes), so an entry
    shared by two groups counts once in total when the groups' features are concatenated.
    """
    b = x.shape[0]
    parts = []
    for p in layout.params:
        if all(g != group for _, g in p.perm_axes):
            continue
        t = x[:, p.offset : p.stop].reshape(b, *p.shape) / float(np.sqrt(len(p.perm_axes)))  # float: keep float32
        own = next(a for a, g in p.perm_axes if g == group)
        for axis, g in p.perm_axes:
            if g != group:
                t = np.sort(t, axis=axis + 1)
        parts.append(np.moveaxis(t, own + 1, 1).reshape(b, layout.groups[group], -1))
    return np.concatenate(parts, axis=2)


def proxy_features(layout: Layout, flat: torch.Tensor) -> torch.Tensor:
    """Permutation-invariant features (B, F) whose L2 distance lower-bounds the aligned distance.

    Per hidden group: the unit rows of :func:`_unit_features` (already invariant to the other
    groups), each column sorted over the units; then the parameters that belong to no unit
    (output bias, ``log_std``). Sorting is non-expansive and permutation-invariant, and shared
    entries are scaled to count once, so ``‖proxy(a) − proxy(b)‖ ≤ min_perm ‖a − perm(b)‖`` for the
    *global* optimum. Richer than sorted unit-row norms at the same O(D log n) cost: two different
    networks rarely tie.
    """
    x = _as_np(flat, layout, "flat", 2)
    b = x.shape[0]
    parts = [np.sort(_unit_features(layout, x, g), axis=1).reshape(b, -1) for g in layout.groups]
    parts.append(x[:, layout.fixed_index().numpy()])
    return torch.from_numpy(np.concatenate(parts, axis=1))


# ---------------------------------------------------------------------------------- unit scales
#: Activations with f(c·x) = c·f(x) for c > 0: scaling a unit's incoming weights and bias by c and its
#: outgoing weights by 1/c keeps the network's function, as permuting units does.
POSITIVELY_HOMOGENEOUS = frozenset({"relu", "leaky_relu"})


def canonical_scale(layout: Layout, flat: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``flat`` (B, D) with each hidden unit after a positively homogeneous activation rescaled to
    incoming weights and bias of norm 1, its outgoing weights scaled to match: the same functions, one
    representative of each family of rescaled copies, so that distances see through the rescaling.

    Layers are taken in order, so a unit's incoming norm is measured after the rescaling of the layer
    below. Units of other activations (tanh) are left as they are; a unit whose incoming weights are
    all zero keeps its scale. ``in_place``: rescale a float32 ``flat`` itself (a fresh copy the caller
    owns: the novelty pool is up to ~1 GB) instead of a copy.
    """
    x = torch.as_tensor(flat).detach()
    x = x if in_place and x.dtype == torch.float32 else x.float().clone()
    if x.dim() != 2 or x.shape[1] != layout.numel:
        raise ValueError(f"canonical_scale: expected (B, {layout.numel}), got {tuple(x.shape)}")
    if not len(x):
        return x
    spec = {p.name: p for p in layout.params}
    b = len(x)

    def view(name: str) -> torch.Tensor:  # a view into x: writing it writes x
        p = spec[name]
        return x[:, p.offset : p.stop].view(b, *p.shape)

    for layer in layout.layers:
        group = layer.out_group
        if group is None or (layer.activation or "").lower() not in POSITIVELY_HOMOGENEOUS:
            continue
        incoming = [view(n) for n in (f"{layer.prefix}.weight", f"{layer.prefix}.bias") if n in spec]
        norm = sum(t.reshape(b, t.shape[1], -1).pow(2).sum(2) for t in incoming).sqrt()  # (B, units)
        scale = torch.where(norm > 0, norm, torch.ones_like(norm))
        for t in incoming:
            t /= scale.view(b, -1, *[1] * (t.dim() - 2))
        for reader in layout.layers:
            if reader.in_group == group:  # its weight's axis 1 reads the units
                w = view(f"{reader.prefix}.weight")
                w *= scale.view(b, 1, -1, *[1] * (w.dim() - 3))
    return x


# ---------------------------------------------------------------------------------- alignment
def _neg_inner(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, n, n) cost −⟨a_i, b_j⟩ of unit rows a, b (P, n, k); torch: numpy's stacked matmul is ~50× slower."""
    return torch.bmm(torch.from_numpy(a), torch.from_numpy(b).transpose(1, 2)).neg_().numpy()


def _lsa(cost: np.ndarray) -> np.ndarray:
    """(P, n) minimum-cost assignments of (P, n, n) cost matrices: slot i takes column out[p, i]."""
    return np.stack([linear_sum_assignment(c)[1] for c in cost])


def _descend(
    units: _Units, refs: np.ndarray, cur: np.ndarray, perms: dict[str, np.ndarray], sweeps: int = _MAX_SWEEPS
) -> None:
    """Coordinate descent over groups (Git Re-Basin weight matching), in place, until no change.

    ``cur`` (P, D) is ``other`` with ``perms`` applied. Each step re-permutes one group's unit rows of
    ``cur`` with the others fixed: min_σ Σ_i ‖ref_i − cur_σ(i)‖² = max_σ Σ_i ⟨ref_i, cur_σ(i)⟩, an
    exact linear assignment, so the distance never increases.
    """
    ref_rows = {g: refs[:, u] for g, u in units.rows.items()}  # {g: (P, n, k)}
    active = np.ones(len(refs), dtype=bool)
    for _ in range(sweeps):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        changed = np.zeros(rows.size, dtype=bool)
        for g, u in units.rows.items():
            cur_rows = cur[rows][:, u]  # (p, n, k)
            sigma = _lsa(_neg_inner(ref_rows[g][rows], cur_rows))  # (p, n)
            cur[rows[:, None, None], u[None]] = np.take_along_axis(cur_rows, sigma[:, :, None], 1)
            perms[g][rows] = np.take_along_axis(perms[g][rows], sigma, 1)  # compose: π ∘ σ
            changed |= (sigma != np.arange(u.shape[0])).any(1)
        active[rows] = changed


def _sq_dist(refs: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """(P,) squared distances, accumulated in float64."""
    diff = refs.astype(np.float64) - cur
    return np.einsum("pd,pd->p", diff, diff)


@torch_threads(1)
def _match_pairs(units: _Units, refs: np.ndarray, others: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Permutations ``{g: (P, n)}`` aligning ``others`` (P, D) to ``refs`` (P, D), and the distances (P,)."""
    layout, p = units.layout, len(refs)
    perms = {g: np.broadcast_to(np.arange(n), (p, n)).copy() for g, n in layout.groups.items()}
    cur = others.copy()
    if len(layout.groups) <= 1:  # exact in one step: the cost does not depend on any other permutation
        _descend(units, refs, cur, perms, sweeps=1)
        return perms, np.sqrt(_sq_dist(refs, cur))
    # Two starts, keep the better: identity (so the result is never worse than no alignment) and a
    # matching of the groups' mutually invariant unit features (exact for a permuted copy).
    start = {
        g: _lsa(_neg_inner(_unit_features(layout, refs, g), _unit_features(layout, others, g))) for g in layout.groups
    }
    cur_start = np.take_along_axis(others, units.gather_index(start, p), 1)
    best_d = None
    for pm, cu in ((perms, cur), (start, cur_start)):
        _descend(units, refs, cu, pm)
        d = _sq_dist(refs, cu)
        if best_d is None:
            best_d = d
            continue
        better = d < best_d
        for g in layout.groups:
            perms[g][better] = pm[g][better]
        best_d = np.where(better, d, best_d)
    return perms, np.sqrt(best_d)


def _pair_distances(layout: Layout, refs: np.ndarray, others: np.ndarray, ri: np.ndarray, oi: np.ndarray) -> np.ndarray:
    """Aligned distances (P,) of pairs ``(refs[ri[p]], others[oi[p]])``, gathered chunk by chunk to bound memory."""
    units = _Units(layout)
    step = max(1, _CHUNK_FLOATS // max(layout.numel, 1))
    out = [_match_pairs(units, refs[ri[i : i + step]], others[oi[i : i + step]])[1] for i in range(0, len(ri), step)]
    return np.concatenate(out) if out else np.zeros(0)


def match_units(layout: Layout, ref: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{group: (units,)}`` permutations of ``other``'s hidden units that best match ``ref`` (D,).

    Exact (Hungarian) for one hidden group; a local optimum of coordinate descent for several.
    """
    r, o = _as_np(ref, layout, "ref", 1)[None], _as_np(other, layout, "other", 1)[None]
    perms, _ = _match_pairs(_Units(layout), r, o)
    return {g: torch.from_numpy(p[0]) for g, p in perms.items()}


def align(layout: Layout, ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``other`` (D,) with its hidden units permuted to minimise ‖ref − other‖ (see :func:`match_units`)."""
    perms = match_units(layout, ref, other)
    other = torch.as_tensor(other)
    return layout.permute(other[None], {g: p[None] for g, p in perms.items()})[0]


def aligned_distance(layout: Layout, a: torch.Tensor, b: torch.Tensor) -> float:
    """L2 distance between ``a`` and ``b`` (D,) after aligning ``b``'s hidden units to ``a``'s."""
    r, o = _as_np(a, layout, "a", 1)[None], _as_np(b, layout, "b", 1)[None]
    return float(_match_pairs(_Units(layout), r, o)[1][0])


# ---------------------------------------------------------------------------------- nearest neighbours
def nearest_aligned(
    layout: Layout,
    queries: torch.Tensor,
    pool: torch.Tensor,
    candidates: int = 16,
    pool_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned nearest neighbour in ``pool`` (N, D) of each query (Q, D): ``(dist (Q,), index (Q,))``.

    Preselects the ``candidates`` pool rows nearest in :func:`proxy_features` space, aligns each and
    keeps the closest. The proxy distance lower-bounds the aligned one, so a true neighbour is missed
    only if its proxy distance ranks below ``candidates`` others; raise ``candidates`` to be safer.
    ``pool_features``: the pool's :func:`proxy_features`, where a caller searches one pool several times
    (computing them is most of a large pool's cost).
    """
    q, x = _as_np(queries, layout, "queries", 2), _as_np(pool, layout, "pool", 2)
    if len(x) == 0:
        raise ValueError("nearest_aligned: the pool is empty")
    c = max(1, min(candidates, len(x)))
    # --- proxy preselection: (Q, N) distances in blocks of queries, keep the c smallest
    fq = proxy_features(layout, torch.from_numpy(q))
    fx = proxy_features(layout, torch.from_numpy(x)) if pool_features is None else pool_features
    fx_sq = fx.pow(2).sum(1)  # (N,)
    # Blocks of ~4M distances, or of up to 128 queries where the pool is large (at most ~32M distances,
    # 128 MB): a pool of 300,000 would otherwise be streamed once per dozen queries (matrix-vector
    # products), at ~2× the time of one pass per 100 queries.
    block = max(1, min(len(q), 128, _BLOCK_FLOATS_MOST // len(x)), _CHUNK_FLOATS // len(x))
    cand = []
    for i in range(0, len(q), block):
        fb = fq[i : i + block]
        d2 = fb.pow(2).sum(1, keepdim=True) + fx_sq - 2 * fb @ fx.T  # (b, N)
        cand.append(d2.topk(c, dim=1, largest=False).indices)
    cand_idx = torch.cat(cand).numpy() if cand else np.zeros((0, c), dtype=np.int64)  # (Q, c)
    # --- align every (query, candidate) pair, keep the closest
    qi = np.repeat(np.arange(len(q)), c)  # (Q*c,)
    d = _pair_distances(layout, q, x, qi, cand_idx.ravel()).reshape(len(q), c)
    best = d.argmin(1) if len(q) else np.zeros(0, dtype=np.int64)
    dist = d[np.arange(len(q)), best]
    index = cand_idx[np.arange(len(q)), best]
    return torch.from_numpy(dist), torch.from_numpy(index.astype(np.int64))


def novelty_ratio(
    layout: Layout,
    generated: torch.Tensor,
    train_pool: torch.Tensor,
    heldout_final: torch.Tensor,
    candidates: int = 16,
    pool_features: torch.Tensor | None = None,
    heldout_nearest: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float | list[float] | list[int]]:
    """How far generated policies (G, D) are from the training pool (N, D), in units of how far
    held-out runs' final checkpoints (H, D) are from it.

    ``ratio`` ≈ 0: the generator copies training checkpoints; ≈ 1: its samples are as novel as an
    independent training run; > 1: further from the data than real runs get. ``heldout_nearest``:
    :func:`nearest_aligned` of ``heldout_final`` in this pool with the same ``candidates``, where a
    caller rates several methods against one reference.
    """
    if pool_features is None:
        pool_features = proxy_features(layout, train_pool)
    gd, gi = nearest_aligned(layout, generated, train_pool, candidates, pool_features)
    hd, hi = heldout_nearest or nearest_aligned(layout, heldout_final, train_pool, candidates, pool_features)
    g_mean, h_mean = float(gd.mean()), float(hd.mean())
    return {
        "nn_dist_generated": g_mean,
        "nn_dist_heldout": h_mean,
        "ratio": g_mean / h_mean if h_mean > 0 else float("nan"),  # held-out runs copy the pool: undefined
        "nn_dist_generated_per_sample": gd.tolist(),
        "nn_dist_heldout_per_sample": hd.tolist(),
        "nn_index_generated": gi.tolist(),
        "nn_index_heldout": hi.tolist(),
    }


def init_fidelity(
    layout: Layout, generated: torch.Tensor, own_init: torch.Tensor, other_inits: torch.Tensor
) -> dict[str, float | list[float]]:
    """Aligned distance of each policy (G, D) to its own init (G, D) over its mean aligned distance
    to the other inits (M, D).

    Rows of ``other_inits`` equal to a policy's own init are left out of its mean, so ``other_inits``
    may be the whole set of inits. Use the same call for real runs (final checkpoints, their inits,
    the other runs' inits) to report both side by side. < 1: the policy stays near the init it was
    given; ≈ 1: it is no closer to its own init than to anyone's.
    """
    gen = _as_np(generated, layout, "generated", 2)
    own = _as_np(own_init, layout, "own_init", 2)
    others = _as_np(other_inits, layout, "other_inits", 2)
    if len(own) != len(gen):
        raise ValueError(f"init_fidelity: {len(gen)} policies but {len(own)} own inits; pass one init per policy")
    d_own = _pair_distances(layout, gen, own, np.arange(len(gen)), np.arange(len(gen)))  # (G,)
    gi, mi = np.repeat(np.arange(len(gen)), len(others)), np.tile(np.arange(len(others)), len(gen))
    d_all = _pair_distances(layout, gen, others, gi, mi).reshape(len(gen), len(others))  # (G, M)
    keep = np.stack([~(others == o).all(1) for o in own])  # (G, M): not the policy's own init
    if not keep.any(1).all():
        raise ValueError("init_fidelity: some policy has no other init to compare with")
    d_other = (d_all * keep).sum(1) / keep.sum(1)
    ratio = d_own / d_other
    return {
        "fidelity": float(ratio.mean()),
        "ratio_per_sample": ratio.tolist(),
        "dist_own": d_own.tolist(),
        "dist_other_mean": d_other.tolist(),
    }


# ---------------------------------------------------------------------------------- behaviour
def actions_differ(
    a: torch.Tensor,
    b: torch.Tensor,
    discrete: bool | None = None,
    tol: float = 0.05,
    action_range: float | torch.Tensor = 2.0,
) -> torch.Tensor:
    """Where two policies' deterministic actions differ: a bool mask over the leading (state) axes.

    Discrete: integer actions (...) compared exactly, or (``discrete=True``) scores/logits (..., A)
    compared by argmax. Continuous actions (..., A): different when any dimension differs by more
    than ``tol · action_range`` (high − low, scalar or (A,)). ``discrete=None`` infers it from the
    dtype (integer = discrete).
    """
    if a.shape != b.shape:
        raise ValueError(f"the policies' actions have shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if discrete is None:
        discrete = not a.is_floating_point()
    if discrete:
        if a.is_floating_point():  # scores/logits (..., A)
            a, b = a.argmax(-1), b.argmax(-1)
        return a != b
    thresh = tol * torch.as_tensor(action_range, dtype=a.dtype, device=a.device)
    return ((a - b).abs() > thresh).any(-1)


def behavioural_novelty(
    act_fn_a: Callable[[torch.Tensor], torch.Tensor],
    act_fn_b: Callable[[torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    discrete: bool | None = None,
    tol: float = 0.05,
    action_range: float | torch.Tensor = 2.0,
) -> float:
    """Share of ``states`` (S, obs) on which two policies' deterministic actions differ.

    ``act_fn`` maps states to actions: integer actions (S,), or for ``discrete=True`` scores/logits
    (S, A) compared by argmax; otherwise continuous actions (S, A), different when any dimension
    differs by more than ``tol · action_range`` (high − low, scalar or (A,); 2.0 for [−1, 1]).
    ``discrete=None`` infers it from the dtype (integer = discrete). See :func:`actions_differ`;
    the sweep's batched version over rollout states is :mod:`rl_gpt.sweep.behaviour`.
    """
    with torch.no_grad():
        a, b = act_fn_a(states), act_fn_b(states)
    if a.shape != b.shape:
        raise ValueError(
            f"behavioural_novelty: the policies' actions have shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if discrete is None:
        discrete = not a.is_floating_point()
    if not discrete:
        a, b = a.reshape(len(states), -1), b.reshape(len(states), -1)  # (S, A)
    return float(actions_differ(a, b, discrete, tol, action_range).float().mean())
