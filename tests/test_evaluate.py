"""Batched evaluation: known answers against SB3's own predict / evaluate_policy, and rollout contracts."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import pathlib
import pickle
import zipfile
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from rl_gpt.cli import main
from rl_gpt.envs import DYNAMICS
from rl_gpt.evaluate import (
    BatchedPolicy,
    EvalResult,
    PolicyFileError,
    PolicySpec,
    detect_algo,
    evaluate_params,
    evaluate_sb3_file,
    fold_obs_normalisation,
    infer_env_id,
    load_sb3_policy,
    policy_spec_from_sb3,
)
from rl_gpt.evaluate.sb3 import read_sb3_file
from rl_gpt.sb3_policy import actor_layout, read_actor

PI = [16, 8]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    # SB3 training on a shared 2-core box: intra-op threads only add barrier waits.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def make_model(algo: str, env_id: str, seed: int, net_arch: list[int] = PI, **kwargs) -> PPO | SAC:
    if algo == "ppo":
        return PPO(
            "MlpPolicy",
            env_id,
            policy_kwargs={"net_arch": {"pi": net_arch, "vf": [8]}},
            seed=seed,
            device="cpu",
            **kwargs,
        )
    return SAC(
        "MlpPolicy",
        env_id,
        policy_kwargs={"net_arch": {"pi": net_arch, "qf": [8]}},
        seed=seed,
        device="cpu",
        buffer_size=1000,
        **kwargs,
    )


def actor_of(model: PPO | SAC, algo: str, **spec_kwargs) -> tuple:
    layout = actor_layout(model.policy, algo)
    return layout, policy_spec_from_sb3(model, algo, **spec_kwargs), read_actor(model.policy, layout)


def sample_obs(model: PPO | SAC, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    space = model.observation_space
    # Unbounded Box dims (CartPole velocities) get a unit normal, as Box.sample does.
    low = np.where(np.isfinite(space.low), space.low, -3.0)
    high = np.where(np.isfinite(space.high), space.high, 3.0)
    return rng.uniform(low, high, size=(n, *space.shape)).astype(np.float32)


CASES = [("ppo", "CartPole-v1"), ("ppo", "Pendulum-v1"), ("sac", "Pendulum-v1")]


# ---------------------------------------------------------------------------------------- spec
def test_policy_spec_round_trips_through_json() -> None:
    model = make_model("ppo", "Pendulum-v1", 0)
    _, spec, _ = actor_of(model, "ppo", normalize_obs=True, clip_obs=5.0)
    assert spec.head == "gaussian" and spec.action_dim == 1 and spec.action_low == (-2.0,)
    assert PolicySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="n_actions"):
        PolicySpec(algo="ppo", head="categorical", activation="tanh", obs_dim=4, action_dim=1)


# ---------------------------------------------------------------------------------------- actions
@pytest.mark.parametrize("algo,env_id", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deterministic_actions_equal_sb3_predict(algo: str, env_id: str, seed: int) -> None:
    model = make_model(algo, env_id, seed)
    layout, spec, flat = actor_of(model, algo)
    obs = sample_obs(model, 256, seed)
    expected, _ = model.predict(obs, deterministic=True)
    got = BatchedPolicy(layout, spec).act(flat[None], torch.from_numpy(obs)[None], deterministic=True)[0]
    if spec.discrete:
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), expected)
    else:
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)


def test_ppo_gaussian_actions_are_clipped_like_sb3() -> None:
    model = make_model("ppo", "Pendulum-v1", 3)
    with torch.no_grad():
        model.policy.action_net.weight.copy_(torch.randn(1, PI[-1], generator=torch.Generator().manual_seed(0)))
    layout, spec, flat = actor_of(model, "ppo")
    obs = sample_obs(model, 256, 3)
    expected, _ = model.predict(obs, deterministic=True)
    got = BatchedPolicy(layout, spec).act(flat[None], torch.from_numpy(obs)[None])[0].numpy()
    assert 0.2 < (np.abs(expected) == 2.0).mean() < 0.9, "the test needs clipping active on part of the batch"
    np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("algo,env_id", CASES)
@pytest.mark.parametrize("net_arch", [PI, [64, 32]], ids=["narrow", "wide"])  # both CPU matmul kernels
def test_batch_of_policies_equals_separate_predictions(algo: str, env_id: str, net_arch: list[int]) -> None:
    models = [make_model(algo, env_id, seed, net_arch) for seed in range(5)]
    layout, spec, _ = actor_of(models[0], algo)
    params = torch.stack([read_actor(m.policy, layout) for m in models])  # (B, D)
    obs = np.stack([sample_obs(m, 64, 10 + i) for i, m in enumerate(models)])  # (B, E, obs_dim)
    got = BatchedPolicy(layout, spec).act(params, torch.from_numpy(obs)).numpy()
    for b, m in enumerate(models):
        expected, _ = m.predict(obs[b], deterministic=True)
        np.testing.assert_allclose(got[b], expected, atol=2e-6)


@pytest.mark.parametrize("algo,env_id", CASES)
def test_normalized_obs_equal_vecnormalize_then_predict(algo: str, env_id: str) -> None:
    model = make_model(algo, env_id, 4)
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(env_id)]), clip_obs=2.5)
    rng = np.random.default_rng(0)
    venv.obs_rms.mean = rng.normal(size=venv.obs_rms.mean.shape)
    venv.obs_rms.var = rng.uniform(0.05, 3.0, size=venv.obs_rms.var.shape)
    layout, spec, flat = actor_of(model, algo, normalize_obs=True, clip_obs=2.5, norm_epsilon=venv.epsilon)
    obs = sample_obs(model, 256, 5)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    mean = torch.as_tensor(venv.obs_rms.mean)[None]  # (1, obs_dim)
    var = torch.as_tensor(venv.obs_rms.var)[None]
    got = BatchedPolicy(layout, spec).act(flat[None], torch.from_numpy(obs)[None], obs_mean=mean, obs_var=var)[0]
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)


@pytest.mark.parametrize(
    ("algo", "net_arch"), [("ppo", PI), ("sac", PI), ("sac", [])], ids=["ppo", "sac", "sac-no-hidden"]
)
def test_folded_policy_on_raw_obs_equals_vecnormalize_then_predict(algo: str, net_arch: list[int]) -> None:
    # Three policies with their own statistics, as a collection stores them (one row each).
    models = [make_model(algo, "Pendulum-v1", seed, net_arch) for seed in range(3)]
    layout, spec, _ = actor_of(models[0], algo)
    rng = np.random.default_rng(1)
    venvs = [VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), clip_obs=10.0) for _ in models]
    for venv in venvs:
        venv.obs_rms.mean = rng.normal(size=3)
        venv.obs_rms.var = rng.uniform(0.05, 4.0, size=3)
    mean = torch.as_tensor(np.stack([v.obs_rms.mean for v in venvs]), dtype=torch.float32)  # (B, obs_dim)
    var = torch.as_tensor(np.stack([v.obs_rms.var for v in venvs]), dtype=torch.float32)
    params = torch.stack([read_actor(m.policy, layout) for m in models])
    folded = fold_obs_normalisation(params, layout, mean, var, venvs[0].epsilon)
    assert not torch.allclose(folded, params)
    raw = BatchedPolicy(layout, spec)  # the spec of a folded dataset: normalize_obs False
    for b, (m, venv) in enumerate(zip(models, venvs)):
        obs = sample_obs(m, 512, b)
        # The folded policy does not clip: compare where VecNormalize's clip is inactive.
        inside = np.abs((obs - venv.obs_rms.mean) / np.sqrt(venv.obs_rms.var + venv.epsilon)).max(1) < venv.clip_obs
        assert inside.sum() > 256
        expected, _ = m.predict(venv.normalize_obs(obs[inside]), deterministic=True)
        got = raw.act(folded[b : b + 1], torch.from_numpy(obs[inside])[None])[0]
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_folding_identity_statistics_changes_nothing() -> None:
    model = make_model("ppo", "CartPole-v1", 0)
    layout, _, flat = actor_of(model, "ppo")
    folded = fold_obs_normalisation(flat[None], layout, torch.zeros(4), torch.ones(4), 0.0)
    assert torch.equal(folded[0], flat)
    with pytest.raises(ValueError, match="reads 4 features"):
        fold_obs_normalisation(flat[None], layout, torch.zeros(3), torch.ones(3))


def test_folding_zeroes_a_feature_that_never_varies() -> None:
    model = make_model("ppo", "CartPole-v1", 0)
    layout, spec, flat = actor_of(model, "ppo")
    mean, var = torch.tensor([0.1, 0.0, -0.2, 0.3]), torch.tensor([0.5, 1e-9, 2.0, 1.0])
    folded = fold_obs_normalisation(flat[None], layout, mean, var)
    first = layout.unflatten(folded)[f"{layout.layers[0].prefix}.weight"][0]  # (hidden, 4)
    assert torch.equal(first[:, 1], torch.zeros_like(first[:, 1])) and folded.abs().max() < 100
    # with the dead feature at its mean, the folded policy acts like the normalised one
    obs = torch.randn(1, 64, 4) * var.clamp_min(0.1).sqrt() + mean
    obs[..., 1] = mean[1]
    policy = BatchedPolicy(layout, spec)
    normalised = ((obs - mean) / (var + 1e-8).sqrt()).clamp(-10, 10)
    torch.testing.assert_close(policy.act(folded, obs), policy.act(flat[None], normalised))


def test_generated_policies_of_an_unfolded_dataset_get_its_runs_final_statistics(tmp_path) -> None:
    from rl_gpt.dataset import CheckpointDataset, DatasetWriter
    from rl_gpt.evaluate.dataset_metric import obs_stats
    from rl_gpt.layout import LayerSpec, Layout

    layout = Layout.build({"l.weight": (1, 2), "l.bias": (1,)}, [LayerSpec("l", None, None)])
    spec = {"task": {"name": "toy"}, "metric": {"name": "return"}, "layout": layout.to_dict()}
    writer = DatasetWriter(tmp_path / "ds", spec | {"policy": {"normalize_obs": True}})
    for run, scale in enumerate((1.0, 3.0, 100.0)):
        steps = torch.arange(3, dtype=torch.float32)[:, None]  # statistics drift as a run trains
        rows = {"params": torch.zeros(3, 3), "metric": torch.zeros(3), "step": torch.arange(3)}
        rows |= {"obs_mean": scale * (steps + torch.tensor([0.0, 10.0])), "obs_var": scale * (steps + 1).expand(3, 2)}
        writer.add_run(run, rows, {})
    writer.consolidate()
    mean, var = obs_stats(CheckpointDataset(tmp_path / "ds"), [0, 1])  # run 2 is held out
    torch.testing.assert_close(mean, torch.tensor([4.0, 24.0]))  # (1 * [2, 12] + 3 * [2, 12]) / 2
    torch.testing.assert_close(var, torch.tensor([6.0, 6.0]))


def test_stochastic_actions_follow_sb3_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    # Categorical: sampled frequencies match softmax(logits).
    model = make_model("ppo", "CartPole-v1", 0)
    with torch.no_grad():
        model.policy.action_net.weight.mul_(50.0)
    layout, spec, flat = actor_of(model, "ppo")
    obs = torch.from_numpy(sample_obs(model, 4, 0))  # (E, obs_dim)
    probs = model.policy.get_distribution(obs).distribution.probs  # (E, 2)
    reps = obs.repeat(4000, 1, 1)  # (B, E, obs_dim): same weights, 4000 draws
    actions = BatchedPolicy(layout, spec).act(flat.expand(4000, -1), reps, deterministic=False, generator=gen)
    freq = actions.float().mean(0)  # (E,) frequency of action 1
    assert torch.allclose(freq, probs[:, 1], atol=0.03)
    # SAC: samples stay inside the bounds and spread around the deterministic action.
    sac = make_model("sac", "Pendulum-v1", 0)
    layout, spec, flat = actor_of(sac, "sac")
    obs = torch.from_numpy(sample_obs(sac, 3, 1)).expand(2000, 3, 3)
    policy = BatchedPolicy(layout, spec)
    noisy = policy.act(flat.expand(2000, -1), obs, deterministic=False, generator=gen)
    assert noisy.abs().max() <= 2.0 and noisy.std(0).min() > 0.1


def test_a_sac_log_std_beyond_sb3s_clamp_samples_as_sb3_does() -> None:
    # SB3 clamps SAC's log-std to [-20, 2]: a generated actor asking for log-std 10 samples with std e^2,
    # so about 2·Φ(e^-2) − 1 = 10.8 % of its pre-tanh draws fall within ±1 (|action| < 0.76 · 2).
    sac = make_model("sac", "Pendulum-v1", 0)
    with torch.no_grad():
        for name, value in (("mu", 0.0), ("log_std", 10.0)):
            head = getattr(sac.actor, name)
            head.weight.zero_()
            head.bias.fill_(value)
    layout, spec, flat = actor_of(sac, "sac")
    obs = torch.from_numpy(sample_obs(sac, 4, 0)).expand(5000, 4, 3)
    gen = torch.Generator().manual_seed(0)
    actions = BatchedPolicy(layout, spec).act(flat.expand(5000, -1), obs, deterministic=False, generator=gen)
    expected = math.erf(math.exp(-2.0) / math.sqrt(2.0))
    assert float((actions.abs() < 2.0 * math.tanh(1.0)).float().mean()) == pytest.approx(expected, abs=0.01)
    torch.manual_seed(0)
    with torch.no_grad():  # SB3's own draws, scaled to [-1, 1]
        mean, log_std, _ = sac.actor.get_action_dist_params(obs.reshape(-1, 3))
        theirs = sac.actor.action_dist.actions_from_params(mean, log_std)
    assert float((theirs.abs() < math.tanh(1.0)).float().mean()) == pytest.approx(expected, abs=0.01)


# ---------------------------------------------------------------------------------------- rollouts
@pytest.fixture(scope="module")
def briefly_trained() -> PPO:
    """PPO on CartPole after two short updates: better than random, episodes still short."""
    with one_thread():
        model = make_model("ppo", "CartPole-v1", 0, n_steps=512, batch_size=128, n_epochs=4, learning_rate=3e-3)
        model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-* folder
        model.learn(1024)
    return model


def sb3_episode_returns(model: PPO, env_id: str, episodes: int, seed: int) -> np.ndarray:
    env = DummyVecEnv([lambda: Monitor(gym.make(env_id))])
    env.seed(seed)
    rewards, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    return np.asarray(rewards, dtype=np.float64)


def assert_same_mean(ours: torch.Tensor, theirs: np.ndarray, z: float = 4.0) -> None:
    """Means of two independent samples agree within z standard errors."""
    a, b = ours.double().numpy().ravel(), theirs
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert abs(a.mean() - b.mean()) <= z * se + 1e-9, (a.mean(), b.mean(), se)


def test_evaluate_params_agrees_with_evaluate_policy(briefly_trained: PPO) -> None:
    layout, spec, flat = actor_of(briefly_trained, "ppo")
    with one_thread():
        ours = evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=400, seed=1)
        theirs = sb3_episode_returns(briefly_trained, "CartPole-v1", 150, seed=2)
    assert ours.returns.shape == (1, 400) and torch.equal(ours.returns, ours.lengths.double())
    assert theirs.std() > 0 and theirs.mean() > 12  # a non-trivial return distribution to compare
    assert_same_mean(ours.returns, theirs)


@pytest.mark.slow
def test_evaluate_params_agrees_with_evaluate_policy_after_training() -> None:
    with one_thread():
        model = make_model("ppo", "CartPole-v1", 1, n_steps=1024, batch_size=256, n_epochs=5, learning_rate=3e-3)
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(12_000)
        layout, spec, flat = actor_of(model, "ppo")
        ours = evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=500, seed=3)
        theirs = sb3_episode_returns(model, "CartPole-v1", 120, seed=4)
    assert theirs.mean() > 60, "training should have helped"
    assert_same_mean(ours.returns, theirs)


def test_sac_pendulum_agrees_with_evaluate_policy() -> None:
    model = make_model("sac", "Pendulum-v1", 0)
    layout, spec, flat = actor_of(model, "sac")
    with one_thread():
        ours = evaluate_params(flat[None], layout, spec, "Pendulum-v1", episodes=400, seed=5)
        theirs = sb3_episode_returns(model, "Pendulum-v1", 60, seed=6)
    assert_same_mean(ours.returns, theirs)


def test_torch_rollout_equals_gymnasium_from_the_same_starts(briefly_trained: PPO) -> None:
    """Known answer for the rollout loop: Gymnasium CartPole put in our start states, SB3 predict."""
    layout, spec, flat = actor_of(briefly_trained, "ppo")
    episodes, seed = 20, 5
    ours = evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=episodes, seed=seed)
    starts = DYNAMICS["CartPole-v1"]().initial_state(
        episodes, torch.Generator().manual_seed(seed), torch.float32, "cpu"
    )
    env = gym.make("CartPole-v1")
    for e in range(episodes):
        env.reset(seed=e)
        env.unwrapped.state = starts[e].double().numpy()
        obs, steps, done = starts[e].numpy(), 0, False
        while not done:
            action, _ = briefly_trained.predict(obs, deterministic=True)
            obs, _, terminated, truncated, _ = env.step(action)
            steps, done = steps + 1, terminated or truncated
        assert ours.lengths[0, e] == steps, f"episode {e}"


def test_random_weights_get_a_low_return() -> None:
    model = make_model("ppo", "CartPole-v1", 0, net_arch=[64, 64])
    layout, spec, _ = actor_of(model, "ppo")
    params = torch.randn(64, layout.numel, generator=torch.Generator().manual_seed(0)) * 0.5
    result = evaluate_params(params, layout, spec, "CartPole-v1", episodes=4)
    assert isinstance(result, EvalResult) and result.returns.shape == (64, 4)
    assert result.mean.mean() < 100 and (result.lengths >= 1).all() and (result.lengths <= 500).all()
    assert torch.allclose(result.std, result.returns.std(1, correction=0))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_policy_with_non_finite_weights_scores_nan_and_leaves_the_others_as_they_were(env_id: str) -> None:
    """A generated network can hold NaN: its argmax over NaN logits used to act like a real policy and
    score a plausible return (9.5 on CartPole), which a batch of generated policies would then average in."""
    model = make_model("ppo", env_id, 0)
    layout, spec, flat = actor_of(model, "ppo")
    params = torch.stack([flat, flat.clone(), flat.clone()])
    params[1, 3], params[2, -1] = float("nan"), float("inf")
    result = evaluate_params(params, layout, spec, env_id, episodes=3, seed=4)
    alone = evaluate_params(flat[None], layout, spec, env_id, episodes=3, seed=4)
    assert torch.equal(result.returns[0], alone.returns[0])
    assert result.returns[1:].isnan().all() and result.mean[1:].isnan().all() and result.std[1:].isnan().all()
    assert (result.lengths[1:] == 0).all()


def test_same_policy_sees_the_same_start_states() -> None:
    model = make_model("ppo", "CartPole-v1", 0)
    layout, spec, flat = actor_of(model, "ppo")
    result = evaluate_params(flat.expand(8, -1), layout, spec, "CartPole-v1", episodes=16, seed=7)
    assert (result.returns == result.returns[0]).all(), "common random numbers: identical rows"
    assert result.returns[0].unique().numel() > 1, "episodes of one policy start from different states"
    again = evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=16, seed=7)
    other = evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=16, seed=8)
    assert torch.equal(again.returns[0], result.returns[0]) and not torch.equal(other.returns[0], again.returns[0])


@pytest.mark.parametrize("env_id", sorted(DYNAMICS))
def test_batch_equals_one_policy_at_a_time(env_id: str) -> None:
    """Chunks, slot refills and dropping finished policies change nothing: a batch equals B single runs."""
    env = gym.make(env_id)
    algo = "ppo"
    model = PPO("MlpPolicy", env, policy_kwargs={"net_arch": {"pi": PI, "vf": [8]}}, seed=0, device="cpu")
    layout, spec, _ = actor_of(model, algo)
    params = torch.randn(6, layout.numel, generator=torch.Generator().manual_seed(1))
    batch = evaluate_params(params, layout, spec, env_id, episodes=3, seed=2)
    chunked = evaluate_params(params, layout, spec, env_id, episodes=3, seed=2, max_batch=6)
    pooled = evaluate_params(params, layout, spec, env_id, episodes=3, seed=2, pool=2)  # refills slots
    for other in (chunked, pooled):
        assert torch.equal(batch.lengths, other.lengths) and torch.allclose(batch.returns, other.returns)
    for b in (0, 5):  # a policy that is dropped early and one that is not, in different chunks
        single = evaluate_params(params[b : b + 1], layout, spec, env_id, episodes=3, seed=2)
        assert torch.equal(single.lengths[0], batch.lengths[b])
        torch.testing.assert_close(single.returns[0], batch.returns[b], rtol=1e-6, atol=1e-4)
    assert torch.isfinite(batch.returns).all()
    assert (batch.lengths <= DYNAMICS[env_id].max_episode_steps).all()


def test_stochastic_rollouts_depend_on_the_seed_only() -> None:
    model = make_model("ppo", "Pendulum-v1", 0)
    layout, spec, flat = actor_of(model, "ppo")
    kw = dict(episodes=2, deterministic=False, seed=3)
    a = evaluate_params(flat.expand(4, -1), layout, spec, "Pendulum-v1", **kw)
    b = evaluate_params(flat.expand(4, -1), layout, spec, "Pendulum-v1", **kw)
    assert torch.equal(a.returns, b.returns)
    assert a.returns.unique().numel() > 2, "different noise for each policy row"


def test_gymnasium_fallback_matches_a_plain_loop() -> None:
    env_id, seed = "InvertedPendulum-v5", 11
    models = [make_model("ppo", env_id, s) for s in range(2)]
    layout, spec, _ = actor_of(models[0], "ppo")
    params = torch.stack([read_actor(m.policy, layout) for m in models])
    result = evaluate_params(params, layout, spec, env_id, episodes=2, seed=seed)
    for b, model in enumerate(models):
        for e in range(2):
            env = gym.make(env_id)
            obs, _ = env.reset(seed=seed + e)
            total, steps, done = 0.0, 0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action)
                total, steps, done = total + float(reward), steps + 1, terminated or truncated
            assert result.lengths[b, e] == steps
            assert result.returns[b, e] == pytest.approx(total)
    in_processes = evaluate_params(params, layout, spec, env_id, episodes=2, seed=seed, async_envs=True)
    assert torch.equal(in_processes.lengths, result.lengths)


def test_evaluate_sb3_file(tmp_path) -> None:
    model = make_model("sac", "Pendulum-v1", 0)
    model.save(tmp_path / "sac.zip")
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    venv.obs_rms.mean = np.array([0.5, -0.2, 0.1])
    venv.obs_rms.var = np.array([0.3, 0.6, 2.0])
    assert detect_algo(tmp_path / "sac.zip") == "sac"
    stats = (torch.as_tensor(venv.obs_rms.mean), torch.as_tensor(venv.obs_rms.var))
    got = evaluate_sb3_file(
        tmp_path / "sac.zip",
        episodes=3,
        seed=1,
        env_id="Pendulum-v1",
        obs_stats=stats,
        clip_obs=venv.clip_obs,
        norm_epsilon=venv.epsilon,
    )
    layout, spec, flat = actor_of(model, "sac", normalize_obs=True, norm_epsilon=venv.epsilon)
    mean, var = torch.as_tensor(venv.obs_rms.mean), torch.as_tensor(venv.obs_rms.var)
    want = evaluate_params(flat[None], layout, spec, "Pendulum-v1", episodes=3, seed=1, obs_mean=mean, obs_var=var)
    torch.testing.assert_close(got.returns, want.returns)

    ppo = make_model("ppo", "CartPole-v1", 0)
    ppo.save(tmp_path / "ppo.zip")
    assert detect_algo(tmp_path / "ppo.zip") == "ppo"
    got = evaluate_sb3_file(tmp_path / "ppo.zip", episodes=5)  # env id inferred from the spaces
    layout, spec, flat = actor_of(ppo, "ppo")
    assert torch.equal(got.returns, evaluate_params(flat[None], layout, spec, "CartPole-v1", episodes=5).returns)


def test_env_id_of_an_sb3_file_comes_from_env_or_generated_json(tmp_path, capsys) -> None:
    make_model("ppo", "InvertedPendulum-v5", 0).save(tmp_path / "policy_000.zip")
    file = read_sb3_file(tmp_path / "policy_000.zip")
    with pytest.raises(ValueError, match="pass --env ENV_ID"):
        infer_env_id(file)  # MuJoCo: no torch port to match sizes against
    policy = str(tmp_path / "policy_000.zip")
    assert main(["evaluate", policy, "--episodes", "2", "--env", "InvertedPendulum-v5"]) == 0
    assert "+-" in capsys.readouterr().out
    assert main(["evaluate", policy, "--env", "InvertedPendulum-v9"]) == 2
    assert (
        "unknown Gymnasium environment 'InvertedPendulum-v9'; did you mean InvertedPendulum-v"
        in capsys.readouterr().err
    )
    assert main(["evaluate", policy, "--env", "CartPole-v1"]) == 2  # the weights do not fit its spaces
    assert "does not fit CartPole-v1" in capsys.readouterr().err
    (tmp_path / "generated.json").write_text(json.dumps({"env_id": "InvertedPendulum-v5"}))
    assert infer_env_id(file) == "InvertedPendulum-v5"
    assert evaluate_sb3_file(tmp_path / "policy_000.zip", episodes=2).returns.shape == (1, 2)


class _Payload:
    """Unpickling this creates a file: what a hostile SB3 save could do instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(("algo", "env_id"), [("ppo", "CartPole-v1"), ("sac", "Pendulum-v1")])
def test_an_sb3_file_is_read_without_unpickling_it(tmp_path, algo, env_id) -> None:
    if algo == "ppo":  # a non-default activation, which SB3's JSON keeps only inside the pickle and as text
        kwargs = {"net_arch": {"pi": [16], "vf": [8]}, "activation_fn": torch.nn.ReLU}
        model = PPO("MlpPolicy", env_id, policy_kwargs=kwargs, seed=0, device="cpu")
    else:
        model = make_model(algo, env_id, 0)
    model.save(tmp_path / "clean.zip")
    armed = tmp_path / "armed"
    payload = base64.b64encode(pickle.dumps(_Payload(str(armed)))).decode()
    pickle.loads(base64.b64decode(payload)).close()  # the payload is live: loading it creates the file
    assert armed.exists()
    armed.unlink()
    with zipfile.ZipFile(tmp_path / "clean.zip") as src, zipfile.ZipFile(tmp_path / "hostile.zip", "w") as dst:
        for name in src.namelist():
            blob = src.read(name)
            if name == "data":
                data = json.loads(blob)
                for key in ("policy_kwargs", "observation_space", "action_space", "lr_schedule"):
                    data[key] = {**data.get(key, {}), ":serialized:": payload}
                blob = json.dumps(data).encode()
            dst.writestr(name, blob)
    _, got_env, policy = load_sb3_policy(tmp_path / "hostile.zip", env_id)
    assert not armed.exists()
    assert got_env == env_id
    torch.testing.assert_close(read_actor(policy, actor_layout(policy, algo)), actor_of(model, algo)[2])
    assert evaluate_sb3_file(tmp_path / "hostile.zip", episodes=2, env_id=env_id).returns.shape == (1, 2)
    assert not armed.exists()


class Tanh(torch.nn.Module):
    """A user's own activation that shares the name of torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.tanh(x)


class _WideCartPole(gym.Env):
    """CartPole's sizes with other bounds: a policy for it must not pass as a CartPole policy."""

    observation_space = gym.spaces.Box(-5.0, 5.0, (4,))
    action_space = gym.spaces.Discrete(2)


def test_several_files_are_evaluated_together_as_each_alone(tmp_path, capsys, monkeypatch) -> None:
    from rl_gpt.evaluate import evaluate_sb3_file, evaluate_sb3_files

    paths = []
    for seed, arch in ((0, PI), (1, PI), (2, [16, 16])):  # two architectures: two batches, one order
        paths.append(tmp_path / f"p{seed}.zip")
        make_model("ppo", "CartPole-v1", seed, arch).save(paths[-1])
    import rl_gpt.evaluate.sb3 as sb3

    batches = []
    rollout = sb3.evaluate_params
    monkeypatch.setattr(
        sb3, "evaluate_params", lambda params, *a, **k: batches.append(len(params)) or rollout(params, *a, **k)
    )
    together = evaluate_sb3_files(paths, episodes=3, seed=5)
    assert sorted(batches) == [1, 2]  # one batch per architecture
    for i, path in enumerate(paths):
        alone = evaluate_sb3_file(path, episodes=3, seed=5)
        torch.testing.assert_close(together.returns[i], alone.returns[0].double())
    assert (
        main(["evaluate", *map(str, paths), "--episodes", "3", "--seed", "5", "--json", str(tmp_path / "r.json")]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("environment: CartPole-v1 (guessed from its spaces: pass --env ENV_ID to choose)")
    assert all(f"{p}: {m:.2f}" in printed for p, m in zip(paths, together.mean.tolist()))
    recorded = json.loads((tmp_path / "r.json").read_text())["policies"]
    assert [r["name"] for r in recorded] == list(map(str, paths)) and {r["env_id"] for r in recorded} == {"CartPole-v1"}
    assert main(["evaluate", str(paths[0]), str(tmp_path)]) == 2  # a file and a dataset: not one kind
    assert "several .zip policies" in capsys.readouterr().err
    assert main(["evaluate", *map(str, paths), "--dataset", str(tmp_path)]) == 2  # ignored for each: refused
    assert "--dataset names the network of a .safetensors classifier file" in capsys.readouterr().err


def test_sb3_files_rl_gpt_cannot_read_are_refused_with_a_message(tmp_path, capsys) -> None:
    make_model("ppo", "CartPole-v1", 0).save(tmp_path / "cartpole.zip")
    with pytest.raises(PolicyFileError, match="does not fit Acrobot-v1"):
        load_sb3_policy(tmp_path / "cartpole.zip", "Acrobot-v1")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PolicyFileError, match="not an SB3 save file"):
        load_sb3_policy(tmp_path / "junk.zip")
    assert main(["evaluate", str(tmp_path / "junk.zip")]) == 2
    assert "not an SB3 save file" in capsys.readouterr().err
    # a policy.pth that unpacks to 300 MB (a zip of ~300 kB) is refused after the most it reads
    with zipfile.ZipFile(tmp_path / "cartpole.zip") as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name, bytes(300 << 20) if name == "policy.pth" else blob)
    assert (tmp_path / "bomb.zip").stat().st_size < 1 << 20
    with pytest.raises(PolicyFileError, match="its policy.pth unpacks to more than 256 MB"):
        load_sb3_policy(tmp_path / "bomb.zip")
    if not torch.cuda.is_available():
        assert main(["evaluate", str(tmp_path / "junk.zip"), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"activation_fn": Tanh}, device="cpu").save(tmp_path / "own.zip")
    with pytest.raises(PolicyFileError, match="unsupported activation"):
        load_sb3_policy(tmp_path / "own.zip", "CartPole-v1")
    PPO("MlpPolicy", "Pendulum-v1", use_sde=True, device="cpu").save(tmp_path / "sde.zip")
    with pytest.raises(PolicyFileError, match="gSDE"):
        load_sb3_policy(tmp_path / "sde.zip", "Pendulum-v1")
    PPO("MlpPolicy", _WideCartPole(), device="cpu").save(tmp_path / "wide.zip")
    with pytest.raises(PolicyFileError, match="pass --env ENV_ID"):
        load_sb3_policy(tmp_path / "wide.zip")


@pytest.mark.parametrize(
    ("net_arch", "said"),
    [
        ('"64"', "is not SB3's list of layer widths"),
        ('[64, "x"]', "is not SB3's list of layer widths"),
        ('{"pi": 64}', "is not SB3's list of layer widths"),
        ("[-8]", "is not SB3's list of layer widths"),
        ('[{"pi": [64], "vf": [64]}]', "is SB3 1.x's form"),  # rl-baselines3-zoo files of SB3 < 1.8
    ],
)
def test_a_damaged_net_arch_is_a_message(tmp_path, net_arch: str, said: str) -> None:
    make_model("ppo", "CartPole-v1", 0).save(tmp_path / "clean.zip")
    with zipfile.ZipFile(tmp_path / "clean.zip") as src, zipfile.ZipFile(tmp_path / "edited.zip", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "data":
                meta = json.loads(data)
                meta["policy_kwargs"]["net_arch"] = json.loads(net_arch)
                data = json.dumps(meta).encode()
            dst.writestr(name, data)
    with pytest.raises(PolicyFileError, match=said):
        load_sb3_policy(tmp_path / "edited.zip", "CartPole-v1")


def test_a_policy_pth_with_pickled_objects_is_refused_unrun(tmp_path) -> None:
    make_model("ppo", "CartPole-v1", 0).save(tmp_path / "clean.zip")
    armed = tmp_path / "armed"
    blob = io.BytesIO()
    torch.save({"action_net.weight": _Payload(str(armed))}, blob)
    with zipfile.ZipFile(tmp_path / "clean.zip") as src, zipfile.ZipFile(tmp_path / "hostile.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, blob.getvalue() if name == "policy.pth" else src.read(name))
    with pytest.raises(PolicyFileError, match="more than plain tensors"):
        load_sb3_policy(tmp_path / "hostile.zip", "CartPole-v1")
    assert not armed.exists()


def test_mismatches_are_refused_with_a_message() -> None:
    model = make_model("ppo", "CartPole-v1", 0)
    layout, spec, flat = actor_of(model, "ppo")
    with pytest.raises(ValueError, match="obs_dim"):
        evaluate_params(flat[None], layout, spec, "Acrobot-v1")
    with pytest.raises(ValueError, match=r"params must be"):
        evaluate_params(flat[None, :-1], layout, spec, "CartPole-v1")
    normalized = PolicySpec.from_dict({**spec.to_dict(), "normalize_obs": True})
    with pytest.raises(ValueError, match="obs_mean"):
        evaluate_params(flat[None], layout, normalized, "CartPole-v1")


def test_dataset_rows_outside_the_dataset_or_not_numbers_are_refused() -> None:
    from rl_gpt.dataset import DatasetError
    from rl_gpt.evaluate.cli import _parse_rows

    assert _parse_rows("", 5).tolist() == [0, 1, 2, 3, 4]
    assert _parse_rows("1:3", 5).tolist() == [1, 2] and _parse_rows("-1", 5).tolist() == [4]
    assert _parse_rows("-2", 5).tolist() == [3] and _parse_rows("-2:", 5).tolist() == [3, 4]
    assert _parse_rows(":2", 5).tolist() == [0, 1] and _parse_rows("3:", 5).tolist() == [3, 4]
    assert _parse_rows("0:5", 5).tolist() == [0, 1, 2, 3, 4]
    # A range that runs past the end is refused, not clipped to the rows that exist.
    for rows in ("5000:5010", "3:9", "7", "-6", "-9:2"):
        with pytest.raises(DatasetError, match="not in the dataset: it has rows 0 to 4"):
            _parse_rows(rows, 5)
    for rows in ("3:2", "2:2", ":0", "-1:-2"):
        with pytest.raises(DatasetError, match="select no rows.*: a range's start must be below its stop"):
            _parse_rows(rows, 5)
    with pytest.raises(DatasetError, match="whole numbers"):
        _parse_rows("abc", 5)


def test_evaluate_refuses_a_dataset_flag_it_would_ignore(tmp_path: pathlib.Path) -> None:
    from rl_gpt.evaluate.cli import evaluate_target
    from rl_gpt.supervised import ClassifierFileError

    with pytest.raises(ClassifierFileError, match="--dataset names the network of a .safetensors classifier file"):
        evaluate_target(str(tmp_path / "ds:0:3"), 1, "cpu", 0, False, dataset=str(tmp_path))


def test_a_policy_with_nan_weights_is_refused(tmp_path, capsys) -> None:
    model = make_model("ppo", "CartPole-v1", 0)
    with torch.no_grad():
        model.policy.action_net.weight[0, 0] = float("nan")
    model.save(tmp_path / "nan.zip")
    with pytest.raises(PolicyFileError, match="action_net.weight hold NaN or infinite weights"):
        load_sb3_policy(tmp_path / "nan.zip")
    assert main(["evaluate", str(tmp_path / "nan.zip")]) == 2  # was: "9.50 +- 0.50", as if it were a policy
    assert "NaN or infinite weights" in capsys.readouterr().err


def test_a_dataset_network_with_non_finite_weights_is_measured_as_failed(experiment) -> None:
    """evaluate_flat (sweeps, generate, calibrate) rolls a NaN network out as zeros to keep the batch's shape; what
    it reports for it must be NaN, which the sweep scores as a failure, not the zero network's return."""
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate.dataset_metric import evaluate_flat

    ds = CheckpointDataset(experiment / "dataset")
    params = ds.data["params"][:3].float().clone()
    params[1, 0] = float("nan")
    result = evaluate_flat(ds, params, 2, 0, [0])
    assert result.mean[1].isnan() and result.std[1].isnan() and result.returns[1].isnan().all()
    assert torch.isfinite(result.mean[[0, 2]]).all()
