"""Novelty metrics: permutation alignment (known answers), nearest neighbours and the ratios built on them."""

from __future__ import annotations

import pytest
import torch

from rl_gpt.collect.sb3_run import build_model
from rl_gpt.config import load_config
from rl_gpt.evaluate import PolicySpec, policy_spec_from_sb3
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.sb3_policy import actor_layout, read_actor
from rl_gpt.supervised import build_classifier, classifier_layout
from rl_gpt.sweep.behaviour import action_disagreement, action_range, prediction_disagreement
from rl_gpt.sweep.novelty import (
    align,
    aligned_distance,
    behavioural_novelty,
    init_fidelity,
    match_units,
    nearest_aligned,
    novelty_ratio,
    proxy_features,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_hidden() -> Layout:
    """4 -> 16 -> 2 with a PPO-style ``log_std``."""
    shapes = {"0.weight": (16, 4), "0.bias": (16,), "out.weight": (2, 16), "out.bias": (2,), "log_std": (2,)}
    return Layout.build(shapes, [LayerSpec("0", None, "h0", "tanh"), LayerSpec("out", "h0", None)])


def _two_hidden() -> Layout:
    """4 -> 16 -> 8 -> 2."""
    shapes = {
        "0.weight": (16, 4),
        "0.bias": (16,),
        "2.weight": (8, 16),
        "2.bias": (8,),
        "out.weight": (2, 8),
        "out.bias": (2,),
    }
    layers = [LayerSpec("0", None, "h0", "tanh"), LayerSpec("2", "h0", "h1", "tanh"), LayerSpec("out", "h1", None)]
    return Layout.build(shapes, layers)


def _conv() -> Layout:
    """conv 3 -> 8 -> 6 channels (3x3 kernels, no biases), then a linear head on pooled channels."""
    shapes = {"c1.weight": (8, 3, 3, 3), "c2.weight": (6, 8, 3, 3), "fc.weight": (2, 6), "fc.bias": (2,)}
    layers = [LayerSpec("c1", None, "h0", "relu"), LayerSpec("c2", "h0", "h1", "relu"), LayerSpec("fc", "h1", None)]
    return Layout.build(shapes, layers)


LAYOUTS = {"one_hidden": _one_hidden, "two_hidden": _two_hidden, "conv": _conv}


def _forward(layout: Layout, flat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """(S, obs) -> (S, 2) through whichever of the two test MLPs ``layout`` is."""
    p = layout.unflatten(flat)
    h = torch.tanh(obs @ p["0.weight"].T + p["0.bias"])
    if "2.weight" in p:
        h = torch.tanh(h @ p["2.weight"].T + p["2.bias"])
    return h @ p["out.weight"].T + p["out.bias"]


def _permuted(layout: Layout, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Each row of ``x`` (B, D) with its hidden units randomly permuted."""
    g = torch.Generator().manual_seed(seed)
    return layout.permute(x, layout.random_permutations(x.shape[0], generator=g))


# ---------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("seed", range(5))
def test_hungarian_recovers_permutation_one_hidden(seed: int) -> None:
    layout = _one_hidden()
    x = torch.randn(1, layout.numel, generator=torch.Generator().manual_seed(seed))
    y = _permuted(layout, x, seed + 100)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(align(layout, x[0], y[0]), x[0], atol=1e-6, rtol=0)
    assert aligned_distance(layout, x[0], y[0]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", ["two_hidden", "conv"])
def test_coordinate_descent_recovers_permutation(name: str, seed: int) -> None:
    layout = LAYOUTS[name]()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, layout.numel, generator=g)
    noisy = x + 0.01 * torch.randn(x.shape, generator=g)
    y = _permuted(layout, noisy, seed + 100)
    # Exactly the unpermuted noisy copy: every unit is put back where it came from.
    torch.testing.assert_close(align(layout, x[0], y[0]), noisy[0], atol=1e-6, rtol=0)
    assert aligned_distance(layout, x[0], _permuted(layout, x, seed + 200)[0]) == pytest.approx(0.0, abs=1e-6)


def test_aligned_copy_computes_the_same_function() -> None:
    layout = _two_hidden()
    a, b = torch.randn(2, layout.numel, generator=torch.Generator().manual_seed(0))
    obs = torch.randn(32, 4)
    torch.testing.assert_close(_forward(layout, align(layout, a, b), obs), _forward(layout, b, obs))
    perms = match_units(layout, a, b)
    assert {g: sorted(p.tolist()) for g, p in perms.items()} == {g: list(range(n)) for g, n in layout.groups.items()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_aligned_distance_bounds_and_symmetry(name: str) -> None:
    layout = LAYOUTS[name]()
    x = torch.randn(6, layout.numel, generator=torch.Generator().manual_seed(1))
    for a, b in zip(x[::2], x[1::2]):
        d = aligned_distance(layout, a, b)
        assert d <= float(torch.dist(a, b)) + 1e-5
        assert d == pytest.approx(aligned_distance(layout, b, a), rel=1e-4)
        assert d == pytest.approx(float(torch.dist(a, align(layout, a, b))), rel=1e-5)  # numpy path == permute
        # the proxy is a lower bound of the aligned distance
        fa, fb = proxy_features(layout, torch.stack([a, b]))
        assert float(torch.dist(fa, fb)) <= d + 1e-4


def test_shape_mismatch_and_recurrent_groups_are_refused() -> None:
    layout = _one_hidden()
    with pytest.raises(ValueError, match="D="):
        aligned_distance(layout, torch.zeros(layout.numel), torch.zeros(layout.numel + 1))
    rnn = Layout.build({"r.weight": (4, 4)}, [LayerSpec("r", "h0", "h0")])
    with pytest.raises(ValueError, match="indexed twice"):
        aligned_distance(rnn, torch.zeros(16), torch.zeros(16))


# ---------------------------------------------------------------------------------- nearest neighbours
def test_nearest_aligned_finds_permuted_copy() -> None:
    layout = _two_hidden()
    g = torch.Generator().manual_seed(2)
    pool = torch.randn(1000, layout.numel, generator=g)
    rows = torch.tensor([3, 123, 999])
    queries = _permuted(layout, pool[rows] + 1e-3 * torch.randn(3, layout.numel, generator=g), 7)
    dist, index = nearest_aligned(layout, queries, pool, candidates=8)
    assert index.tolist() == rows.tolist()
    assert (dist < 0.05).all()


def test_nearest_aligned_matches_brute_force_with_all_candidates() -> None:
    layout = _one_hidden()
    g = torch.Generator().manual_seed(3)
    pool, queries = torch.randn(30, layout.numel, generator=g), torch.randn(4, layout.numel, generator=g)
    dist, index = nearest_aligned(layout, queries, pool, candidates=30)
    brute = torch.tensor([[aligned_distance(layout, q, p) for p in pool] for q in queries])
    torch.testing.assert_close(dist, brute.min(1).values.double(), rtol=1e-5, atol=1e-5)
    assert index.tolist() == brute.argmin(1).tolist()


def test_novelty_ratio() -> None:
    layout = _two_hidden()
    g = torch.Generator().manual_seed(4)
    pool = torch.randn(300, layout.numel, generator=g)
    heldout = torch.randn(40, layout.numel, generator=g)
    copies = novelty_ratio(layout, _permuted(layout, pool[:40], 5), pool, heldout)
    assert copies["ratio"] < 1e-3
    assert copies["nn_index_generated"] == list(range(40))
    fresh = novelty_ratio(layout, torch.randn(40, layout.numel, generator=g), pool, heldout)
    assert fresh["ratio"] == pytest.approx(1.0, abs=0.05)
    assert len(fresh["nn_dist_generated_per_sample"]) == 40 and len(fresh["nn_dist_heldout_per_sample"]) == 40


def test_init_fidelity() -> None:
    layout = _two_hidden()
    g = torch.Generator().manual_seed(5)
    inits = torch.randn(12, layout.numel, generator=g)
    near = _permuted(layout, inits + 0.1 * torch.randn(inits.shape, generator=g), 6)
    res = init_fidelity(layout, near, inits, inits)  # own init is left out of the "other" mean
    assert res["fidelity"] < 0.2
    unrelated = init_fidelity(layout, torch.randn(12, layout.numel, generator=g), inits, inits)
    assert unrelated["fidelity"] == pytest.approx(1.0, abs=0.1)
    assert len(unrelated["ratio_per_sample"]) == 12


def test_init_fidelity_leaves_each_policys_own_init_out_of_the_other_inits_mean() -> None:
    layout = _two_hidden()
    g = torch.Generator().manual_seed(7)
    inits = torch.randn(3, layout.numel, generator=g)
    policies = inits + 0.1 * torch.randn(inits.shape, generator=g)
    res = init_fidelity(layout, policies, inits, inits)
    for i in range(3):
        others = [aligned_distance(layout, policies[i], inits[j]) for j in range(3) if j != i]
        assert res["dist_other_mean"][i] == pytest.approx(sum(others) / 2, rel=1e-5)
        assert res["dist_own"][i] == pytest.approx(aligned_distance(layout, policies[i], inits[i]), rel=1e-5)
    assert res["fidelity"] == pytest.approx(sum(res["ratio_per_sample"]) / 3)


# ---------------------------------------------------------------------------------- behaviour
def test_behavioural_novelty() -> None:
    layout = _two_hidden()
    a, b = torch.randn(2, layout.numel, generator=torch.Generator().manual_seed(6))
    states = torch.randn(256, 4)
    perm = _permuted(layout, a[None], 8)[0]
    logits = lambda p: lambda s: _forward(layout, p, s)  # noqa: E731
    assert behavioural_novelty(logits(a), logits(perm), states, discrete=True) == 0.0
    assert behavioural_novelty(logits(a), lambda s: -_forward(layout, a, s), states, discrete=True) == 1.0
    assert 0.0 < behavioural_novelty(logits(a), logits(b), states, discrete=True) < 1.0
    # integer actions are discrete without saying so
    assert behavioural_novelty(lambda s: torch.zeros(len(s), dtype=torch.long), lambda s: (s[:, 0] > 0).long(), states)
    # continuous: differences below tol * range do not count
    assert behavioural_novelty(logits(a), lambda s: _forward(layout, a, s) + 0.05, states, tol=0.05) == 0.0
    assert behavioural_novelty(logits(a), lambda s: _forward(layout, a, s) + 0.2, states, tol=0.05) == 1.0


# ---------------------------------------------------------------------------------- behaviour in rollouts
def _sb3_actor(preset: str) -> tuple[Layout, PolicySpec, torch.Tensor, str]:
    """A fresh SB3 actor of ``preset``'s task: (layout, spec, flat params (D,), env id)."""
    task = load_config(preset, [], command="collect").task
    model = build_model(task, seed=0)
    layout = actor_layout(model.policy, task.algo)
    spec = policy_spec_from_sb3(model, task.algo, normalize_obs=task.normalize)
    return layout, spec, read_actor(model.policy, layout), task.env_id


def _shift(layout: Layout, flat: torch.Tensor, name: str, scale: float = 1.0, add: float = 0.0) -> torch.Tensor:
    """``flat`` with parameter ``name`` multiplied by ``scale`` and ``add`` added."""
    out, p = flat.clone(), layout[name]
    out[p.offset : p.stop] = out[p.offset : p.stop] * scale + add
    return out


def test_action_disagreement_discrete_known_answers() -> None:
    layout, spec, flat, env_id = _sb3_actor("cartpole")
    negated = _shift(layout, _shift(layout, flat, "action_net.weight", -1.0), "action_net.bias", -1.0)
    params = torch.stack([flat, flat])
    frac, seen = action_disagreement(layout, spec, env_id, params, torch.stack([flat, negated]), states=256)
    assert seen.tolist() == [256, 256]
    assert frac[0] == 0.0  # a policy against itself
    assert frac[1] > 0.95  # negated logits: the other action wherever the logits differ at all


def test_action_disagreement_continuous_uses_a_relative_tolerance() -> None:
    layout, spec, flat, env_id = _sb3_actor("pendulum")  # SAC, actions in [-2, 2]: tolerance 0.05 * 4 = 0.2
    assert action_range(spec).tolist() == [4.0]
    near = _shift(layout, flat, "actor.mu.bias", add=0.05)  # moves actions by <= 0.1
    far = _shift(layout, flat, "actor.mu.bias", add=1.0)  # a fresh actor's mu is ~0: actions move by > 1
    params = torch.stack([flat, flat, flat])
    frac, seen = action_disagreement(layout, spec, env_id, params, torch.stack([flat, near, far]), states=128)
    assert frac.tolist() == [0.0, 0.0, 1.0] and seen.tolist() == [128] * 3
    assert action_disagreement(layout, spec, env_id, params[:1], near[None], states=128, tol=0.001)[0][0] == 1.0


def test_action_disagreement_on_the_gymnasium_fallback() -> None:
    layout, spec, flat, env_id = _sb3_actor("inverted_pendulum")  # MuJoCo: no torch dynamics
    far = _shift(layout, flat, "action_net.bias", add=1.0)  # actions in [-3, 3]: 1.0 > 0.05 * 6
    obs = torch.zeros(spec.obs_dim), torch.ones(spec.obs_dim)  # VecNormalize statistics, shared
    frac, seen = action_disagreement(
        layout,
        spec,
        env_id,
        torch.stack([flat, flat]),
        torch.stack([flat, far]),
        states=64,
        obs_mean=obs[0],
        obs_var=obs[1],
    )
    assert frac.tolist() == [0.0, 1.0]
    assert ((seen > 0) & (seen <= 64)).all()  # the autoreset steps are not counted


def test_prediction_disagreement_known_answers() -> None:
    layout = classifier_layout("digits_mlp")
    flat = layout.flatten(build_classifier("digits_mlp").state_dict())
    negated = _shift(layout, _shift(layout, flat, "fc2.weight", -1.0), "fc2.bias", -1.0)
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(0))
    frac = prediction_disagreement(layout, "digits_mlp", torch.stack([flat, flat]), torch.stack([flat, negated]), x)
    assert frac[0] == 0.0 and frac[1] == 1.0  # argmin is never argmax (no ties among 10 random logits)


def _rescaled(name: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A classifier and a copy whose every ReLU unit is scaled by c in [1/3, 3] going in and 1/c going out."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net, copy = build_classifier(name), build_classifier(name)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    layout = classifier_layout(name)
    for layer in layout.layers:
        if layer.out_group is None:
            continue
        c = torch.exp((torch.rand(layout.groups[layer.out_group], generator=g) * 2 - 1) * torch.log(torch.tensor(3.0)))
        weight = state[f"{layer.prefix}.weight"]
        weight *= c.view(-1, *[1] * (weight.dim() - 1))
        if f"{layer.prefix}.bias" in state:
            state[f"{layer.prefix}.bias"] *= c
        reader = next(r for r in layout.layers if r.in_group == layer.out_group)
        w = state[f"{reader.prefix}.weight"]
        w /= c.view(1, -1, *[1] * (w.dim() - 2))
    copy.load_state_dict(state)
    return net, copy


@pytest.mark.parametrize("name", ["digits_mlp", "cifar_cnn"])
def test_canonical_scale_sees_through_a_rescaled_copy(name: str) -> None:
    """A ReLU unit scaled by c going in and 1/c going out is the same function; session 35's audit found
    such a copy scored novelty 1.19, above the generator it was meant to judge."""
    from rl_gpt.sweep.novelty import canonical_scale

    net, copy = _rescaled(name, 0)
    layout = classifier_layout(name)
    x = torch.randn(5, *((64,) if name == "digits_mlp" else (3, 32, 32)))
    torch.testing.assert_close(copy(x), net(x), rtol=1e-4, atol=1e-5)  # the same function
    a, b = layout.flatten(net.state_dict())[None], layout.flatten(copy.state_dict())[None]
    assert aligned_distance(layout, a[0], b[0]) > 0.1 * float(a.norm())  # far apart as weights
    ca, cb = canonical_scale(layout, a), canonical_scale(layout, b)
    assert aligned_distance(layout, ca[0], cb[0]) == pytest.approx(0.0, abs=1e-4 * float(ca.norm()))
    rescaled = build_classifier(name)
    rescaled.load_state_dict(layout.unflatten(ca[0]))
    torch.testing.assert_close(rescaled(x), net(x), rtol=1e-4, atol=1e-5)  # and canonical keeps it too
    # rescaling commutes with permuting units: a permuted copy gets the same canonical weights, permuted
    torch.testing.assert_close(canonical_scale(layout, _permuted(layout, b, 3)).norm(), cb.norm())


def test_canonical_scale_leaves_tanh_units_alone() -> None:
    from rl_gpt.sweep.novelty import canonical_scale

    layout = _two_hidden()
    x = torch.randn(3, layout.numel)
    assert torch.equal(canonical_scale(layout, x), x)


def test_canonical_scale_takes_an_empty_batch_and_keeps_nan_rows() -> None:
    from rl_gpt.sweep.novelty import canonical_scale

    layout = classifier_layout("digits_mlp")
    assert canonical_scale(layout, torch.zeros(0, layout.numel)).shape == (0, layout.numel)
    x = torch.randn(2, layout.numel)
    x[1, 5] = float("nan")
    out = canonical_scale(layout, x)
    assert torch.isfinite(out[0]).all() and out[1].isnan().any()


def test_a_matched_reference_draws_among_tied_checkpoints() -> None:
    """Many held-out checkpoints share a metric (CartPole's 500, errors counted in test images): each
    network's reference is drawn among all of them, not the first one every time (session 35's review)."""
    from rl_gpt.sweep.audit import _matched_rows

    rows = torch.arange(100, 140)
    metric = torch.tensor([float(i) for i in range(20)] + [500.0] * 20, dtype=torch.float64)
    wanted = torch.full((64,), 500.0)
    picked = _matched_rows(rows, metric, wanted, torch.Generator().manual_seed(0))
    assert set(picked.tolist()) <= set(range(120, 140)) and len(set(picked.tolist())) > 10
    assert _matched_rows(rows, metric, torch.tensor([3.2, 7.0]), torch.Generator()).tolist() == [103, 107]


def test_the_novelty_audit_divides_by_held_out_checkpoints_of_the_metric_achieved(tmp_path, monkeypatch) -> None:
    """Known answers for the sweep's novelty column: a copy of a training checkpoint scores 0, and a held-out
    checkpoint handed in as a "generated" network scores 1, since its reference is itself (the held-out
    checkpoint nearest its metric), not the held-out runs' final checkpoints (the reference before session 35)."""
    import rl_gpt.sweep.audit as audit
    from rl_gpt.dataset import CheckpointDataset, DatasetWriter

    # ReLU units: a network is compared as canonical_scale writes it, whatever the scale of its units
    shapes = {"0.weight": (16, 4), "0.bias": (16,), "out.weight": (2, 16), "out.bias": (2,)}
    layout = Layout.build(shapes, [LayerSpec("0", None, "h0", "relu"), LayerSpec("out", "h0", None)])
    g = torch.Generator().manual_seed(0)
    meta = {"task": {"name": "toy"}, "metric": {"name": "return", "higher_is_better": True}}
    w = DatasetWriter(tmp_path / "ds", meta | {"layout": layout.to_dict()})
    for run in range(4):  # runs 0-2 train, run 3 is held out; each moves away from its init as it learns
        init = torch.randn(layout.numel, generator=g)
        params = torch.stack([init + i * torch.randn(layout.numel, generator=g) for i in range(4)])
        metric = torch.tensor([10.0, 100.0, 200.0, 300.0]) + run  # distinct labels: no ties to draw among
        w.add_run(run, {"params": params, "metric": metric, "step": torch.arange(4) * 100}, {})
    w.consolidate()
    ds = CheckpointDataset(tmp_path / "ds")
    monkeypatch.setattr(audit, "_behavioural", lambda *args: {})  # rollouts are behaviour's own tests
    slices = ds.run_slices()
    pool = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in (0, 1, 2)])
    held = slices[3].start + 1  # the held-out run's 2nd and 3rd checkpoints (metrics 103, 203), not its final one
    methods = {
        "generator": (ds.data["params"][held : held + 2].float(), torch.tensor([103.0, 203.0])),
        "retrieval": (ds.data["params"][pool[5]].float()[None].expand(2, -1), torch.full((2,), 101.0)),
    }
    inits = torch.randn(2, layout.numel, generator=g)
    out = audit.novelty_audit(ds, methods, inits, pool, [0, 1, 2], [3])
    assert out["novelty"]["generator"] == pytest.approx(1.0)
    assert out["novelty"]["matched_heldout_rows"] == [held, held + 1]  # each by its own metric
    assert out["novelty"]["retrieval"] == 0.0  # the whole pool is searched
    from rl_gpt.sweep.novelty import canonical_scale

    def nearest(rows: slice) -> float:
        networks = canonical_scale(layout, ds.data["params"][rows].float())
        return float(nearest_aligned(layout, networks, canonical_scale(layout, ds.data["params"][pool].float()))[0][0])

    final = nearest(slice(slices[3].stop - 1, slices[3].stop))
    assert out["novelty"]["nn_dist_heldout"] == pytest.approx(final)
    generated = (nearest(slice(held, held + 1)) + nearest(slice(held + 1, held + 2))) / 2
    reference = out["novelty"]["final_checkpoint_reference"]["generator"]
    assert reference == pytest.approx(generated / final) and reference != pytest.approx(1.0)
