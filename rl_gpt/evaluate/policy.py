"""Many SB3 actors at once: one batched forward pass over B stacked flat weight vectors.

A :class:`BatchedPolicy` reads the network's structure from the :class:`~rl_gpt.layout.Layout`'s
affine layer chain and the action semantics from a :class:`PolicySpec` (the ``"policy"`` entry of a
dataset's ``spec.json``). Its actions are SB3's ``policy.predict`` for every row: argmax / sampled
categorical, clipped Gaussian (PPO), rescaled tanh-Gaussian (SAC), with VecNormalize's observation
normalisation when the spec asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F

from rl_gpt.layout import Layout
from rl_gpt.sb3_policy import activation_name, head_of

__all__ = ["HEADS", "BatchedPolicy", "PolicySpec", "PolicyWeights", "fold_obs_normalisation", "policy_spec_from_sb3"]

HEADS = ("categorical", "gaussian", "squashed_gaussian")
# SAC's clamp of the actor's log-std (stable_baselines3/sac/policies.py, LOG_STD_MIN/MAX).
SAC_LOG_STD_MIN, SAC_LOG_STD_MAX = -20.0, 2.0
# CPU kernel choices, measured on B=1024 CartPole policies (scripts/bench_eval.py):
_UNROLL_MAX_IN = 8  # inputs this few: a few broadcast FMAs beat B tiny matmuls (MKL pays ~0.1 µs each)
_UNROLL_MIN_ROWS = 64  # ... but only once B·E rows amortise the extra dispatches
_NARROW_MAX_OUT = 16  # outputs this few: MKL is ~2x faster reading weights stored (B, out, in)
_FAST_TANH_MIN = 4096  # elements from which the sigmoid form of tanh pays off


# ---------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class PolicySpec:
    """How an actor's outputs become environment actions (the ``"policy"`` dict of ``spec.json``)."""

    algo: str  # "ppo" or "sac"
    head: str  # "categorical", "gaussian" (PPO, clipped) or "squashed_gaussian" (SAC)
    activation: str  # hidden-layer activation name, as in rl_gpt.sb3_policy.ACTIVATIONS
    obs_dim: int  # flat observation size
    action_dim: int  # 1 for discrete actions, else the Box's size
    n_actions: int | None = None  # number of discrete actions (categorical head only)
    action_low: tuple[float, ...] | None = None  # Box lower bounds (continuous heads only)
    action_high: tuple[float, ...] | None = None  # Box upper bounds
    normalize_obs: bool = False  # the policy saw VecNormalize-d observations
    clip_obs: float = 10.0  # VecNormalize's clip of normalised observations
    norm_epsilon: float = 1e-8  # VecNormalize's epsilon under the square root

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "sac"):
            raise ValueError(f"policy algo={self.algo!r}: expected 'ppo' or 'sac'")
        if self.head not in HEADS:
            raise ValueError(f"policy head={self.head!r}: expected one of {HEADS}")
        if self.head == "categorical":
            if not self.n_actions:
                raise ValueError("a categorical head needs n_actions")
        elif self.action_low is None or self.action_high is None:
            raise ValueError(f"a {self.head} head needs action_low and action_high")
        elif not (len(self.action_low) == len(self.action_high) == self.action_dim):
            raise ValueError(f"action bounds must have action_dim={self.action_dim} entries")
        # JSON gives lists; keep tuples so the spec stays hashable and comparable.
        for name in ("action_low", "action_high"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))

    @property
    def discrete(self) -> bool:
        return self.head == "categorical"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("action_low", "action_high"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise KeyError(f"unknown policy spec fields {sorted(unknown)}")
        return cls(**data)


def policy_spec_from_sb3(
    model: Any, algo: str, normalize_obs: bool = False, clip_obs: float = 10.0, norm_epsilon: float = 1e-8
) -> PolicySpec:
    """The :class:`PolicySpec` of an SB3 PPO/SAC model (or its policy) with a flat Box observation."""
    policy = getattr(model, "policy", model)
    obs_space, act_space = policy.observation_space, policy.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"batched evaluation needs a flat Box observation space, got {obs_space}")
    if getattr(policy, "use_sde", False):
        raise ValueError("gSDE policies (use_sde=True) are not supported by the batched evaluator")
    head = head_of(algo, act_space)
    common = dict(
        algo=algo,
        head=head,
        activation=activation_name(policy),
        obs_dim=int(obs_space.shape[0]),
        normalize_obs=normalize_obs,
        clip_obs=float(clip_obs),
        norm_epsilon=float(norm_epsilon),
    )
    if head == "categorical":
        return PolicySpec(action_dim=1, n_actions=int(act_space.n), **common)
    return PolicySpec(
        action_dim=int(act_space.shape[0]),
        action_low=tuple(float(v) for v in act_space.low),
        action_high=tuple(float(v) for v in act_space.high),
        **common,
    )


# ---------------------------------------------------------------------------------------- folding
#: Observation features with a smaller running variance count as constant when folding.
DEAD_FEATURE_VAR = 1e-6


def fold_obs_normalisation(
    params: torch.Tensor, layout: Layout, obs_mean: torch.Tensor, obs_var: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Fold VecNormalize statistics into the layers that read the observation.

    ``params`` (N, D) fit observations normalised with their own ``obs_mean``/``obs_var``
    (N, obs_dim) or (obs_dim,); the returned (N, D) copy reads raw observations. With
    σ = sqrt(var + eps), every input layer becomes W' = W / σ (per input column) and
    b' = b − W (μ / σ). VecNormalize also clips normalised observations to ±clip_obs; the folded
    policy does not, so the two agree only while observations stay within clip_obs·σ of the mean.
    """
    if params.dim() != 2 or params.shape[1] != layout.numel:
        raise ValueError(f"params must be (N, {layout.numel}), got {tuple(params.shape)}")
    inputs = [layer for layer in layout.layers if layer.in_group is None]
    if not inputs:
        raise ValueError("the layout has no layer reading the observation; build it with actor_layout")
    n = params.shape[0]
    # float64, rounded once at the end: σ can be small, and b' sums terms that may nearly cancel.
    mean = obs_mean.to(torch.float64).reshape(-1, obs_mean.shape[-1]).expand(n, -1)
    var = obs_var.to(torch.float64).reshape(-1, obs_var.shape[-1]).expand(n, -1)
    # A feature that never varies (InvertedDoublePendulum's last one is always 0) has var → 0:
    # VecNormalize maps it to (x − μ)/σ ≈ 0, and 1/σ would blow its column up ~10⁴×. Its column
    # contributes nothing, so it is zeroed instead of scaled.
    inv_std = torch.where(var > DEAD_FEATURE_VAR, (var + eps).rsqrt(), torch.zeros_like(var))
    out = params.clone()
    state = layout.unflatten(out)  # views into ``out``
    for layer in inputs:  # SAC without hidden layers: both mu and log_std read the observation
        weight = state[f"{layer.prefix}.weight"]  # (N, out, obs_dim)
        if weight.shape[-1] != mean.shape[-1]:
            raise ValueError(f"{layer.prefix} reads {weight.shape[-1]} features, the statistics have {mean.shape[-1]}")
        bias = state.get(f"{layer.prefix}.bias")
        if bias is None:  # the shift by the mean has nowhere to go
            raise ValueError(f"{layer.prefix} has no bias to fold the observation mean into")
        w64 = weight.to(torch.float64)
        bias.copy_(bias.to(torch.float64) - (w64 @ (mean * inv_std).unsqueeze(-1)).squeeze(-1))
        weight.copy_(w64 * inv_std.unsqueeze(1))
    return out


# ---------------------------------------------------------------------------------------- activations
_ONE = torch.ones(())  # a 0-dim CPU tensor acts as a scalar of any dtype


def _tanh_fast(x: torch.Tensor) -> torch.Tensor:
    # torch.tanh's float32 CPU kernel is ~5x slower than sigmoid here; 2·σ(2x) − 1 is tanh to
    # within ~2e-7 absolute, the same order as the matmul reassociation we already accept. On
    # small tensors the extra dispatches cost more than they save. Tensor operands, not Python
    # floats: each wrapped scalar costs a dispatch of its own (~1 µs).
    if x.numel() < _FAST_TANH_MIN or x.device.type != "cpu":
        return torch.tanh(x)
    s = torch.sigmoid(x + x)
    return s.add_(s).sub_(_ONE)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": _tanh_fast,
    "relu": torch.relu,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,  # nn.LeakyReLU's default slope 0.01, as SB3 builds it
}


# ---------------------------------------------------------------------------------------- weights
@dataclass
class PolicyWeights:
    """B policies' weights rearranged once for the batched forward (see :meth:`BatchedPolicy.prepare`)."""

    kinds: tuple[str, ...]  # per layer: "unroll" / "gemm" (weight (B, in, out)) or "narrow" ((B, out, in))
    weights: list[torch.Tensor]  # per layer, laid out for its kernel so no step copies weights
    biases: list[torch.Tensor | None]  # per layer (B, 1, out)
    action_std: torch.Tensor | None  # (B, 1, dim): exp(log_std) of PPO's state-independent Gaussian
    obs_mean: torch.Tensor | None  # (B, 1, obs_dim)
    obs_std: torch.Tensor | None  # (B, 1, obs_dim): sqrt(var + eps)
    low: torch.Tensor | None  # (dim,) action bounds
    high: torch.Tensor | None  # (dim,)

    @property
    def batch(self) -> int:
        return self.weights[0].shape[0]

    def select(self, index: torch.Tensor) -> PolicyWeights:
        """Contiguous copies of the policies in ``index`` (K,), in their kernels' layouts."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index)

        return replace(
            self,
            weights=[pick(w) for w in self.weights],
            biases=[pick(b) for b in self.biases],
            action_std=pick(self.action_std),
            obs_mean=pick(self.obs_mean),
            obs_std=pick(self.obs_std),
        )

    def write(self, slots: torch.Tensor, source: PolicyWeights, rows: torch.Tensor) -> None:
        """In place: slot ``slots[i]`` takes policy ``rows[i]`` of ``source`` (same layout and kinds)."""
        mine = [*self.weights, *self.biases, self.action_std, self.obs_mean, self.obs_std]
        theirs = [*source.weights, *source.biases, source.action_std, source.obs_mean, source.obs_std]
        for dst, src in zip(mine, theirs):
            if dst is not None:
                dst.index_copy_(0, slots, src.index_select(0, rows))

    @property
    def nbytes_per_policy(self) -> int:
        """Bytes of weights one policy adds to every forward pass."""
        tensors = [*self.weights, *self.biases, self.action_std, self.obs_mean, self.obs_std]
        return sum(t[0].numel() * t.element_size() for t in tensors if t is not None)


# ---------------------------------------------------------------------------------------- policy
class BatchedPolicy:
    """B actors of one :class:`Layout` evaluated as a single batched forward pass.

    Output layers are the layout's layers with no output group, in order: the logits or mean, then
    (SAC) the log-std, as :func:`rl_gpt.sb3_policy.actor_layout` lists them.
    """

    def __init__(self, layout: Layout, spec: PolicySpec) -> None:
        self.layout, self.spec = layout, spec
        if not layout.layers:
            raise ValueError("the layout has no affine layer chain; build it with rl_gpt.sb3_policy.actor_layout")
        for layer in layout.layers:
            if len(layout[f"{layer.prefix}.weight"].shape) != 2:
                raise ValueError(f"layer {layer.prefix!r} is not a Linear layer; only MLP actors are supported")
        self._heads = [i for i, layer in enumerate(layout.layers) if layer.out_group is None]
        want = 2 if spec.head == "squashed_gaussian" else 1
        if len(self._heads) != want:
            names = [layout.layers[i].prefix for i in self._heads]
            raise ValueError(f"a {spec.head} head needs {want} output layer(s), the layout has {names}")
        n_out = spec.n_actions if spec.discrete else spec.action_dim
        for i in self._heads:
            out, _ = layout[f"{layout.layers[i].prefix}.weight"].shape
            if out != n_out:
                raise ValueError(f"output layer {layout.layers[i].prefix!r} has {out} units, the spec needs {n_out}")
        first_in = [layout[f"{layer.prefix}.weight"].shape[1] for layer in layout.layers if layer.in_group is None]
        if any(n != spec.obs_dim for n in first_in):
            raise ValueError(f"the layout's input layers read {first_in} features, the spec has obs_dim={spec.obs_dim}")
        hidden = {layer.activation for layer in layout.layers if layer.out_group is not None}
        if hidden - {spec.activation}:
            raise ValueError(f"the layout's hidden layers use {sorted(map(str, hidden))}, the spec {spec.activation!r}")
        if spec.activation not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {spec.activation!r}: choose from {sorted(_ACTIVATIONS)}")
        if spec.head == "gaussian" and "log_std" not in layout:
            raise ValueError("a PPO gaussian head needs a 'log_std' parameter in the layout")

    # ------------------------------------------------------------------ weights
    def prepare(
        self,
        params: torch.Tensor,
        obs_mean: torch.Tensor | None = None,
        obs_var: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        copy: bool = True,
    ) -> PolicyWeights:
        """Split (B, D) flat parameters into per-layer weights laid out for their kernels, once per rollout.

        ``copy=False`` returns strided views of ``params`` instead (no memory touched): a source
        for :meth:`PolicyWeights.select`/``write``, which copy only the rows they take.
        """
        if params.dim() != 2 or params.shape[1] != self.layout.numel:
            raise ValueError(f"params must be (B, {self.layout.numel}), got {tuple(params.shape)}")
        dtype = dtype or params.dtype
        B, dev = params.shape[0], params.device

        def own(t: torch.Tensor) -> torch.Tensor:
            return t.contiguous() if copy else t

        state = self.layout.unflatten(params.to(dtype))  # {name: (B, *shape)} views
        kinds, weights, biases = [], [], []
        for layer in self.layout.layers:
            weight = state[f"{layer.prefix}.weight"]  # (B, out, in)
            kind = _kernel_kind(*weight.shape[1:], dev)
            kinds.append(kind)
            weights.append(own(weight if kind == "narrow" else weight.transpose(1, 2)))
            bias = state.get(f"{layer.prefix}.bias")
            biases.append(None if bias is None else own(bias.unsqueeze(1)))  # (B, 1, out)
        action_std = state["log_std"].exp().unsqueeze(1) if self.spec.head == "gaussian" else None
        mean = std = None
        if self.spec.normalize_obs:
            if obs_mean is None or obs_var is None:
                raise ValueError("the spec has normalize_obs=True: pass obs_mean and obs_var (B, obs_dim)")
            mean = own(obs_mean.to(dev, dtype).expand(B, self.spec.obs_dim).unsqueeze(1))
            std = (obs_var.to(dev, torch.float64) + self.spec.norm_epsilon).sqrt().to(dtype)
            std = own(std.expand(B, self.spec.obs_dim).unsqueeze(1))
        low = high = None
        if not self.spec.discrete:
            low = torch.tensor(self.spec.action_low, dtype=dtype, device=dev)
            high = torch.tensor(self.spec.action_high, dtype=dtype, device=dev)
        return PolicyWeights(tuple(kinds), weights, biases, action_std, mean, std, low, high)

    # ------------------------------------------------------------------ forward
    def outputs(self, w: PolicyWeights, obs: torch.Tensor) -> list[torch.Tensor]:
        """The raw output layers (B, E, out) for observations (B, E, obs_dim)."""
        x = obs if obs.dtype == w.weights[0].dtype else obs.to(w.weights[0].dtype)
        if w.obs_mean is not None:
            # VecNormalize.normalize_obs: clip((obs - mean) / sqrt(var + eps), ±clip_obs)
            clip = self.spec.clip_obs
            x = ((x - w.obs_mean) / w.obs_std).clamp_(-clip, clip)
        values: dict[str | None, torch.Tensor] = {None: x}  # unit group -> its activations (B, E, units)
        heads = []
        for i, layer in enumerate(self.layout.layers):
            h = _affine(w.kinds[i], values[layer.in_group], w.weights[i], w.biases[i])  # (B, E, out)
            if layer.activation is not None:
                h = _ACTIVATIONS[layer.activation](h)
            if layer.out_group is None:
                heads.append(h)
            else:
                values[layer.out_group] = h
        return heads

    def act_prepared(
        self,
        w: PolicyWeights,
        obs: torch.Tensor,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Actions for (B, E, obs_dim) observations: (B, E) int64, or (B, E, dim) floats."""
        spec, heads = self.spec, self.outputs(w, obs)
        if spec.head == "categorical":
            logits = heads[0]  # (B, E, n)
            if not deterministic:
                # Gumbel-max: argmax(logits + Gumbel noise) ~ Categorical(softmax(logits)).
                u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
                logits = logits - u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_()
            return logits.argmax(-1)  # (B, E)
        if spec.head == "gaussian":
            action = heads[0]  # (B, E, dim): the mean
            if not deterministic:
                noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
                action = action + w.action_std * noise
            # SB3's predict clips Box actions of unsquashed policies to the bounds.
            return torch.maximum(torch.minimum(action, w.high), w.low)
        mu, log_std = heads  # squashed_gaussian (SAC): (B, E, dim) each
        if not deterministic:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            mu = mu + log_std.clamp(SAC_LOG_STD_MIN, SAC_LOG_STD_MAX).exp() * noise
        # SB3's unscale_action: low + (tanh(u) + 1) / 2 · (high − low)
        return w.low + 0.5 * (torch.tanh(mu) + 1.0) * (w.high - w.low)

    def act(
        self,
        params: torch.Tensor,
        obs: torch.Tensor,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
        obs_mean: torch.Tensor | None = None,
        obs_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Actions of B policies (params (B, D)) for observations (B, E, obs_dim).

        Returns (B, E) int64 for discrete actions, (B, E, action_dim) floats for continuous ones.
        ``obs_mean``/``obs_var`` (B, obs_dim) are required when the spec normalises observations.
        """
        if obs.dim() != 3 or obs.shape[0] != params.shape[0] or obs.shape[2] != self.spec.obs_dim:
            raise ValueError(f"obs must be (B={params.shape[0]}, E, {self.spec.obs_dim}), got {tuple(obs.shape)}")
        w = self.prepare(params, obs_mean, obs_var)
        return self.act_prepared(w, obs, deterministic, generator)


def _kernel_kind(n_out: int, n_in: int, device: torch.device) -> str:
    """Which kernel computes a layer; each stores its weight in the layout it reads fastest."""
    if device.type != "cpu":
        return "gemm"  # one cuBLAS batched GEMM is best everywhere on an accelerator
    if n_in <= _UNROLL_MAX_IN:
        return "unroll"
    return "narrow" if n_out <= _NARROW_MAX_OUT else "gemm"


def _affine(kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, E, in) times a layer's weight plus its bias (B, 1, out) -> (B, E, out)."""
    if kind == "narrow":
        weight = weight.transpose(1, 2)  # (B, in, out) view of a (B, out, in) tensor
    elif kind == "unroll" and x.shape[0] * x.shape[1] >= _UNROLL_MIN_ROWS:
        # in_features broadcast multiply-adds over (B, E, out): no per-matrix GEMM overhead.
        out = x[..., 0:1] * weight[:, 0:1, :]
        if bias is not None:
            out += bias
        for i in range(1, weight.shape[1]):
            out.addcmul_(x[..., i : i + 1], weight[:, i : i + 1, :])
        return out
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias, x, weight)
