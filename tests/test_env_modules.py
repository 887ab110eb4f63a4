"""One check of a user's own environment (``module:EnvId``) for every command that steps it."""

from __future__ import annotations

import sys

import pytest

from rl_gpt.cli import main

_ENVS = """
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class Shaped(CartPoleEnv):
    def __init__(self, obs=None, act=None):
        super().__init__()
        self.observation_space = obs or self.observation_space
        self.action_space = act or self.action_space


class GoesNaN(CartPoleEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.count = getattr(self, "count", 0) + 1
        return obs, (float("nan") if self.count == 30 else reward), terminated, truncated, info


box = spaces.Box(-1.0, 1.0, (2, 2), np.float32)
gym.register("UserGoesNaN-v0", entry_point=GoesNaN, max_episode_steps=50)
gym.register("UserLimited-v0", entry_point=CartPoleEnv, max_episode_steps=50)
gym.register("UserUnlimited-v0", entry_point=CartPoleEnv)
gym.register("UserWrapped-v0", entry_point=lambda: gym.wrappers.TimeLimit(CartPoleEnv(), 50))
gym.register("UserImage-v0", entry_point=Shaped, kwargs={"obs": box}, max_episode_steps=50)
gym.register("UserDict-v0", entry_point=Shaped, kwargs={"obs": spaces.Dict({"a": box})}, max_episode_steps=50)
gym.register("UserMatrixActs-v0", entry_point=Shaped, kwargs={"act": box}, max_episode_steps=50)
gym.register("UserEndlessActs-v0", entry_point=Shaped, kwargs={"act": spaces.Box(-np.inf, np.inf, (1,))},
             max_episode_steps=50)
"""


@pytest.fixture
def user_envs(tmp_path, monkeypatch):
    """The module ``user_envs_for_test`` on PYTHONPATH, as the README tells a user to run it."""
    (tmp_path / "user_envs_for_test.py").write_text(_ENVS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    yield tmp_path
    sys.modules.pop("user_envs_for_test", None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("UserUnlimited-v0", "has no time limit: register it with max_episode_steps"),
        ("UserImage-v0", "FlattenObservation"),
        ("UserDict-v0", "FlattenObservation"),
        ("UserMatrixActs-v0", "1-D Box"),
        ("UserEndlessActs-v0", "bounds are infinite"),
        ("UserLimted-v0", "did you mean UserLimited-v0"),
    ],
)
def test_an_env_rl_gpt_cannot_step_is_refused_in_one_line(user_envs, env, message, capsys):
    from rl_gpt.env_modules import EnvModuleError, check_env

    with pytest.raises(EnvModuleError, match=message):
        check_env(f"user_envs_for_test:{env}")
    out = str(user_envs / "out")
    assert main(["collect", "cartpole", f"task.env_id=user_envs_for_test:{env}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert message.split(":")[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_env_with_a_time_limit_passes(user_envs):
    from rl_gpt.env_modules import check_env

    assert check_env("user_envs_for_test:UserLimited-v0") == "UserLimited-v0"
    assert check_env("user_envs_for_test:UserWrapped-v0") == "UserWrapped-v0"  # TimeLimit from its entry point


def test_a_missing_module_and_a_missing_dependency_are_told_apart(tmp_path, monkeypatch):
    from rl_gpt.env_modules import EnvModuleError, import_env_module

    with pytest.raises(EnvModuleError, match=r"module not found; run with its folder on PYTHONPATH \(PYTHONPATH=\."):
        import_env_module("no_such_module_for_test:Env-v0")
    (tmp_path / "needs_a_package_for_test.py").write_text("import not_installed_package_for_test\n")
    (tmp_path / "broken_module_for_test.py").write_text("raise RuntimeError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EnvModuleError, match="imports 'not_installed_package_for_test', which is not installed"):
        import_env_module("needs_a_package_for_test:Env-v0")
    with pytest.raises(EnvModuleError, match="importing 'broken_module_for_test' .*RuntimeError: bad config"):
        import_env_module("broken_module_for_test:Env-v0")


def test_evaluate_runs_a_policy_in_a_users_env_named_by_env(user_envs, capsys):
    """`evaluate --env module:EnvId` imports the module (from PYTHONPATH) instead of refusing the id."""
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config

    cfg = load_config("cartpole", ["task.env_id=user_envs_for_test:UserLimited-v0"], command="collect")
    build_model(cfg.task, seed=0).save(user_envs / "mine.zip")
    zip_path = str(user_envs / "mine.zip")
    assert main(["evaluate", zip_path, "--env", "user_envs_for_test:UserLimited-v0", "--episodes", "2"]) == 0
    assert "mine.zip:" in capsys.readouterr().out
    assert main(["evaluate", zip_path, "--env", "user_envs_for_test:UserUnlimited-v0", "--episodes", "2"]) == 2
    assert "has no time limit" in capsys.readouterr().err


def test_a_generated_json_naming_a_module_in_the_current_folder_does_not_run_it(tmp_path, monkeypatch, capsys):
    """A stranger's folder holding policy_000.zip, generated.json ('evil:CartPole-v1') and evil.py: evaluating
    the policy there must not import evil.py; with the folder on PYTHONPATH (the user's choice) it is evaluated."""
    import json

    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config

    build_model(load_config("cartpole", [], command="collect").task, seed=0).save(tmp_path / "policy_000.zip")
    (tmp_path / "generated.json").write_text(json.dumps({"env_id": "stranger_gen_for_test:CartPole-v1"}))
    (tmp_path / "stranger_gen_for_test.py").write_text("open('RAN', 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # `python -m rl_gpt.cli` puts the current folder first
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert main(["evaluate", "policy_000.zip", "--episodes", "1"]) == 2
    assert "module not found" in capsys.readouterr().err and not (tmp_path / "RAN").exists()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert main(["evaluate", "policy_000.zip", "--episodes", "1"]) == 0
    assert (tmp_path / "RAN").exists()
    monkeypatch.delitem(sys.modules, "stranger_gen_for_test")


def test_sb3_trains_in_the_env_rl_gpt_evaluates_in(user_envs, recwarn):
    """SB3's envs come from rl_gpt's factory: no render_mode="rgb_array" (SB3's default for an id, and a
    warning for an env without render modes), the module imported as evaluation imports it."""
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config

    cfg = load_config("cartpole", ["task.env_id=user_envs_for_test:UserLimited-v0"], command="collect")
    env = build_model(cfg.task, seed=0).get_env()
    assert env.envs[0].unwrapped.render_mode is None and env.envs[0].spec.max_episode_steps == 50
    assert not [w for w in recwarn if "render_mode" in str(w.message)]


def test_a_nan_reward_stops_collection_with_one_line(user_envs, capsys):
    out = str(user_envs / "out")
    args = ["runs=1", "timesteps=256", "collect.checkpoint_every=128", "task.hyperparams.n_steps=32", "workers=1"]
    assert main(["collect", "cartpole", "task.env_id=user_envs_for_test:UserGoesNaN-v0", f"out={out}", *args]) == 2
    err = capsys.readouterr().err
    assert "UserGoesNaN-v0 returned a non-finite reward (nan) at step" in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_the_finite_check_costs_microseconds_a_step():
    import time

    import gymnasium as gym

    from rl_gpt.env_modules import FiniteCheck

    plain, checked = gym.make("CartPole-v1"), FiniteCheck(gym.make("CartPole-v1"), "CartPole-v1")
    cost = []
    for env in (plain, checked):
        env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(2000):
            if any(env.step(0)[2:4]):
                env.reset()
        cost.append((time.perf_counter() - start) / 2000)
    assert cost[1] - cost[0] < 50e-6, cost  # measured ~5 us; generous for a loaded machine


def test_collect_and_evaluate_help_say_how_to_name_your_own_env(capsys):
    for command in ("collect", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "MODULE:ENV_ID" in text and "PYTHONPATH" in text, (command, text)
