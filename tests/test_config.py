"""Config loading: defaults, presets, overrides, and the errors a user sees."""

from pathlib import Path

import pytest

from rl_gpt.config import REPO_CONFIGS, ConfigError, ExperimentConfig, load_config


def test_defaults_are_the_cartpole_demo():
    cfg = load_config()
    assert cfg.task.env_id == "CartPole-v1" and cfg.task.algo == "ppo"
    assert cfg.dataset_dir == Path("runs/cartpole/dataset")


@pytest.mark.parametrize("preset", sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.task.name


def test_short_names_and_dotted_overrides():
    cfg = load_config(
        "cartpole",
        [
            "runs=3",
            "timesteps=1e4",
            "seed=7",
            "out=/tmp/x",
            "task.n_envs=2",
            "collect.sample_hyperparams={learning_rate: [1e-4, 1e-3]}",
        ],
        command="collect",
    )
    assert (cfg.collect.runs, cfg.collect.timesteps, cfg.collect.seed) == (3, 10_000, 7)
    assert cfg.out == "/tmp/x" and cfg.task.n_envs == 2
    assert cfg.collect.sample_hyperparams == {"learning_rate": [1e-4, 1e-3]}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("collect.runz=3", "collect.runz; did you mean collect.runs"),
        ("runs=three", "collect.runs: expected an integer"),
        ("task.normalize=maybe", "task.normalize: expected true/false"),
        ("collect.executor=slurm", "collect.executor"),
        ("nonsense", "not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("?", r"\?")):
        load_config("cartpole", [override], command="collect")


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("task:\n  env_idd: CartPole-v1\n")
    with pytest.raises(ConfigError, match="task.env_idd; did you mean task.env_id"):
        load_config(typo)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="no config file or preset 'nope'"):
        load_config("nope")
