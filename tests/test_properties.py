"""Property-based tests (hypothesis): the layout and what derives from it, over random layouts and shapes.

The known-answer tests beside this file pin a few fixed networks. These draw random MLP actors (no hidden
layer up to four, widths from 1, biases or not, any activation and head, any flat order of the parameters)
and small conv nets, and check the invariants every consumer of a layout relies on: flattening tiles the
vector, hidden permutations are bijections that keep the function, the batched policy is a plain loop of
single networks, the tokenisers and the neuron DiT are exact and equivariant, SB3 files carry the exact
parameters, and alignment, the function probe and the sampler see through permutations.

Deterministic in CI: every property runs a fixed, modest number of examples drawn from a seed derived from the
test itself (``derandomize``), with no example database and no deadline, so a failure reproduces anywhere.
``RL_GPT_PROPERTY_SCALE`` multiplies every property's examples for a deeper search, e.g.
``RL_GPT_PROPERTY_SCALE=20 pytest tests/test_properties.py`` (still deterministic, 20 times as many examples).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy

from rl_gpt.collect.sb3_run import build_model as build_sb3_model
from rl_gpt.config import TaskConfig
from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.evaluate import (
    BatchedPolicy,
    PolicySpec,
    fold_obs_normalisation,
    load_sb3_policy,
    policy_spec_from_sb3,
)
from rl_gpt.generate import export_sb3
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import build_model, make_tokenizer
from rl_gpt.sb3_policy import actor_layout, load_actor, read_actor, resolve_policy_kwargs
from rl_gpt.supervised import (
    CLASSIFIERS,
    classifier_layout,
    classifier_logits,
    evaluate_classifiers,
    train_classifier_run,
    train_classifier_runs,
)
from rl_gpt.sweep.novelty import align, aligned_distance, nearest_aligned, proxy_features
from rl_gpt.train.function_loss import FunctionProbe
from rl_gpt.train.generator import ParameterGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = float(os.environ.get("RL_GPT_PROPERTY_SCALE", "1"))
# too_slow times data generation (drawing an SB3 policy builds it): on a busy box it would fail at random.
CI = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def examples(n: int) -> settings:
    """The CI settings with ``n`` examples (times RL_GPT_PROPERTY_SCALE)."""
    return settings(CI, max_examples=max(1, round(n * SCALE)))


ACTIVATIONS = ["tanh", "relu", "elu", "leaky_relu"]
SEEDS = st.integers(0, 2**31)


# ----------------------------------------------------------------------------- strategies and helpers
@st.composite
def mlp_policies(draw: st.DrawFn) -> tuple[Layout, PolicySpec]:
    """A random MLP actor laid out as ``actor_layout`` does (hidden chain, one head or SAC's two), and its spec."""
    obs_dim = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 40), max_size=4))
    head = draw(st.sampled_from(["categorical", "gaussian", "squashed_gaussian"]))
    activation = draw(st.sampled_from(ACTIVATIONS))
    n_out = draw(st.integers(2, 6)) if head == "categorical" else draw(st.integers(1, 4))
    shapes: dict[str, tuple[int, ...]] = {}
    layers, group, n_in = [], None, obs_dim
    for i, width in enumerate(widths):
        shapes[f"pi.{2 * i}.weight"] = (width, n_in)
        if draw(st.booleans()):
            shapes[f"pi.{2 * i}.bias"] = (width,)
        layers.append(LayerSpec(f"pi.{2 * i}", group, f"h{i}", activation))
        group, n_in = f"h{i}", width
    for name in ["mu", "log_std_head"] if head == "squashed_gaussian" else ["action_net"]:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)
        layers.append(LayerSpec(name, group, None))
    if head == "gaussian":
        shapes["log_std"] = (n_out,)
    names = draw(st.permutations(list(shapes)))  # offsets follow the flat order, whatever it is
    layout = Layout.build(shapes, layers, names)
    common = dict(algo="sac" if head == "squashed_gaussian" else "ppo", head=head, activation=activation)
    if head == "categorical":
        return layout, PolicySpec(**common, obs_dim=obs_dim, action_dim=1, n_actions=n_out)
    low = tuple(draw(st.floats(-3, -0.1)) for _ in range(n_out))
    high = tuple(draw(st.floats(0.1, 3)) for _ in range(n_out))
    return layout, PolicySpec(**common, obs_dim=obs_dim, action_dim=n_out, action_low=low, action_high=high)


@st.composite
def conv_layouts(draw: st.DrawFn) -> Layout:
    """Two convolutions (1x1 or 3x3, biases or not) and a linear head on the pooled channels."""
    c0, c1, c2 = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3]))
    shapes = {"conv1.weight": (c1, c0, k, k), "conv2.weight": (c2, c1, k, k), "fc.weight": (5, c2), "fc.bias": (5,)}
    if draw(st.booleans()):
        shapes["conv1.bias"], shapes["conv2.bias"] = (c1,), (c2,)
    layers = [
        LayerSpec("conv1", None, "c1", "relu"),
        LayerSpec("conv2", "c1", "c2", "relu"),
        LayerSpec("fc", "c2", None),
    ]
    return Layout.build(shapes, layers)


LAYOUTS = st.one_of(mlp_policies().map(lambda policy: policy[0]), conv_layouts())


def random_params(seed: int, b: int, layout: Layout, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(b, D) standard normal parameters."""
    return torch.randn(b, layout.numel, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_perms(layout: Layout, b: int, seed: int) -> dict[str, torch.Tensor]:
    return layout.random_permutations(b, torch.Generator().manual_seed(seed))


@contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block (module initialisation) and restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


ACTIVATION_FNS = {None: lambda x: x, "tanh": torch.tanh, "relu": torch.relu, "elu": F.elu, "leaky_relu": F.leaky_relu}


def reference_outputs(layout: Layout, flat: torch.Tensor, obs: torch.Tensor) -> list[torch.Tensor]:
    """A plain float64 forward of one network, flat (D,) on obs (E, obs_dim): the head outputs in layer order."""
    params = {name: p.double() for name, p in layout.unflatten(flat).items()}
    values, heads = {None: obs.double()}, []
    for layer in layout.layers:
        h = values[layer.in_group] @ params[f"{layer.prefix}.weight"].T
        if f"{layer.prefix}.bias" in params:
            h = h + params[f"{layer.prefix}.bias"]
        h = ACTIVATION_FNS[layer.activation](h)
        if layer.out_group is None:
            heads.append(h)
        else:
            values[layer.out_group] = h
    return heads


def clear_argmax(logits: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Where the best logit beats the runner-up by ``margin``: two correct evaluations agree on the argmax there."""
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1] > margin


def assert_acts_as_sb3(layout: Layout, spec: PolicySpec, flat: torch.Tensor, obs: np.ndarray, sb3: np.ndarray) -> None:
    """The batched policy's deterministic actions on obs (E, obs_dim) are SB3's (ties of logits aside)."""
    policy = BatchedPolicy(layout, spec)
    got = policy.act(flat[None], torch.from_numpy(obs)[None])[0].numpy()
    if spec.discrete:
        clear = clear_argmax(policy.outputs(policy.prepare(flat[None]), torch.from_numpy(obs)[None])[0][0]).numpy()
        np.testing.assert_array_equal(got[clear], sb3[clear])
    else:
        np.testing.assert_allclose(got, sb3.reshape(got.shape), atol=1e-5)


def seeded_tiny_dit(layout: Layout, seed: int, **overrides) -> torch.nn.Module:
    """The registry's tiny neuron DiT, initialised from ``seed``; its zero-initialised layers get random values."""
    with torch_seed(seed):
        model = build_model("tiny", layout, tokens="neuron", width=16, heads=2, depth=1, **overrides).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- layout
@examples(100)
@given(layout=LAYOUTS, b=st.integers(1, 4), seed=SEEDS)
def test_parameters_tile_the_vector_and_round_trip(layout: Layout, b: int, seed: int) -> None:
    """Offsets tile [0, D) in flat order; unflatten/flatten (batched or not) and JSON are exact round trips."""
    stop = 0
    for p in layout.params:
        assert p.offset == stop
        stop = p.stop
        for axis, group in p.perm_axes:
            assert p.shape[axis] == layout.groups[group]
    assert stop == layout.numel
    x = random_params(seed, b, layout)
    state = layout.unflatten(x)
    assert {name: t.shape for name, t in state.items()} == {p.name: (b, *p.shape) for p in layout.params}
    assert torch.equal(layout.flatten(state), x)
    assert torch.equal(layout.flatten(layout.unflatten(x[0])), x[0])
    again = Layout.from_json(layout.to_json())
    assert again == layout and hash(again) == hash(layout) and again.groups == layout.groups


@examples(100)
@given(layout=LAYOUTS, b=st.integers(1, 3), seed=SEEDS)
def test_permutations_are_bijections_that_invert_compose_and_move_whole_units(
    layout: Layout, b: int, seed: int
) -> None:
    """permute is a bijection of entries that inverts with argsort, composes, and moves each unit's entries together.

    Novelty alignment and the permutation augmentation both rely on these; fixed entries never move.
    """
    x = random_params(seed, b, layout)
    perms, after = random_perms(layout, b, seed + 1), random_perms(layout, b, seed + 2)
    moved = layout.permute(x, perms)
    index = layout.permutation_index(perms, b)
    assert torch.equal(index.sort(dim=1).values, torch.arange(layout.numel).expand(b, -1))
    inverse = {g: p.argsort(dim=1) for g, p in perms.items()}
    assert torch.equal(layout.permute(moved, inverse), x)
    composed = {g: perms[g].gather(1, after[g]) for g in perms}
    assert torch.equal(layout.permute(moved, after), layout.permute(x, composed))
    identity = {g: torch.arange(n).expand(b, n) for g, n in layout.groups.items()}
    assert torch.equal(layout.permute(x, identity), x)
    fixed = layout.fixed_index()
    assert torch.equal(moved[:, fixed], x[:, fixed])
    # Unit i of group g in the result holds unit perms[g][i]'s entries; weights between two hidden groups
    # are also reordered along the other group, so compare them as sets.
    for g in layout.groups:
        units = layout.unit_index(g)
        for r in range(b):
            assert torch.equal(moved[r, units].sort(dim=1).values, x[r, units[perms[g][r]]].sort(dim=1).values)


# ----------------------------------------------------------------------------- batched policies
@examples(50)
@given(policy=mlp_policies(), b=st.integers(1, 3), e=st.integers(1, 40), seed=SEEDS)
def test_hidden_permutations_keep_the_batched_policys_outputs(
    policy: tuple[Layout, PolicySpec], b: int, e: int, seed: int
) -> None:
    """A permuted network computes the same head outputs: to 1e-9 in float64, 1e-5 in float32 at init scale."""
    layout, spec = policy
    batched = BatchedPolicy(layout, spec)
    obs = torch.randn(b, e, spec.obs_dim, generator=torch.Generator().manual_seed(seed + 3))
    for dtype, scale, tol in ((torch.float64, 1.0, 1e-9), (torch.float32, 0.3, 1e-5)):
        x = random_params(seed, b, layout, dtype) * scale
        permuted = layout.permute(x, random_perms(layout, b, seed + 1))
        outputs = batched.outputs(batched.prepare(x), obs)
        for a, c in zip(outputs, batched.outputs(batched.prepare(permuted), obs)):
            torch.testing.assert_close(c, a, atol=tol, rtol=tol)


@examples(50)
@given(policy=mlp_policies(), b=st.integers(1, 6), e=st.integers(1, 40), seed=SEEDS)
def test_batched_policy_equals_a_loop_of_single_networks(
    policy: tuple[Layout, PolicySpec], b: int, e: int, seed: int
) -> None:
    """Each row of a batch computes the plain forward of its own network, and acts on it as its head says.

    Any layer order in the flat vector, missing biases, any width: float64 to 1e-9, float32 to 1e-5.
    """
    layout, spec = policy
    batched = BatchedPolicy(layout, spec)
    for dtype, scale, tol in ((torch.float64, 0.5, 1e-9), (torch.float32, 0.2, 1e-5)):
        x = random_params(seed, b, layout, dtype) * scale
        obs = torch.randn(b, e, spec.obs_dim, generator=torch.Generator().manual_seed(seed + 3), dtype=dtype)
        outputs = batched.outputs(batched.prepare(x), obs)
        for r in range(b):
            alone = batched.outputs(batched.prepare(x[r : r + 1]), obs[r : r + 1])
            for out, single, ref in zip(outputs, alone, reference_outputs(layout, x[r], obs[r])):
                torch.testing.assert_close(out[r].double(), ref, atol=tol, rtol=tol)
                torch.testing.assert_close(single[0], out[r], atol=tol, rtol=tol)
        actions = batched.act(x, obs)
        first_head = torch.stack([reference_outputs(layout, x[r], obs[r])[0] for r in range(b)])
        if spec.discrete:
            clear = clear_argmax(first_head)
            assert torch.equal(actions[clear], first_head.argmax(-1)[clear])
            continue
        low = torch.tensor(spec.action_low, dtype=torch.float64)
        high = torch.tensor(spec.action_high, dtype=torch.float64)
        if spec.head == "gaussian":  # PPO clips the mean into the box
            want = first_head.clamp(low, high)
        else:  # SAC squashes it
            want = low + 0.5 * (torch.tanh(first_head) + 1) * (high - low)
        torch.testing.assert_close(actions.double(), want, atol=tol, rtol=tol)


@examples(40)
@given(policy=mlp_policies(), b=st.integers(2, 6), seed=SEEDS, data=st.data())
def test_selected_and_written_weights_equal_preparing_those_rows(
    policy: tuple[Layout, PolicySpec], b: int, seed: int, data: st.DataObject
) -> None:
    """PolicyWeights.select (repeats allowed) and .write, as the rollout's slot refills use them, change nothing."""
    layout, spec = policy
    batched = BatchedPolicy(layout, spec)
    x = random_params(seed, b, layout)
    e = data.draw(st.integers(1, 20))
    obs = torch.randn(b, e, spec.obs_dim, generator=torch.Generator().manual_seed(seed + 3))
    rows = torch.tensor(data.draw(st.lists(st.integers(0, b - 1), min_size=1, max_size=b)))
    selected = batched.outputs(batched.prepare(x, copy=False).select(rows), obs[rows])
    for want, got in zip(batched.outputs(batched.prepare(x[rows]), obs[rows]), selected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    full = batched.prepare(x)
    written = batched.prepare(torch.zeros_like(x))
    written.write(torch.arange(b), full, torch.arange(b))
    for want, got in zip(batched.outputs(full, obs), batched.outputs(written, obs)):
        assert torch.equal(got, want)


@examples(40)
@given(policy=mlp_policies(), b=st.integers(1, 4), e=st.integers(1, 30), seed=SEEDS)
def test_folded_normalisation_equals_the_normalising_policy(
    policy: tuple[Layout, PolicySpec], b: int, e: int, seed: int
) -> None:
    """fold_obs_normalisation moves VecNormalize's statistics into the first layer: raw obs give the same outputs."""
    layout, spec = policy
    assume(all(f"{layer.prefix}.bias" in layout for layer in layout.layers if layer.in_group is None))
    g = torch.Generator().manual_seed(seed)
    x = random_params(seed, b, layout) * 0.5
    mean = torch.randn(b, spec.obs_dim, generator=g)
    var = torch.rand(b, spec.obs_dim, generator=g) * 3 + 0.05
    obs = mean[:, None] + torch.randn(b, e, spec.obs_dim, generator=g) * var.sqrt()[:, None]
    normalising = BatchedPolicy(layout, PolicySpec(**{**spec.to_dict(), "normalize_obs": True, "clip_obs": 100.0}))
    plain = BatchedPolicy(layout, spec)
    want = normalising.outputs(normalising.prepare(x, mean, var), obs)
    got = plain.outputs(plain.prepare(fold_obs_normalisation(x, layout, mean, var)), obs)
    for a, c in zip(want, got):
        torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- tokenisers and the DiT
@examples(100)
@given(
    layout=LAYOUTS,
    kind=st.sampled_from(["layer", "chunk", "neuron"]),
    chunk=st.one_of(st.integers(1, 50), st.integers(10**6, 10**9)),
    b=st.integers(1, 3),
    seed=SEEDS,
)
def test_tokenisers_split_and_merge_exactly(layout: Layout, kind: str, chunk: int, b: int, seed: int) -> None:
    """split and merge are inverse both ways, and the token counts, sizes and types add up, for any chunk size."""
    tokenizer = make_tokenizer(kind, layout, width=4, chunk_size=chunk)
    x = random_params(seed, b, layout)
    pieces = tokenizer.split(x)
    assert torch.equal(tokenizer.merge(pieces), x)
    others = [torch.randn_like(p) for p in pieces]
    for a, c in zip(tokenizer.split(tokenizer.merge(others)), others):
        assert torch.equal(a, c)
    assert tokenizer.encode(x).shape == (b, tokenizer.num_tokens, 4)
    assert tokenizer.decode(tokenizer.encode(x)).shape == x.shape
    assert tokenizer.type_ids.shape == (tokenizer.num_tokens,) and int(tokenizer.type_ids.max()) < tokenizer.num_types
    if kind == "neuron":
        assert tokenizer.num_tokens == sum(layout.groups.values()) + tokenizer.num_fixed
    else:
        assert sum(tokenizer.token_sizes) == layout.numel
    if kind == "chunk":
        assert max(tokenizer.token_sizes) <= chunk


@examples(50)
@given(layout=LAYOUTS, chunk=st.integers(1, 30), b=st.integers(1, 3), seed=SEEDS)
def test_neuron_tokens_and_decoding_are_permutation_equivariant(layout: Layout, chunk: int, b: int, seed: int) -> None:
    """Permuting units permutes their tokens (groups in layout order, then fixed tokens); decoding permutes back."""
    tokenizer = make_tokenizer("neuron", layout, width=8, chunk_size=chunk)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tokenizer.parameters():  # the decoders start at zero
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = random_params(seed, b, layout)
    perms = random_perms(layout, b, seed + 1)
    tokens = tokenizer.encode(x)
    order, start = [], 0
    for group, n in layout.groups.items():
        order.append(perms[group] + start)
        start += n
    order = torch.cat([*order, torch.arange(start, tokenizer.num_tokens).expand(b, -1)], dim=1)
    permuted_tokens = tokens.gather(1, order[..., None].expand_as(tokens))
    torch.testing.assert_close(tokenizer.encode(layout.permute(x, perms)), permuted_tokens, atol=1e-5, rtol=1e-5)
    decoded = tokenizer.decode(permuted_tokens)
    torch.testing.assert_close(decoded, layout.permute(tokenizer.decode(tokens), perms), atol=1e-5, rtol=1e-5)


@examples(20)
@given(
    layout=LAYOUTS,
    conditioning=st.sampled_from(["adaln", "tokens"]),
    theta_tokens=st.sampled_from(["fused", "separate"]),
    chunk=st.integers(1, 20),
    seed=SEEDS,
)
def test_neuron_dit_is_equivariant_on_random_layouts(
    layout: Layout, conditioning: str, theta_tokens: str, chunk: int, seed: int
) -> None:
    """Permuting x_t and θ alike permutes the neuron DiT's prediction, for every conditioning and θ token mode."""
    model = seeded_tiny_dit(layout, seed, chunk_size=chunk, conditioning=conditioning, theta_tokens=theta_tokens)
    b, g = 3, torch.Generator().manual_seed(seed)
    inputs = dict(
        x_t=torch.randn(b, layout.numel, generator=g),
        theta=torch.randn(b, layout.numel, generator=g),
        t=torch.randint(0, 1000, (b,), generator=g).float(),
        metric=torch.rand(b, generator=g) * 2 - 1,
        prompt=torch.rand(b, generator=g) * 2 - 1,
    )
    perms = random_perms(layout, b, seed + 1)
    permuted = dict(inputs, x_t=layout.permute(inputs["x_t"], perms), theta=layout.permute(inputs["theta"], perms))
    with torch.no_grad():
        out, out_of_permuted = model(**inputs), model(**permuted)
    torch.testing.assert_close(out_of_permuted, layout.permute(out, perms), atol=1e-5, rtol=1e-5)


@examples(15)
@given(
    layout=LAYOUTS,
    target=st.sampled_from(["theta", "delta"]),
    input_columns=st.booleans(),
    prediction=st.sampled_from(["x0", "eps", "v"]),
    guidance=st.sampled_from([1.0, 2.0]),
    average=st.integers(1, 2),
    seed=SEEDS,
)
def test_ddim_sampling_is_equivariant_given_permuted_noise(
    layout: Layout, target: str, input_columns: bool, prediction: str, guidance: float, average: int, seed: int
) -> None:
    """Sampling from a permuted θ and permuted starting noise gives the permuted sample.

    The normaliser's per-column statistics, guidance and averaging must all respect the symmetry. DDIM only:
    DDPM's fresh noise at every step is not permuted, so its samples are only equal in distribution.
    """
    model = seeded_tiny_dit(layout, seed, chunk_size=8, residual=prediction == "x0" and target == "theta")
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(30, layout.numel, generator=g) * torch.rand(layout.numel, generator=g)
    data = data + torch.randn(layout.numel, generator=g)
    delta = data[:10] - data[10:20]
    normalizer = Normalizer.fit(data, torch.rand(30, generator=g), layout, delta, input_columns=input_columns)
    sampler = ParameterGenerator(model, GaussianDiffusion(prediction=prediction), normalizer, layout, target=target)
    b = 2
    theta, metric, prompt = data[:b], torch.rand(b, generator=g), torch.rand(b, generator=g)
    noise = torch.randn(b * average, layout.numel, generator=g)
    perms = random_perms(layout, b, seed + 1)
    noise_perms = {group: p.repeat_interleave(average, 0) for group, p in perms.items()}
    kwargs = dict(steps=4, method="ddim", guidance=guidance, average=average)
    out = sampler.sample(theta, metric, prompt, x_T=noise, **kwargs)
    permuted_theta, permuted_noise = layout.permute(theta, perms), layout.permute(noise, noise_perms)
    out_of_permuted = sampler.sample(permuted_theta, metric, prompt, x_T=permuted_noise, **kwargs)
    # eps and v predictions divide by sqrt(alpha_bar) ~ 1e-2 at the first step: float32 rounding grows ~100x.
    tol = 1e-4 if prediction == "x0" else 3e-3
    torch.testing.assert_close(out_of_permuted, layout.permute(out, perms), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- SB3 actors and files
@st.composite
def sb3_policies(draw: st.DrawFn) -> tuple[str, ActorCriticPolicy | SACPolicy]:
    """A fresh SB3 PPO or SAC policy on random spaces and net_arch (list or dict), with random log_std."""
    algo = draw(st.sampled_from(["ppo", "ppo", "sac"]))
    obs_space = gym.spaces.Box(-5.0, 5.0, (draw(st.integers(1, 10)),), np.float32)
    if algo == "ppo" and draw(st.booleans()):
        action_space = gym.spaces.Discrete(draw(st.integers(2, 6)))
    else:
        n = draw(st.integers(1, 4))
        low = np.array([draw(st.floats(-3, -0.125, width=32)) for _ in range(n)], np.float32)
        high = np.array([draw(st.floats(0.125, 3, width=32)) for _ in range(n)], np.float32)
        action_space = gym.spaces.Box(low, high, dtype=np.float32)
    pi = draw(st.lists(st.integers(1, 40), max_size=4))
    critic = draw(st.lists(st.integers(1, 16), max_size=2))
    net_arch = pi if draw(st.booleans()) else {"pi": pi, "vf" if algo == "ppo" else "qf": critic}
    kwargs = resolve_policy_kwargs(algo, {"net_arch": net_arch, "activation_fn": draw(st.sampled_from(ACTIVATIONS))})
    kwargs["share_features_extractor"] = draw(st.booleans())
    cls = ActorCriticPolicy if algo == "ppo" else SACPolicy
    with torch_seed(draw(SEEDS)):
        policy = cls(obs_space, action_space, lambda _: 1e-3, **kwargs)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name == "log_std":  # PPO's starts at zero: make the Gaussian head's log_std matter
                    p.normal_()
    return algo, policy.eval()


@examples(30)
@given(sb3=sb3_policies(), e=st.integers(1, 50), seed=SEEDS)
def test_sb3_actors_act_as_predict_and_permuted_ones_act_the_same(
    sb3: tuple[str, ActorCriticPolicy | SACPolicy], e: int, seed: int
) -> None:
    """actor_layout + read_actor + the batched policy reproduce SB3's predict for any architecture and spaces;
    a hidden permutation loaded back into SB3 reads back exactly and leaves predict's actions unchanged."""
    algo, policy = sb3
    layout, spec = actor_layout(policy, algo), policy_spec_from_sb3(policy, algo)
    flat = read_actor(policy, layout)
    obs = np.random.default_rng(seed).uniform(-5, 5, size=(e, spec.obs_dim)).astype(np.float32)
    expected, _ = policy.predict(obs, deterministic=True)
    assert_acts_as_sb3(layout, spec, flat, obs, expected)
    permuted = layout.permute(flat[None], random_perms(layout, 1, seed))[0]
    load_actor(policy, layout, permuted)
    assert torch.equal(read_actor(policy, layout), permuted)
    assert_acts_as_sb3(layout, spec, flat, obs, policy.predict(obs, deterministic=True)[0])


SB3_TASKS = [
    ("ppo", "Acrobot-v1"),
    ("ppo", "CartPole-v1"),
    ("ppo", "MountainCarContinuous-v0"),
    ("ppo", "Pendulum-v1"),
    ("sac", "MountainCarContinuous-v0"),
    ("sac", "Pendulum-v1"),
]


@examples(10)
@given(
    task=st.sampled_from(SB3_TASKS),
    pi=st.lists(st.integers(1, 40), max_size=4),
    activation=st.sampled_from(ACTIVATIONS),
    as_list=st.booleans(),
    seed=SEEDS,
)
def test_exported_sb3_files_hold_the_exact_parameters_and_act_as_the_batched_policy(
    task: tuple[str, str], pi: list[int], activation: str, as_list: bool, seed: int
) -> None:
    """export_sb3 writes a file that SB3's load and rl_gpt's unpickle-free reader both read back bit for bit."""
    algo, env_id = task
    hyperparams = {"buffer_size": 100, "learning_starts": 10} if algo == "sac" else {"n_steps": 16, "batch_size": 16}
    net_arch = pi if as_list else {"pi": pi, "qf" if algo == "sac" else "vf": [8]}
    config = TaskConfig(
        env_id=env_id,
        algo=algo,
        n_envs=1,
        hyperparams=hyperparams,
        policy_kwargs={"net_arch": net_arch, "activation_fn": activation},
    )
    reference = build_sb3_model(config, seed=1)
    layout, spec = actor_layout(reference.policy, algo), policy_spec_from_sb3(reference, algo)
    flat = torch.randn(layout.numel, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as folder:
        path = export_sb3(config, layout, flat, os.path.join(folder, "policy.zip"), seed=seed)
        loaded = (PPO if algo == "ppo" else SAC).load(path, device="cpu")
        assert torch.equal(read_actor(loaded.policy, layout), flat)
        _, _, read_back = load_sb3_policy(path, env_id)
        assert torch.equal(read_actor(read_back, actor_layout(read_back, algo)), flat)
    space = loaded.observation_space
    low = np.where(np.isfinite(space.low), space.low, -3.0)  # CartPole's velocities are unbounded
    high = np.where(np.isfinite(space.high), space.high, 3.0)
    obs = np.random.default_rng(seed).uniform(low, high, size=(32, *space.shape)).astype(np.float32)
    assert_acts_as_sb3(layout, spec, flat, obs, loaded.predict(obs, deterministic=True)[0])


# ----------------------------------------------------------------------------- classifiers
@examples(25)
@given(name=st.sampled_from(sorted(CLASSIFIERS)), b=st.integers(1, 4), n=st.integers(1, 12), seed=SEEDS, data=st.data())
def test_classifier_loss_and_error_are_those_of_the_logits_for_any_chunk_size(
    name: str, b: int, n: int, seed: int, data: st.DataObject
) -> None:
    """evaluate_classifiers, chunked over examples at any size (or not at all), is cross-entropy and error rate."""
    layout = classifier_layout(name)
    x = random_params(seed, b, layout) * 0.2
    inputs = torch.randn(n, *CLASSIFIERS[name].input_shape, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed + 3))
    logits = classifier_logits(x, layout, name, inputs)
    chunk = data.draw(st.one_of(st.none(), st.integers(1, n + 3)))
    loss, error = evaluate_classifiers(x, layout, name, inputs, labels, batch_size=chunk)
    want_loss = torch.stack([F.cross_entropy(logits[r].double(), labels) for r in range(b)])
    torch.testing.assert_close(loss.double(), want_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(error.double(), (logits.argmax(-1) != labels).double().mean(1), atol=1e-6, rtol=0)


@examples(10)
@given(
    seeds=st.lists(st.integers(0, 1000), min_size=2, max_size=4, unique=True),
    optimizer=st.sampled_from(["sgd", "adam"]),
    steps=st.integers(1, 12),
    batch_size=st.integers(1, 20),
    schedule=st.sampled_from(["cosine", "constant"]),
    weight_decay=st.sampled_from([0.0, 5e-4, 0.1]),
    data=st.data(),
)
def test_stacked_classifier_runs_equal_plain_runs(
    seeds: list[int],
    optimizer: str,
    steps: int,
    batch_size: int,
    schedule: str,
    weight_decay: float,
    data: st.DataObject,
) -> None:
    """Runs trained together (one lr each, zero included) equal each run alone, for any schedule, decay,
    batch size and checkpoint steps."""
    g = torch.Generator().manual_seed(sum(seeds))
    train_x, train_y = torch.rand(40, 64, generator=g), torch.randint(0, 10, (40,), generator=g)
    test_x, test_y = torch.rand(17, 64, generator=g), torch.randint(0, 10, (17,), generator=g)
    digits = (train_x, train_y, test_x, test_y)
    lrs = [data.draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3])) for _ in seeds]
    kwargs = dict(
        optimizer=optimizer,
        steps=steps,
        batch_size=batch_size,
        checkpoint_steps=data.draw(st.lists(st.integers(0, steps), max_size=3)),
        weight_decay=weight_decay,
        lr_schedule=schedule,
        train_eval_size=data.draw(st.integers(1, 50)),
    )
    together = train_classifier_runs("digits_mlp", *digits, seeds=seeds, lr=lrs, **kwargs)
    for seed, lr, run in zip(seeds, lrs, together):
        alone = train_classifier_run("digits_mlp", *digits, seed=seed, lr=lr, **kwargs)
        assert torch.equal(alone["step"], run["step"])
        # Adam's step g / (|g| + eps) amplifies rounding where the gradient and weight decay nearly cancel
        # (found: |g| = 4e-8 gave a 0.4 % different step): allow 1 % of a step there.
        atol = 1e-4 if optimizer == "sgd" else max(1e-4, 1e-2 * lr * steps)
        torch.testing.assert_close(run["params"], alone["params"], atol=atol, rtol=1e-4)
        for key in ("test_loss", "train_loss"):
            torch.testing.assert_close(run[key], alone[key], atol=max(1e-4, 10 * atol), rtol=1e-4)


# ----------------------------------------------------------------------------- alignment and the function probe
@examples(50)
@given(layout=LAYOUTS, seed=SEEDS)
def test_alignment_finds_permuted_copies_and_bounds_distances(layout: Layout, seed: int) -> None:
    """aligned_distance finds a permuted copy at ~0, never exceeds the plain distance, is align()'s distance,
    and is bounded below by the permutation-invariant proxy features."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(layout.numel, generator=g), torch.randn(layout.numel, generator=g)
    permuted_a = layout.permute(a[None], random_perms(layout, 1, seed + 1))[0]
    assert aligned_distance(layout, a, permuted_a) <= 1e-4 * (1 + float(a.norm()))
    d = aligned_distance(layout, a, b)
    assert d <= float((a - b).norm()) * (1 + 1e-5) + 1e-5
    aligned = align(layout, a, b)
    assert abs(float((a - aligned).norm()) - d) <= 1e-4 * (1 + d)
    assert torch.equal(aligned.sort().values, b.sort().values)  # a permutation of b's entries ...
    fixed = layout.fixed_index()
    assert torch.equal(aligned[fixed], b[fixed])  # ... that leaves the fixed ones alone
    features = proxy_features(layout, torch.stack([a, b]))
    assert float((features[0] - features[1]).norm()) <= d * (1 + 1e-4) + 1e-4
    permuted_b = layout.permute(b[None], random_perms(layout, 1, seed + 2))
    torch.testing.assert_close(proxy_features(layout, permuted_b)[0], features[1], atol=1e-6, rtol=0)
    if len(layout.groups) <= 1:  # one hidden group: the assignment is solved exactly
        assert abs(aligned_distance(layout, a, permuted_b[0]) - d) <= 1e-4 * (1 + d)


@examples(30)
@given(layout=LAYOUTS, n=st.integers(1, 12), seed=SEEDS, data=st.data())
def test_nearest_aligned_finds_a_permuted_pool_member(layout: Layout, n: int, seed: int, data: st.DataObject) -> None:
    """A permuted copy of a pool member is found at distance ~0, however few candidates are aligned."""
    pool = torch.randn(n, layout.numel, generator=torch.Generator().manual_seed(seed))
    k = data.draw(st.integers(0, n - 1))
    query = layout.permute(pool[k : k + 1], random_perms(layout, 1, seed + 1))
    dist, index = nearest_aligned(layout, query, pool, candidates=data.draw(st.integers(1, 20)))
    assert float(dist[0]) <= 1e-4 * (1 + float(pool[k].norm()))
    assert torch.equal(pool[int(index[0])], pool[k]) or float(dist[0]) == 0.0


@examples(40)
@given(policy=mlp_policies(), b=st.integers(1, 4), n=st.integers(1, 30), seed=SEEDS)
def test_function_probe_matches_the_batched_policy_and_ignores_permutations(
    policy: tuple[Layout, PolicySpec], b: int, n: int, seed: int
) -> None:
    """The probe's outputs are the evaluator's: action probabilities, the squashed mean, or the clipped action
    scaled to the box; a permuted network gives the same outputs to 1e-9 in float64."""
    layout, spec = policy
    x = random_params(seed, b, layout, torch.float64) * 0.5
    obs = torch.randn(n, spec.obs_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    probe = FunctionProbe(layout, obs, "policy", spec=spec)
    out = probe(x)
    batched = BatchedPolicy(layout, spec)
    heads = batched.outputs(batched.prepare(x), obs.expand(b, n, -1))
    if spec.head == "categorical":
        want = heads[0].softmax(-1)
    elif spec.head == "squashed_gaussian":
        want = torch.tanh(heads[0])
    else:
        low = torch.tensor(spec.action_low, dtype=torch.float64)
        high = torch.tensor(spec.action_high, dtype=torch.float64)
        want = 2 * batched.act(x, obs.expand(b, n, -1)).double() / (high - low)
    torch.testing.assert_close(out, want, atol=1e-9, rtol=1e-9)
    permuted = layout.permute(x, random_perms(layout, b, seed + 2))
    torch.testing.assert_close(probe(permuted), out, atol=1e-9, rtol=1e-9)
