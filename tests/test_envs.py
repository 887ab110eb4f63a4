"""Batched torch envs (``envs/``, imported as ``rl_gpt.envs``) against Gymnasium, plus the torchrl contract.

Every test is parametrised over ``rl_gpt.envs.DYNAMICS`` so a newly registered env is covered.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from rl_gpt.envs import DYNAMICS, BatchedTorchEnv, find_dynamics, make_dynamics, make_env

ENV_IDS = sorted(DYNAMICS)

# States well outside the reset distribution, so the known-answer runs also reach terminal states,
# angle wrapping, speed clipping and walls. Envs missing here are tested from reset states only.
WIDE_STATES: dict[str, tuple[list[float], list[float]]] = {
    "CartPole-v1": ([-2.4, -2.0, -0.2, -2.0], [2.4, 2.0, 0.2, 2.0]),
    "Acrobot-v1": ([-math.pi, -math.pi, -4 * math.pi, -9 * math.pi], [math.pi, math.pi, 4 * math.pi, 9 * math.pi]),
    "Pendulum-v1": ([-3 * math.pi, -8.0], [3 * math.pi, 8.0]),
    "MountainCarContinuous-v0": ([-1.2, -0.07], [0.6, 0.07]),
}
NEVER_TERMINATES = {"Pendulum-v1"}
# gymnasium's reset bounds (``np_random.uniform(low, high)`` in each env's ``reset``).
RESET_BOUNDS: dict[str, tuple[list[float], list[float]]] = {
    "CartPole-v1": ([-0.05] * 4, [0.05] * 4),
    "Acrobot-v1": ([-0.1] * 4, [0.1] * 4),
    "Pendulum-v1": ([-math.pi, -1.0], [math.pi, 1.0]),
    "MountainCarContinuous-v0": ([-0.6, 0.0], [-0.4, 0.0]),
}


def _draw_states(env_id: str, batch: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Half from the reset distribution, half from ``WIDE_STATES``."""
    dyn = make_dynamics(env_id)
    states = dyn.initial_state(batch, gen, dtype, "cpu")  # (B, S)
    if env_id in WIDE_STATES:
        low, high = (torch.tensor(b, dtype=dtype) for b in WIDE_STATES[env_id])
        wide = low + (high - low) * torch.rand(batch, dyn.state_dim, generator=gen, dtype=dtype)
        states[batch // 2 :] = wide[batch // 2 :]
    return states


def _random_actions(env_id: str, batch: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    space = make_dynamics(env_id).action_space
    if space.discrete:
        return torch.randint(space.n, (batch,), generator=gen)  # (B,)
    low, high = torch.tensor(space.low, dtype=dtype), torch.tensor(space.high, dtype=dtype)
    # 1.5x the box: agents may pass out-of-range actions and the dynamics must clip as gymnasium does.
    u = torch.rand(batch, space.dim, generator=gen, dtype=dtype)
    return (low + high) / 2 + 1.5 * (high - low) / 2 * (2 * u - 1)  # (B, dim)


def _gym_step(env: gym.Env, state: np.ndarray, action: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """One gymnasium step from ``state``: (next state, observation, reward, terminated)."""
    env.state = state.copy()
    env.steps_beyond_terminated = None  # CartPole: every synced step is a first step after a live state
    obs, reward, terminated, _, _ = env.step(action)
    return np.asarray(env.state, dtype=np.float64), obs, float(reward), bool(terminated)


# ---------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize(
    ("dtype", "steps", "rtol", "atol"),
    [
        # float64: the torch code repeats gymnasium's float64 expressions in the same order; only libm sin/cos
        # may differ by an ulp, so states agree to ~1e-15. Observations are float32 on both sides (one float32 ulp).
        (torch.float64, 300, 1e-6, 1e-10),
        # float32: our whole step runs in float32 against gymnasium's float64, hence the looser tolerance
        # (Acrobot's 4-stage RK4 loses most).
        (torch.float32, 30, 2e-4, 2e-4),
    ],
    ids=["float64", "float32"],
)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_matches_gymnasium(env_id: str, dtype: torch.dtype, steps: int, rtol: float, atol: float) -> None:
    """Same state, same action: same next state, observation, reward and termination, over long trajectories.

    Gymnasium is put in the torch state before every step rather than left to run free: Acrobot is chaotic
    (a one-ulp libm cos difference grows to O(1) within ~100 steps), and MountainCarContinuous's numpy scalar
    promotion mixes float32 and float64 arithmetic depending on the stored state's dtype and on whether the
    action was clipped. From a float64 state gymnasium computes in float64, which is what we compare against.
    """
    dyn = make_dynamics(env_id)
    gym_env = gym.make(env_id).unwrapped
    gym_env.reset(seed=0)
    gen = torch.Generator().manual_seed(1)
    batch = 16
    state = _draw_states(env_id, batch, gen, dtype)  # (B, S)
    n_terminated = 0
    for _ in range(steps):
        action = _random_actions(env_id, batch, gen, dtype)
        next_state, reward, terminated = dyn.step(state, action)
        obs = dyn.observe(next_state)
        for b in range(batch):
            a = int(action[b]) if dyn.action_space.discrete else action[b].double().numpy()
            g_state, g_obs, g_reward, g_term = _gym_step(gym_env, state[b].double().numpy(), a)
            ctx = f"{env_id} row {b}: state {state[b].tolist()} action {a}"
            np.testing.assert_allclose(next_state[b].double().numpy(), g_state, rtol=rtol, atol=atol, err_msg=ctx)
            np.testing.assert_allclose(obs[b].double().numpy(), g_obs, rtol=rtol, atol=atol, err_msg=ctx)
            np.testing.assert_allclose(float(reward[b]), g_reward, rtol=rtol, atol=atol, err_msg=ctx)
            assert bool(terminated[b]) == g_term, ctx
        n_terminated += int(terminated.sum())
        # Re-sync after terminations by continuing from fresh states, like an auto-resetting vector env.
        state = torch.where(terminated[:, None], _draw_states(env_id, batch, gen, dtype), next_state)
    if dtype == torch.float64 and env_id not in NEVER_TERMINATES and env_id in WIDE_STATES:
        assert n_terminated > 0, "the trajectories never reached a terminal state; widen WIDE_STATES"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rows_are_independent(env_id: str) -> None:
    """Any batch size: a row steps the same alone as inside a batch."""
    dyn = make_dynamics(env_id)
    gen = torch.Generator().manual_seed(2)
    state = _draw_states(env_id, 7, gen, torch.float64)
    action = _random_actions(env_id, 7, gen, torch.float64)
    full = dyn.step(state, action)
    for b in (0, 6):
        single = dyn.step(state[b : b + 1], action[b : b + 1])
        for x, y in zip(full, single):
            torch.testing.assert_close(x[b : b + 1], y, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- initial states
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_initial_states_match_gymnasium_reset(env_id: str) -> None:
    """Per-dimension range and mean of torch start states agree with gymnasium's ``reset``."""
    n = 2000
    gym_env = gym.make(env_id).unwrapped
    gym_env.reset(seed=0)
    gym_states = []
    for _ in range(n):
        gym_env.reset()
        gym_states.append(np.asarray(gym_env.state))
    gym_states = np.stack(gym_states)  # (N, S)
    states = make_dynamics(env_id).initial_state(n, torch.Generator().manual_seed(3), torch.float64, "cpu").numpy()
    assert states.shape == gym_states.shape
    lo, hi = gym_states.min(0), gym_states.max(0)
    slack = 0.01 * (hi - lo)  # the extremes of 2000 uniform draws sit within ~0.3% of the width of the bounds
    assert (np.abs(states.min(0) - lo) <= slack).all(), f"min {states.min(0)} vs gymnasium {lo}"
    assert (np.abs(states.max(0) - hi) <= slack).all(), f"max {states.max(0)} vs gymnasium {hi}"
    assert (np.abs(states.mean(0) - gym_states.mean(0)) <= 5 * slack).all(), "means differ"
    if env_id in RESET_BOUNDS:
        low, high = (np.array(b) for b in RESET_BOUNDS[env_id])
        tol = 1e-7 if gym_states.dtype == np.float32 else 0.0  # float32 rounding may land just past a bound
        assert (states >= low - tol).all() and (states <= high + tol).all()
    assert ((states.std(0) > 0) == (hi > lo)).all(), "start states must vary exactly where gymnasium's do"
    if gym_states.dtype == np.float32:  # Acrobot casts its reset state to float32
        np.testing.assert_array_equal(states, states.astype(np.float32))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_initial_state_seeding(env_id: str) -> None:
    dyn = make_dynamics(env_id)

    def draw(seed: int) -> torch.Tensor:
        return dyn.initial_state(64, torch.Generator().manual_seed(seed), torch.float32, "cpu")

    torch.testing.assert_close(draw(5), draw(5), rtol=0, atol=0)
    assert not torch.equal(draw(5), draw(6))
    assert draw(5).dtype == torch.float32 and draw(5).shape == (64, dyn.state_dim)
    # The torchrl env seeds its own generator: same seed, same first observations.
    torch.testing.assert_close(
        make_env(env_id, 8, seed=4).reset()["observation"], make_env(env_id, 8, seed=4).reset()["observation"]
    )


# ---------------------------------------------------------------------------------------------- torchrl contract
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_specs(env_id: str, dtype: torch.dtype) -> None:
    env = make_env(env_id, batch_size=8, dtype=dtype)
    check_env_specs(env)
    assert env.reset()["observation"].dtype == dtype


@pytest.mark.parametrize("env_id", [e for e in ENV_IDS if DYNAMICS[e].action_space.discrete])
def test_check_env_specs_one_hot(env_id: str) -> None:
    check_env_specs(BatchedTorchEnv(make_dynamics(env_id), 8, one_hot_actions=True))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_partial_reset_restarts_finished_sub_envs(env_id: str) -> None:
    env = make_env(env_id, batch_size=4, seed=0)
    max_steps = env.dynamics.max_episode_steps
    td = env.rollout(max_steps + 20, break_when_any_done=False)  # (B, T)
    count = td["step_count"].squeeze(-1)  # (B, T)
    next_count = td["next", "step_count"].squeeze(-1)
    done = td["next", "done"].squeeze(-1)
    terminated, truncated = td["next", "terminated"].squeeze(-1), td["next", "truncated"].squeeze(-1)
    assert td.shape == (4, max_steps + 20)
    assert done.any(), "every sub-env finishes within max_episode_steps + 20 steps"
    torch.testing.assert_close(next_count, count + 1)
    # After a done the sub-env restarts at step 0; otherwise it carries on.
    torch.testing.assert_close(count[:, 1:], torch.where(done[:, :-1], 0, next_count[:, :-1]))
    assert torch.equal(done, terminated | truncated)
    # Live sub-envs keep their state through the partial resets of the others.
    obs, next_obs = td["observation"], td["next", "observation"]  # (B, T, obs_dim)
    live = ~done[:, :-1]
    torch.testing.assert_close(obs[:, 1:][live], next_obs[:, :-1][live], rtol=0, atol=0)
    assert torch.equal(truncated, next_count == max_steps)
    assert next_count.max() <= max_steps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cuda(env_id: str) -> None:
    env = make_env(env_id, batch_size=8, device="cuda")
    check_env_specs(env)
    td = env.rollout(50, break_when_any_done=False)
    assert td["next", "observation"].device.type == "cuda"


class _NeverTerminates:
    """Wraps a dynamics so only the time limit can end an episode."""

    def __init__(self, dynamics: object) -> None:
        self._dyn = dynamics

    def __getattr__(self, name: str) -> object:
        return getattr(self._dyn, name)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        next_state, reward, terminated = self._dyn.step(state, action)
        return next_state, reward, torch.zeros_like(terminated)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_truncation_at_max_episode_steps(env_id: str) -> None:
    dyn = make_dynamics(env_id)
    env = BatchedTorchEnv(_NeverTerminates(dyn), batch_size=3)
    td = env.rollout(dyn.max_episode_steps + 10)  # breaks at the first done
    truncated = td["next", "truncated"].squeeze(-1)  # (B, T)
    assert td.shape[-1] == dyn.max_episode_steps
    assert truncated[:, -1].all() and not truncated[:, :-1].any()
    assert not td["next", "terminated"].any()


def test_acrobot_wrap_matches_gymnasium() -> None:
    from gymnasium.envs.classic_control.acrobot import wrap

    from rl_gpt.envs.acrobot import _wrap

    x = torch.linspace(-7 * math.pi, 7 * math.pi, 1001, dtype=torch.float64)
    expected = torch.tensor([wrap(v, -math.pi, math.pi) for v in x.tolist()], dtype=torch.float64)
    near = x.abs() < 3 * math.pi  # within two periods the unrolled passes are exact
    torch.testing.assert_close(_wrap(x, -math.pi, math.pi)[near], expected[near], rtol=0, atol=0)
    torch.testing.assert_close(_wrap(x, -math.pi, math.pi), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- registry
def test_registry() -> None:
    assert set(DYNAMICS) >= {"CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"}
    for env_id, cls in DYNAMICS.items():
        assert cls.env_id == env_id
        assert cls.max_episode_steps == gym.spec(env_id).max_episode_steps
    with pytest.raises(KeyError, match="CartPole-v1"):
        make_dynamics("NoSuchEnv-v0")
    # the evaluators' lookup: a torch port where there is one, None (Gymnasium fallback) where not
    assert isinstance(find_dynamics("CartPole-v1"), DYNAMICS["CartPole-v1"])
    assert find_dynamics("InvertedPendulum-v5") is None


def test_envs_package_does_not_import_rl_gpt() -> None:
    """envs/ is the bottom room: it imports nothing of rl_gpt's, and itself only relatively (installed, it is
    ``rl_gpt.envs``; an absolute ``import envs`` would find a user's own envs/ folder instead)."""
    for path in Path(__file__).parents[1].joinpath("envs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names.append(node.module or "")
            assert not any(n.split(".")[0] in ("rl_gpt", "envs") for n in names), f"{path.name} imports {names}"
