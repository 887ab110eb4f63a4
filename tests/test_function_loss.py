"""The function-space loss: probe outputs agree with the evaluator, see through permutations, and train."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.evaluate.policy import BatchedPolicy, PolicySpec
from rl_gpt.evaluate.states import visited_observations
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import build_model
from rl_gpt.supervised import classifier_logits
from rl_gpt.supervised.models import classifier_layout
from rl_gpt.train.function_loss import FunctionProbe
from rl_gpt.train.generator import ParameterGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

# CartPole's actor shape, small: 4 -> 8 -> 8 -> 2 logits.
LAYOUT = Layout.build(
    {
        "mlp_extractor.policy_net.0.weight": (8, 4),
        "mlp_extractor.policy_net.0.bias": (8,),
        "mlp_extractor.policy_net.2.weight": (8, 8),
        "mlp_extractor.policy_net.2.bias": (8,),
        "action_net.weight": (2, 8),
        "action_net.bias": (2,),
    },
    [
        LayerSpec("mlp_extractor.policy_net.0", None, "h0", "tanh"),
        LayerSpec("mlp_extractor.policy_net.2", "h0", "h1", "tanh"),
        LayerSpec("action_net", "h1", None),
    ],
)
SPEC = PolicySpec(algo="ppo", head="categorical", activation="tanh", obs_dim=4, action_dim=1, n_actions=2)


def _params(b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, LAYOUT.numel, generator=torch.Generator().manual_seed(seed))


def test_policy_probe_outputs_are_the_evaluators_action_probabilities() -> None:
    params, obs = _params(3, 0), torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    probe = FunctionProbe(LAYOUT, obs, "policy", spec=SPEC)
    policy = BatchedPolicy(LAYOUT, SPEC)
    logits = policy.outputs(policy.prepare(params), obs.expand(3, 16, 4))[0]
    torch.testing.assert_close(probe(params), logits.softmax(-1))


def test_classifier_probe_outputs_are_class_probabilities() -> None:
    layout = classifier_layout("digits_mlp")
    params = torch.randn(2, layout.numel, generator=torch.Generator().manual_seed(2)) * 0.1
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(3))
    probe = FunctionProbe(layout, x, "classifier", network="digits_mlp")
    torch.testing.assert_close(probe(params), classifier_logits(params, layout, "digits_mlp", x).softmax(-1))


def test_the_loss_is_zero_for_a_permuted_network_and_positive_for_another() -> None:
    params = _params(4, 4)
    perms = LAYOUT.random_permutations(4, torch.Generator().manual_seed(5))
    permuted = params.gather(1, LAYOUT.permutation_index(perms, 4))
    assert not torch.equal(permuted, params)
    probe = FunctionProbe(LAYOUT, torch.randn(32, 4, generator=torch.Generator().manual_seed(6)), "policy", spec=SPEC)
    assert probe.loss(permuted, params).abs().max() < 1e-10
    assert (probe.loss(_params(4, 7), params) > 1e-3).all()


def test_kl_compares_probabilities_as_the_test_loss_weighs_them() -> None:
    """KL(target ‖ estimate) per probe input, averaged: it sees a confident output's misses, which the
    squared difference of probabilities hardly does, and it is zero for a permuted copy."""
    layout = classifier_layout("digits_mlp")
    target = torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(2)) * 0.3
    other = target + 0.05 * torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(4))
    x = torch.rand(7, 64, generator=torch.Generator().manual_seed(3))
    kl = FunctionProbe(layout, x, "classifier", network="digits_mlp", compare="kl")
    p, q = (classifier_logits(w, layout, "digits_mlp", x).softmax(-1).double() for w in (target, other))
    torch.testing.assert_close(
        kl.loss(other, target).double(), (p * (p / q).log()).sum(-1).mean(1), rtol=1e-4, atol=1e-7
    )
    assert (kl.loss(other, target) > 0).all() and kl.loss(target, target).abs().max() < 1e-6
    perms = LAYOUT.random_permutations(2, torch.Generator().manual_seed(5))
    params = _params(2, 8)
    policy_kl = FunctionProbe(
        LAYOUT, torch.randn(9, 4, generator=torch.Generator().manual_seed(6)), "policy", spec=SPEC, compare="kl"
    )
    assert policy_kl.loss(params.gather(1, LAYOUT.permutation_index(perms, 2)), params).abs().max() < 1e-6
    gaussian = PolicySpec("ppo", "gaussian", "tanh", obs_dim=4, action_dim=2, action_low=(-1, -1), action_high=(1, 1))
    with pytest.raises(ValueError, match="use train.function_compare=mse for continuous actions"):
        FunctionProbe(LAYOUT, torch.zeros(1, 4), "policy", spec=gaussian, compare="kl")


def test_the_sac_head_compares_the_deterministic_action() -> None:
    layout = Layout.build(
        {
            "latent_pi.0.weight": (5, 3),
            "latent_pi.0.bias": (5,),
            "mu.weight": (1, 5),
            "mu.bias": (1,),
            "log_std.weight": (1, 5),
            "log_std.bias": (1,),
        },
        [LayerSpec("latent_pi.0", None, "h0", "relu"), LayerSpec("mu", "h0", None), LayerSpec("log_std", "h0", None)],
    )
    spec = PolicySpec(
        algo="sac",
        head="squashed_gaussian",
        activation="relu",
        obs_dim=3,
        action_dim=1,
        action_low=(-2.0,),
        action_high=(2.0,),
    )
    params = torch.randn(2, layout.numel, generator=torch.Generator().manual_seed(8))
    obs = torch.randn(10, 3, generator=torch.Generator().manual_seed(9))
    out = FunctionProbe(layout, obs, "policy", spec=spec)(params)  # tanh(mu) in [-1, 1]
    action = BatchedPolicy(layout, spec).act(params, obs.expand(2, 10, 3))  # 2 · tanh(mu)
    torch.testing.assert_close(2 * out, action)
    other = params.clone()
    entry = layout["log_std.weight"]
    other[:, entry.offset : entry.stop] += 5.0  # the log-std does not change the deterministic action
    torch.testing.assert_close(FunctionProbe(layout, obs, "policy", spec=spec).loss(other, params), torch.zeros(2))


def test_visited_observations_are_states_of_the_task() -> None:
    obs = visited_observations(LAYOUT, SPEC, "CartPole-v1", _params(3, 10), steps=50, seed=0)
    assert obs.shape == (150, 4)
    assert obs[:, 0].abs().max() <= 2.4 + 0.5 and obs[:, 2].abs().max() <= 0.2095 + 0.1  # within termination bounds
    again = visited_observations(LAYOUT, SPEC, "CartPole-v1", _params(3, 10), steps=50, seed=0)
    torch.testing.assert_close(obs, again)


PPO_LAYOUT = Layout.build(
    {
        "mlp_extractor.policy_net.0.weight": (8, 4),
        "mlp_extractor.policy_net.0.bias": (8,),
        "action_net.weight": (1, 8),
        "action_net.bias": (1,),
        "log_std": (1,),
    },
    [LayerSpec("mlp_extractor.policy_net.0", None, "h0", "tanh"), LayerSpec("action_net", "h0", None)],
)


def _ppo_spec(low: float, high: float) -> PolicySpec:
    return PolicySpec(
        algo="ppo", head="gaussian", activation="tanh", obs_dim=4, action_dim=1, action_low=(low,), action_high=(high,)
    )


def test_gymnasium_states_leave_out_the_observation_that_ends_an_episode() -> None:
    # Random InvertedPendulum policies fall within a few steps; the env ends an episode once the
    # pole leans beyond 0.2 rad, so every state a policy acts in has |angle| <= 0.2.
    params = torch.randn(2, PPO_LAYOUT.numel, generator=torch.Generator().manual_seed(13)) * 3
    obs = visited_observations(PPO_LAYOUT, _ppo_spec(-3.0, 3.0), "InvertedPendulum-v5", params, steps=40, seed=0)
    assert 0 < len(obs) < 80 and obs.shape[1] == 4
    assert obs[:, 1].abs().max() <= 0.2


def test_the_gaussian_head_compares_clipped_actions_even_with_unbounded_actions() -> None:
    params = torch.randn(3, PPO_LAYOUT.numel, generator=torch.Generator().manual_seed(14))
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(15))
    bounded = FunctionProbe(PPO_LAYOUT, obs, "policy", spec=_ppo_spec(-0.1, 0.1))
    action = BatchedPolicy(PPO_LAYOUT, _ppo_spec(-0.1, 0.1)).act(params, obs.expand(3, 8, 4))
    torch.testing.assert_close(bounded(params), action / 0.1)  # in units of half the range
    unbounded = FunctionProbe(PPO_LAYOUT, obs, "policy", spec=_ppo_spec(-float("inf"), float("inf")))
    assert torch.isfinite(unbounded.loss(params, params.flip(0))).all()


def _generator() -> ParameterGenerator:
    torch.manual_seed(0)
    d = LAYOUT.numel
    norm = Normalizer(torch.zeros(d), torch.ones(d), torch.ones(d), 0.0, 500.0)
    return ParameterGenerator(build_model("tiny", LAYOUT), GaussianDiffusion(prediction="v"), norm, LAYOUT)


def _batch() -> TensorDict:
    g = torch.Generator().manual_seed(11)
    return TensorDict(
        {
            "theta": torch.randn(8, LAYOUT.numel, generator=g),
            "metric": torch.rand(8, generator=g) * 100,
            "theta_next": torch.randn(8, LAYOUT.numel, generator=g),
            "metric_next": torch.rand(8, generator=g) * 500,
        },
        batch_size=[8],
    )


def test_generator_loss_adds_the_signal_weighted_function_term() -> None:
    gen, batch = _generator(), _batch()
    probe = FunctionProbe(LAYOUT, torch.randn(16, 4, generator=torch.Generator().manual_seed(12)), "policy", spec=SPEC)
    plain, extras = gen.loss(batch, torch.Generator().manual_seed(0))
    off, _ = gen.loss(batch, torch.Generator().manual_seed(0), function_probe=probe.loss, function_weight=0.0)
    on, extras_on = gen.loss(batch, torch.Generator().manual_seed(0), function_probe=probe.loss, function_weight=3.0)
    assert torch.equal(plain, off) and "function" not in extras
    signal = gen.diffusion.schedule.alphas_cumprod.float()[extras_on["t"]]
    torch.testing.assert_close(on, plain + (3.0 * signal * extras_on["function"]).mean())
    (on - plain).backward()  # the function term alone reaches the network's weights
    assert sum(p.grad.abs().sum() for p in gen.model.parameters() if p.grad is not None) > 0


def test_the_signal_power_sets_the_function_terms_weight_over_noise_levels() -> None:
    gen, batch = _generator(), _batch()
    probe = FunctionProbe(LAYOUT, torch.randn(16, 4, generator=torch.Generator().manual_seed(12)), "policy", spec=SPEC)
    plain, _ = gen.loss(batch, torch.Generator().manual_seed(0))
    kw = {"function_probe": probe.loss, "function_weight": 3.0}
    uniform, extras = gen.loss(batch, torch.Generator().manual_seed(0), function_signal_power=0.0, **kw)
    torch.testing.assert_close(uniform, plain + (3.0 * extras["function"]).mean())
    half, extras = gen.loss(batch, torch.Generator().manual_seed(0), function_signal_power=0.5, **kw)
    signal = gen.diffusion.schedule.alphas_cumprod.float()[extras["t"]]
    torch.testing.assert_close(half, plain + (3.0 * signal.sqrt() * extras["function"]).mean())
