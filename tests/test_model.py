"""Tests for rl_gpt.model: tokeniser bookkeeping, identity at init, equivariance, conditioning, registry."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict import TensorDict

from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import (
    MODELS,
    ModelConfig,
    as_tensordict_module,
    build_model,
    frequency_embedding,
    make_tokenizer,
)

# ----------------------------------------------------------------------------- fixtures


def mlp_layout(sizes: list[int], log_std: bool = False) -> Layout:
    """A tanh MLP policy sizes[0] -> ... -> sizes[-1], optionally with PPO's ``log_std``."""
    shapes: dict[str, tuple[int, ...]] = {}
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"net.{i}.weight"], shapes[f"net.{i}.bias"] = (n_out, n_in), (n_out,)
        last = i == len(sizes) - 2
        layers.append(LayerSpec(f"net.{i}", None if i == 0 else f"h{i - 1}", None if last else f"h{i}", "tanh"))
    if log_std:
        shapes["log_std"] = (sizes[-1],)
    return Layout.build(shapes, layers)


def conv_layout() -> Layout:
    """A tiny conv net: conv 3->8 (3x3), conv 8->16 (3x3), pooled, linear 16->10."""
    shapes = {
        "conv1.weight": (8, 3, 3, 3),
        "conv1.bias": (8,),
        "conv2.weight": (16, 8, 3, 3),
        "conv2.bias": (16,),
        "fc.weight": (10, 16),
        "fc.bias": (10,),
    }
    layers = [
        LayerSpec("conv1", None, "c1", "relu"),
        LayerSpec("conv2", "c1", "c2", "relu"),
        LayerSpec("fc", "c2", None),
    ]
    return Layout.build(shapes, layers)


LAYOUTS = {"mlp": mlp_layout([4, 16, 8, 2], log_std=True), "conv": conv_layout()}
TOKENS = ["layer", "chunk", "neuron"]
# Every architecture variant: the MLP baseline and each DiT tokeniser x conditioning.
VARIANTS = [dict(kind="mlp")] + [dict(tokens=t, conditioning=c) for t in TOKENS for c in ("adaln", "tokens")]
VARIANT_IDS = ["mlp"] + [f"{t}-{c}" for t in TOKENS for c in ("adaln", "tokens")]


def tiny(layout: Layout, **overrides) -> torch.nn.Module:
    """A test-sized model: the registry's ``tiny`` (an MLP of the same width for kind="mlp")."""
    overrides.setdefault("chunk_size", 16)
    if overrides.get("kind") == "mlp":
        overrides.setdefault("depth", 2)
    return build_model("tiny", layout, **overrides)


def batch(layout: Layout, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x_t": torch.randn(b, layout.numel, generator=g),
        "theta": torch.randn(b, layout.numel, generator=g),
        "t": torch.randint(0, 1000, (b,), generator=g).float(),
        "metric": torch.rand(b, generator=g) * 2 - 1,
        "prompt": torch.rand(b, generator=g) * 2 - 1,
    }


def randomize_zero_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers (decoders, adaLN) random values, so tests see a non-trivial function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ----------------------------------------------------------------------------- tokenisers


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("tokens", TOKENS)
def test_split_merge_roundtrip_is_exact(layout_name: str, tokens: str) -> None:
    layout = LAYOUTS[layout_name]
    tok = make_tokenizer(tokens, layout, width=8, chunk_size=16)
    x = torch.randn(3, layout.numel)
    assert torch.equal(tok.merge(tok.split(x)), x)
    h = tok.encode(x)
    assert h.shape == (3, tok.num_tokens, 8)
    assert tok.type_ids.shape == (tok.num_tokens,)
    assert tok.decode(h).shape == x.shape


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("tokens", TOKENS)
def test_every_entry_is_encoded_and_decoded(layout_name: str, tokens: str) -> None:
    layout = LAYOUTS[layout_name]
    tok = make_tokenizer(tokens, layout, width=8, chunk_size=16)
    randomize_zero_params(tok)
    x = torch.randn(2, layout.numel, requires_grad=True)
    (tok.encode(x) * torch.randn(2, tok.num_tokens, 8)).sum().backward()
    assert (x.grad != 0).all(), "some parameter never reaches a token"
    assert (tok.decode(torch.randn(2, tok.num_tokens, 8)) != 0).all(), "some parameter is never decoded"


def test_layer_and_chunk_token_counts() -> None:
    layout = LAYOUTS["mlp"]  # layers of 80, 136, 18 values plus log_std (2)
    assert make_tokenizer("layer", layout, 8).token_sizes == [80, 136, 18, 2]
    chunk = make_tokenizer("chunk", layout, 8, chunk_size=16)
    assert max(chunk.token_sizes) <= 16 and sum(chunk.token_sizes) == layout.numel
    assert chunk.token_sizes[:5] == [16] * 5  # 80 = 5 x 16, in layout order


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_neuron_tokens_follow_unit_index(layout_name: str) -> None:
    layout = LAYOUTS[layout_name]
    tok = make_tokenizer("neuron", layout, width=8, chunk_size=16)
    assert tok.num_tokens == sum(layout.groups.values()) + tok.num_fixed
    pieces = tok.piece_indices()
    n_groups, n_edges = len(layout.groups), len(tok.edges)
    for k, group in enumerate(layout.groups):
        # A unit's own values plus its rows/columns of the hidden-to-hidden matrices = its unit_index row.
        rows = [pieces[k]]
        for e, (ga, gb, _) in enumerate(tok.edges):
            edge = pieces[n_groups + e]  # (n_a, n_b, kernel)
            if tok.groups[ga] == group:
                rows.append(edge.reshape(edge.shape[0], -1))
            if tok.groups[gb] == group:
                rows.append(edge.transpose(0, 1).reshape(edge.shape[1], -1))
        ours = torch.cat(rows, dim=1).sort(dim=1).values
        assert torch.equal(ours, layout.unit_index(group).sort(dim=1).values)
    fixed = torch.cat([p.reshape(-1) for p in pieces[n_groups + n_edges :]]).sort().values
    assert torch.equal(fixed, layout.fixed_index())


def test_a_neuron_token_hears_which_units_its_weights_connect_to() -> None:
    # W of net.1 (8 x 16) connects h0 (its columns) to h1 (its rows). Moving a weight of h0's unit 0
    # from h1's unit 0 to unit 1 (swapping two entries of one column: the column's sum stays) is another
    # network, not a permutation, so unit 0's token must change; no other h0 unit's may.
    layout = LAYOUTS["mlp"]
    tok = make_tokenizer("neuron", layout, width=32)
    x = torch.randn(1, layout.numel, generator=torch.Generator().manual_seed(0))
    w = layout["net.1.weight"]
    a, b = w.offset + 0 * 16 + 0, w.offset + 1 * 16 + 0  # W[0, 0] and W[1, 0]
    moved = x.clone()
    moved[0, [a, b]] = x[0, [b, a]]
    h, h_moved = tok.encode(x), tok.encode(moved)  # h0's 16 tokens come first
    assert not torch.allclose(h[0, 0], h_moved[0, 0], atol=1e-4)
    assert torch.allclose(h[0, 1:16], h_moved[0, 1:16], atol=1e-6)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_untrained_residual_model_is_identity_with_finite_final_gradients(variant: dict, layout_name: str) -> None:
    layout = LAYOUTS[layout_name]
    model = tiny(layout, **variant)
    inputs = batch(layout)
    out = model(**inputs)
    assert out.shape == inputs["theta"].shape
    assert torch.equal(out, inputs["theta"])
    ((out - torch.randn_like(out)) ** 2).mean().backward()
    final = model.output if variant.get("kind") == "mlp" else model.tokenizer
    grads = [p.grad for p in final.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), "the zero-initialised final layer must receive a gradient"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_non_residual_model_starts_at_zero(variant: dict) -> None:
    layout = LAYOUTS["mlp"]
    out = tiny(layout, residual=False, **variant)(**batch(layout))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("conditioning", ["adaln", "tokens"])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_neuron_dit_is_permutation_equivariant(conditioning: str, layout_name: str) -> None:
    layout = LAYOUTS[layout_name]
    model = tiny(layout, tokens="neuron", conditioning=conditioning).eval()
    randomize_zero_params(model)
    inputs = batch(layout)
    perms = layout.random_permutations(4, generator=torch.Generator().manual_seed(1))
    out = model(**inputs)
    permuted = dict(inputs, x_t=layout.permute(inputs["x_t"], perms), theta=layout.permute(inputs["theta"], perms))
    out_of_permuted = model(**permuted)
    assert not torch.allclose(out, inputs["theta"])  # the model does something
    torch.testing.assert_close(out_of_permuted, layout.permute(out, perms), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_cond_drop_ignores_the_prompt(variant: dict) -> None:
    layout = LAYOUTS["mlp"]
    model = tiny(layout, **variant).eval()
    randomize_zero_params(model)
    inputs = batch(layout)
    other = dict(inputs, prompt=-inputs["prompt"])
    drop = torch.tensor([True, True, False, False])
    a, b = model(**inputs, cond_drop=drop), model(**other, cond_drop=drop)
    assert torch.equal(a[:2], b[:2])  # dropped rows: prompt-free
    assert not torch.allclose(a[2:], b[2:])  # kept rows: the prompt matters


def test_metric_frequencies_resolve_normalised_returns() -> None:
    from rl_gpt.model.embed import METRIC_FREQ_SCALE

    e = frequency_embedding(torch.tensor([0.0, 0.01, 0.5]), scale=METRIC_FREQ_SCALE)  # (3, 256)
    assert torch.equal(frequency_embedding(torch.zeros(1)), torch.cat([torch.ones(1, 128), torch.zeros(1, 128)], 1))
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[0], e[1], dim=0) < 0.9  # 1% of the normalised range is clearly visible
    assert cos(e[0], e[2], dim=0) < cos(e[0], e[1], dim=0)


@pytest.mark.parametrize("theta_tokens", ["fused", "separate"])
def test_fused_tokens_pair_each_unit_with_its_own_theta(theta_tokens: str) -> None:
    """Permuting θ's hidden units alone (x_t fixed) must change f for fused tokens.

    With separate θ tokens and no position among a layer's units, f cannot tell which θ unit
    belongs to which x_t unit: it is invariant to permuting θ alone, the flaw "fused" removes.
    """
    torch.manual_seed(0)
    layout = mlp_layout([4, 16, 2])
    model = build_model("neuron", layout, theta_tokens=theta_tokens, residual=False).eval()
    randomize_zero_params(model)
    inputs = batch(layout, b=3)
    perms = layout.random_permutations(3, generator=torch.Generator().manual_seed(1))
    shuffled = {**inputs, "theta": layout.permute(inputs["theta"], perms)}
    with torch.no_grad():
        f, f_shuffled = model(**inputs), model(**shuffled)
    if theta_tokens == "fused":
        assert (f - f_shuffled).abs().max() > 1e-3
    else:
        torch.testing.assert_close(f, f_shuffled, rtol=1e-4, atol=1e-5)


def test_metric_frequency_is_a_model_setting_and_older_files_keep_the_old_one() -> None:
    from rl_gpt.model.embed import METRIC_FREQ_SCALE

    layout = mlp_layout([4, 16, 2])
    model = build_model("neuron", layout, metric_frequency=30.0)
    embedders = (model.cond.metric_embed, model.cond.prompt_embed, model.cond.delta_embed)
    assert [e.scale for e in embedders] == [30.0] * 3 and model.cond.t_embed.scale == 1.0
    old = {k: v for k, v in MODELS["neuron"].to_dict().items() if k != "metric_frequency"}
    assert ModelConfig.from_dict(old).metric_frequency == METRIC_FREQ_SCALE == 1000.0
    with pytest.raises(ValueError, match="metric_frequency"):
        ModelConfig(metric_frequency=0.0)


def test_model_files_without_theta_tokens_load_as_separate() -> None:
    old = {k: v for k, v in MODELS["neuron"].to_dict().items() if k != "theta_tokens"}
    assert ModelConfig.from_dict(old).theta_tokens == "separate"
    assert MODELS["neuron"].theta_tokens == "fused"


# ----------------------------------------------------------------------------- registry and wrapper


@pytest.mark.parametrize("name", list(MODELS))
def test_registry_builds_and_round_trips(name: str) -> None:
    layout = mlp_layout([4, 16, 2])
    config = MODELS[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    model = build_model(name, layout)
    rebuilt = build_model(ModelConfig.from_dict(model.config.to_dict()), layout)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    inputs = batch(layout, b=2)
    with torch.no_grad():
        assert torch.equal(model(**inputs), inputs["theta"])


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="tokens"):
        ModelConfig(tokens="pixels")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"width": 8, "colour": "red"})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(width=30, heads=4)
    with pytest.raises(KeyError, match="named models"):
        build_model("huge", LAYOUTS["mlp"])
    assert build_model("tiny", LAYOUTS["mlp"], tokens="neuron").config.tokens == "neuron"


@pytest.mark.parametrize("kind", ["dit", "mlp"])
def test_wrong_shapes_are_refused(kind: str) -> None:
    layout = LAYOUTS["mlp"]
    model = tiny(layout, kind=kind)
    inputs = batch(layout)
    with pytest.raises(ValueError, match="theta must both be"):
        model(**dict(inputs, theta=inputs["theta"][:, :-1]))
    with pytest.raises(ValueError, match="prompt must be"):
        model(**dict(inputs, prompt=inputs["prompt"][:, None]))


def test_tensordict_module_writes_prediction() -> None:
    layout = LAYOUTS["mlp"]
    model = tiny(layout)
    randomize_zero_params(model)
    inputs = batch(layout)
    td = TensorDict(dict(inputs, cond_drop=torch.tensor([True, False, True, False])), batch_size=[4])
    out = as_tensordict_module(model)(td)
    assert out["prediction"].shape == (4, layout.numel)
    torch.testing.assert_close(out["prediction"], model(**inputs, cond_drop=td["cond_drop"]))
    without_drop = as_tensordict_module(model)(TensorDict(inputs, batch_size=[4]))  # "cond_drop" may be absent
    torch.testing.assert_close(without_drop["prediction"], model(**inputs))


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "variant",
    [dict(kind="mlp"), dict(tokens="layer"), dict(tokens="chunk", conditioning="tokens"), dict(tokens="neuron")],
    ids=["mlp", "dit-layer-adaln", "dit-chunk-tokens", "dit-neuron-adaln"],
)
def test_tiny_model_overfits_a_fixed_batch(variant: dict) -> None:
    torch.manual_seed(0)
    layout = LAYOUTS["mlp"]
    model = tiny(layout, **variant)
    inputs = batch(layout, b=8)
    target = torch.randn(8, layout.numel, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses: list[float] = []
    for _ in range(300):  # all variants get there in < 100 steps; stop early to keep the suite fast
        loss = ((model(**inputs) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
    assert losses[-1] < losses[0] / 10, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"
