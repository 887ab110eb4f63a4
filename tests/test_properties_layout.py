"""Properties of the layout and what runs on it (hypothesis; strategies in ``property_strategies.py``).

Flattening tiles the vector, hidden permutations are bijections that keep the function, the batched policy is a
plain loop of single networks, and the tokenisers, the neuron DiT and the sampler are exact and equivariant.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from property_strategies import (
    LAYOUTS,
    SEEDS,
    clear_argmax,
    examples,
    mlp_policies,
    random_params,
    random_perms,
    reference_outputs,
    seeded_tiny_dit,
)

from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.evaluate import (
    BatchedPolicy,
    PolicySpec,
    fold_obs_normalisation,
)
from rl_gpt.layout import Layout
from rl_gpt.model import make_tokenizer
from rl_gpt.train.generator import ParameterGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


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
