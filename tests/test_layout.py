"""The parameter layout: flattening, permutation symmetry and serialisation."""

import pytest
import torch
from stable_baselines3 import PPO, SAC

from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.sb3_policy import actor_layout, load_actor, read_actor


def _mlp_layout() -> Layout:
    shapes = {
        "0.weight": (16, 4),
        "0.bias": (16,),
        "2.weight": (8, 16),
        "2.bias": (8,),
        "out.weight": (2, 8),
        "out.bias": (2,),
        "log_std": (2,),
    }
    layers = [LayerSpec("0", None, "h0", "tanh"), LayerSpec("2", "h0", "h1", "tanh"), LayerSpec("out", "h1", None)]
    return Layout.build(shapes, layers)


def _forward(layout: Layout, flat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    p = layout.unflatten(flat)
    h = torch.tanh(obs @ p["0.weight"].T + p["0.bias"])
    h = torch.tanh(h @ p["2.weight"].T + p["2.bias"])
    return h @ p["out.weight"].T + p["out.bias"]


def test_offsets_and_roundtrip():
    layout = _mlp_layout()
    assert layout.numel == 16 * 4 + 16 + 8 * 16 + 8 + 2 * 8 + 2 + 2
    assert layout.groups == {"h0": 16, "h1": 8}
    flat = torch.randn(3, layout.numel)
    assert torch.equal(layout.flatten(layout.unflatten(flat)), flat)
    assert Layout.from_json(layout.to_json()) == layout


def test_permutation_preserves_function_and_changes_weights():
    layout = _mlp_layout()
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(4, layout.numel, generator=gen)
    permuted = layout.permute(flat, layout.random_permutations(4, gen))
    obs = torch.randn(10, 4, generator=gen)
    for b in range(4):
        assert torch.allclose(_forward(layout, flat[b], obs), _forward(layout, permuted[b], obs), atol=1e-6)
    assert not torch.allclose(flat, permuted)
    # permuting back with the inverse recovers the original exactly
    perms = layout.random_permutations(4, gen)
    inverse = {g: torch.argsort(p, dim=1) for g, p in perms.items()}
    assert torch.equal(layout.permute(layout.permute(flat, perms), inverse), flat)


def test_unit_tokens_cover_every_parameter_once():
    layout = _mlp_layout()
    idx = torch.cat([layout.unit_index(g).flatten() for g in layout.groups] + [layout.fixed_index()])
    # h0 units own layer-2 columns and h1 units own them as rows, so the weights between two hidden
    # layers appear in both groups' tokens; everything appears at least once.
    assert set(idx.tolist()) == set(range(layout.numel))
    assert layout.unit_index("h0").shape == (16, 4 + 1 + 8)
    assert layout.fixed_index().tolist() == list(range(layout.numel - 4, layout.numel))


def test_bad_shapes_are_refused():
    layout = _mlp_layout()
    with pytest.raises(ValueError, match="entries"):
        layout.unflatten(torch.zeros(5))
    with pytest.raises(ValueError, match="hidden group"):
        Layout.build({"a.weight": (3, 2), "b.weight": (1, 4)}, [LayerSpec("a", None, "h"), LayerSpec("b", "h", None)])


def test_a_stored_layout_whose_pieces_do_not_tile_the_vector_is_refused():
    data = _mlp_layout().to_dict()
    data["params"][2]["offset"] += 1  # a gap before 2.weight: unflatten would read the wrong slices
    with pytest.raises(ValueError, match="offset"):
        Layout.from_dict(data)
    data = _mlp_layout().to_dict()
    data["numel"] += 1
    with pytest.raises(ValueError, match="numel"):
        Layout.from_dict(data)


@pytest.mark.parametrize(
    ("algo", "env_id", "kwargs"),
    [
        ("ppo", "CartPole-v1", {"net_arch": {"pi": [16, 8], "vf": [8]}}),
        ("ppo", "Pendulum-v1", {"net_arch": {"pi": [16], "vf": [8]}}),
        ("sac", "Pendulum-v1", {"net_arch": {"pi": [16, 8], "qf": [8]}}),
    ],
)
def test_sb3_actor_layout_roundtrip_and_permutation(algo, env_id, kwargs):
    cls = {"ppo": PPO, "sac": SAC}[algo]
    model = cls("MlpPolicy", env_id, policy_kwargs=kwargs, seed=0, device="cpu")
    layout = actor_layout(model.policy, algo)
    flat = read_actor(model.policy, layout)
    assert flat.shape == (layout.numel,)
    obs = torch.as_tensor(model.observation_space.sample()[None].repeat(6, 0))
    obs = obs + torch.randn_like(obs) * 0.1
    before = model.predict(obs.numpy(), deterministic=True)[0]
    permuted = layout.permute(flat[None], layout.random_permutations(1, torch.Generator().manual_seed(1)))[0]
    load_actor(model.policy, layout, permuted)
    after = model.predict(obs.numpy(), deterministic=True)[0]
    assert torch.allclose(torch.as_tensor(before).float(), torch.as_tensor(after).float(), atol=1e-5)
    assert torch.equal(read_actor(model.policy, layout), permuted)
    with pytest.raises(ValueError, match="non-finite"):
        load_actor(model.policy, layout, torch.full_like(flat, float("nan")))


def test_edge_layouts_found_by_property_testing() -> None:
    """A 0-dim parameter, repeated names, no parameters, the order of hidden groups (session 32's property tests)."""
    scalar = Layout.build({"s": (), "w": (2,)})
    out = scalar.unflatten(torch.tensor([1.0, 2.0, 3.0]))  # unbatched: reshape(()) had raised TypeError
    assert out["s"].shape == () and float(out["s"]) == 1.0 and out["w"].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        Layout.build({"a": (3,)}, names=["a", "a"])
    data = Layout.build({"a": (3,), "b": (2,)}).to_dict()
    data["params"][1]["name"] = "a"
    with pytest.raises(ValueError, match="repeated"):
        Layout.from_dict(data)
    for empty in (lambda: Layout.build({}), lambda: Layout.from_dict({"params": [], "layers": [], "groups": {}})):
        with pytest.raises(ValueError, match="at least one parameter"):  # had built, to fail later and less clearly
            empty()
    shapes = {"a.weight": (3, 2), "a.bias": (3,), "b.weight": (4, 3), "b.bias": (4,), "c.weight": (2, 4)}
    chain = [LayerSpec("a", None, "h0", "tanh"), LayerSpec("b", "h0", "h1", "tanh"), LayerSpec("c", "h1", None)]
    built = Layout.build(shapes, chain)
    data = built.to_dict()
    data["groups"] = dict(reversed(list(data["groups"].items())))  # a hand-edited spec.json
    reordered = Layout.from_dict(data)
    assert reordered != built and hash(reordered) != hash(built)  # equal layouts must build the same model
    assert Layout.from_dict(built.to_dict()) == built
