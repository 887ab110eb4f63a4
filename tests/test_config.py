"""Config loading: defaults, presets, overrides, and the errors a user sees."""

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import yaml

from rl_gpt.config import PRESETS, ConfigError, ExperimentConfig, load_config


def test_defaults_are_the_cartpole_demo():
    cfg = load_config()
    assert cfg.task.env_id == "CartPole-v1" and cfg.task.algo == "ppo"
    assert cfg.dataset_dir == Path("runs/cartpole/dataset")


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
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


def test_a_hash_in_an_override_is_part_of_the_value_not_a_comment():
    cfg = load_config("cartpole", ["out=runs/run #2", "dataset=#data/x", "task.name=a#b"], command="train")
    assert (cfg.out, str(cfg.dataset_dir), cfg.task.name) == ("runs/run #2", "#data/x", "a#b")
    assert load_config("cartpole", ['out="runs/run #3"'], command="train").out == "runs/run #3"  # quoted: YAML


@pytest.mark.parametrize("preset", [None, "cartpole"])  # neither names hyperparams: both use the defaults
def test_a_dotted_override_changes_one_key_of_a_default_mapping(preset):
    default = ExperimentConfig().task
    cfg = load_config(preset, ["task.hyperparams.n_steps=64", "task.policy_kwargs.net_arch.pi=[8]"])
    assert cfg.task.hyperparams == dict(default.hyperparams, n_steps=64)  # the zoo's other values are kept
    assert cfg.task.policy_kwargs == {"net_arch": {"pi": [8], "vf": default.policy_kwargs["net_arch"]["vf"]}}
    assert load_config(preset, ["task.hyperparams={n_steps: 64}"]).task.hyperparams == {"n_steps": 64}  # whole
    # PPO's CartPole values are not another kind's or algorithm's defaults: nothing is seeded for them
    sac = ["task.algo=sac", "task.env_id=Pendulum-v1", "task.hyperparams.gamma=0.9"]
    assert load_config(preset, sac).task.hyperparams == {"gamma": 0.9}
    digits = ["task.kind=supervised", "task.network=digits_mlp", "task.hyperparams.steps=100"]
    assert load_config(preset, digits).task.hyperparams == {"steps": 100}
    acrobot = load_config("acrobot").task.hyperparams  # a preset's own mapping is the one changed
    assert load_config("acrobot", ["task.hyperparams.n_steps=64"]).task.hyperparams == dict(acrobot, n_steps=64)


def test_numbers_yaml_reads_as_text_are_numbers_in_mappings():
    overrides = [
        "task.hyperparams.ent_coef=1e-3",
        "task.hyperparams.clip_range=lin_0.2",
        "task.policy_kwargs.log_std_init=-2E0",
    ]
    task = load_config(None, overrides).task
    assert task.hyperparams["ent_coef"] == 0.001 and task.hyperparams["clip_range"] == "lin_0.2"
    assert task.policy_kwargs["log_std_init"] == -2.0
    assert load_config("digits", ["collect.sample_hyperparams={lr: [1e-2, 3e-1]}"]).collect.sample_hyperparams == {
        "lr": [0.01, 0.3]
    }


@pytest.mark.parametrize("extends", ["extends: cartpole\n", ""])  # over the preset, or over the embedded default
def test_a_config_file_changes_one_key_of_a_default_mapping(tmp_path, extends):
    default = ExperimentConfig().task
    own = tmp_path / "own.yaml"
    own.write_text(extends + "task:\n  hyperparams: {ent_coef: 0.001}\n  policy_kwargs: {activation_fn: relu}\n")
    task = load_config(str(own)).task
    assert task.hyperparams == dict(default.hyperparams, ent_coef=0.001)  # the zoo's tuned values are kept
    assert task.policy_kwargs == dict(default.policy_kwargs, activation_fn="relu")
    # another environment's file spells out its own values: CartPole's do not fill in the rest
    own.write_text(extends + "task:\n  env_id: Acrobot-v1\n  hyperparams: {n_steps: 256}\n")
    assert load_config(str(own)).task.hyperparams == {"n_steps": 256}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("collect.runz=3", "collect.runz; did you mean collect.runs"),
        ("task.env=Hopper-v5", r"task.env; did you mean task.env_id or task.n_envs\?"),  # the key it begins first
        ("runs=three", "collect.runs: expected an integer"),
        ("task.normalize=maybe", "task.normalize: expected true/false"),
        ("collect.executor=slurm", "collect.executor"),
        ("nonsense", "not key=value"),
        ("runs=0", "collect.runs: 0 is too small"),
        ("timesteps=-5", "collect.timesteps: -5 is too small"),
        ("workers=-1", "collect.workers: -1 is negative"),
        ("train.bins=0", "train.bins: 0 is too small"),
        ("sweep.inits=0", "sweep.inits: 0 is too small"),
        ("sweep.prompts=1", "sweep.prompts: 1 is too small; it counts things and needs at least 2"),
        ("sweep.average=-2", "sweep.average: -2 is too small"),
        ("train.batch=0", "train.batch: 0 is too small"),
        ("train.function_signal_power=-1", "train.function_signal_power: -1 is negative; use 0 or more"),
        ("train.function_loss=-10", "train.function_loss: -10 is negative"),
        ("train.lr=-1", "train.lr: -1 must be above 0"),
        ("sweep.guidance=-1", "sweep.guidance: -1 is negative"),
        ("timestep=5", "timestep; did you mean timesteps (collect.timesteps)?"),
        ("eval_episodes=5", "eval_episodes; did you mean collect.eval_episodes?"),
        ("n_steps=64", "n_steps; did you mean task.hyperparams.n_steps?"),  # as rl-baselines3-zoo names it
        ("train.steps=1e40", "train.steps: '1e40' is out of range"),
        ("train.lr=inf", "train.lr: 'inf' is not a finite number"),
        ("train.guidance=nan", "train.guidance: 'nan' is not a finite number"),
        ("train.ema=1", "train.ema: 1 is a fraction: give 0 to below 1"),
        ("train.prompt_dropout=1.5", "train.prompt_dropout: 1.5 is a fraction: give 0 to 1"),
        ("train.test_fraction=1.0", "train.test_fraction: 1.0 is a fraction"),
        ("collect.seed=4294967296", "collect.seed: 4294967296 is too large for a seed"),
        ("collect.seed=4294967290", "64 runs reaches 2"),  # run r is seeded seed + r
        ("steps=5", "steps; did you mean train.steps or sweep.steps or task.hyperparams.steps?"),
        ("xyzzy=1", "xyzzy; use section.key (e.g. train.steps) or one of: runs, timesteps"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(
        ConfigError, match=needle.replace(".", r"\.").replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")
    ):
        load_config("cartpole", [override], command="collect")


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("wandb.mode=off", "wandb.mode: False is not one of 'offline', 'online', 'disabled' (YAML reads"),
        ("task.name=on", "task.name: expected a string, got True (YAML reads"),
    ],
)
def test_a_yaml_boolean_word_given_for_text_says_how_yaml_read_it(override, said):
    """YAML 1.1 reads on/off/yes/no as booleans: the message must not leave `False` unexplained. Quoting helps
    text fields only: a field of fixed choices (wandb.mode) takes none of those words, so its choices are the hint."""
    with pytest.raises(ConfigError, match=re.escape(said)) as refused:
        load_config("pendulum", [override], command="sweep")
    assert ("quote a word meant as text" in str(refused.value)) == override.startswith("task.name")


def test_wandbs_older_mode_names_are_taken_on_the_command_line_as_in_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert load_config("cartpole", ["wandb.mode=dryrun"]).wandb.mode == "offline"
    assert load_config("cartpole", ["wandb.mode=run"]).wandb.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert load_config("cartpole").wandb.mode == "offline"


@pytest.mark.parametrize("bad", ["[500, 0]", "[1]", "[0, .nan]", "[3, 3]"])
def test_a_metric_range_must_run_from_low_to_high(bad):
    wanted = r"^task\.metric_range(: .* is not \[low, high\] with low < high|\[1\]: nan is not a finite number)"
    with pytest.raises(ConfigError, match=wanted):
        load_config("cartpole", [f"task.metric_range={bad}"])
    assert load_config("cartpole", ["task.metric_range=[0, 500]"]).task.metric_range == [0.0, 500.0]


def test_calibrate_short_names_set_the_calibrations_inits_and_prompts():
    cfg = load_config("digits", ["inits=3", "prompts=4"], command="calibrate")
    assert (cfg.sweep.calibration_inits, cfg.sweep.calibration_prompts) == (3, 4)
    assert cfg.sweep.inits == load_config("digits").sweep.inits  # the sweep's own stay


def test_short_names_of_another_command_are_suggested_as_the_command_knows_them():
    with pytest.raises(ConfigError, match=r"stpes; did you mean steps \(train\.steps\)\?"):
        load_config("cartpole", ["stpes=100"], command="train")
    with pytest.raises(ConfigError, match=r"seed; did you mean collect\.seed or train\.seed or sweep\.seed\?"):
        load_config("cartpole", ["seed=3"], command="demo")


def test_a_key_given_twice_in_one_section_of_a_file_is_refused_with_its_line(tmp_path):
    """Found writing a config that extends digits with `steps: 3` and, lower down, `steps: 5`: YAML kept the
    last without a word. A merge key's values may still be set again, as YAML means."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("extends: digits\ntrain:\n  steps: 3\n  lr: 1.0e-3\n  steps: 5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(line 5, column 3: 'steps' is given twice"):
        load_config(twice)
    once = tmp_path / "once.yaml"
    once.write_text("extends: digits\ntrain:\n  steps: 3\nsweep:\n  steps: 5\n")  # one key in each of two sections
    assert (load_config(once).train.steps, load_config(once).sweep.steps) == (3, 5)
    from rl_gpt.config.presets import parse_yaml

    assert parse_yaml("a: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


def test_an_anchored_section_that_overrides_its_merge_key_is_no_key_given_twice():
    """An anchored mapping with `<<: *a` and a key of a's, merged into a shallower section before it is built
    itself, was refused as naming that key twice: the merge had already put a's pairs into its own."""
    from rl_gpt.config.presets import parse_yaml

    text = "defaults: &a {lr: 1.0}\ntask:\n  hyperparams: &b\n    <<: *a\n    lr: 2.0\ntrain:\n  <<: *b\n  steps: 3\n"
    assert parse_yaml(text) == yaml.safe_load(text)
    assert parse_yaml(text)["task"]["hyperparams"] == {"lr": 2.0} and parse_yaml(text)["train"]["steps"] == 3
    with pytest.raises(yaml.YAMLError, match="'lr' is given twice"):  # still refused where it is given twice
        parse_yaml(text.replace("    lr: 2.0\n", "    lr: 2.0\n    lr: 3.0\n"))


def test_aliases_that_repeat_too_much_are_refused_before_they_expand(tmp_path, capsys):
    """Nine short lines of nested aliases stand for 10^9 values; the config checks would walk them all."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("extends: cartpole\ntask:\n  hyperparams:\n" + "".join(f"    {line}\n" for line in lines))
    said = r"bomb.yaml: not valid YAML \(line 8, .*\(\*a3 and the ones before\) repeat more than 100,000"
    with pytest.raises(ConfigError, match=said):
        load_config(bomb)
    # the same file as a model's saved config.yaml, which --model reads by itself: one line, no hang
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text(bomb.read_text())
    from rl_gpt.cli import main

    assert main(["sweep", "--model", str(model)]) == 2
    assert "config.yaml: not valid YAML" in capsys.readouterr().err
    # aliases of config size read as yaml.safe_load reads them: a value, and a merge key of a mapping
    aliased = tmp_path / "aliased.yaml"
    aliased.write_text(
        "collect:\n  runs: &n 6\n  sample_hyperparams: &lr {learning_rate: [1.0e-4, 1.0e-3]}\n"
        "train:\n  batch: *n\nsweep:\n  inits: *n\n"
    )
    cfg = load_config(aliased)
    assert cfg.collect.runs == 6 and cfg.train.batch == 6 and cfg.sweep.inits == 6
    from rl_gpt.config.presets import parse_yaml

    text = "base: &base {a: 1, b: [1, 2]}\nderived:\n  <<: *base\n  b: [3]\n"
    assert parse_yaml(text) == yaml.safe_load(text) == {"base": {"a": 1, "b": [1, 2]}, "derived": {"a": 1, "b": [3]}}


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    misplaced = tmp_path / "misplaced.yaml"
    misplaced.write_text("task:\n  env_id: CartPole-v1\n  n_envs: 4: 8\n")
    with pytest.raises(ConfigError, match=r"line 3, column 12: mapping values are not allowed here"):
        load_config(misplaced)
    typo = tmp_path / "typo.yaml"
    typo.write_text("task:\n  env_idd: CartPole-v1\n")
    with pytest.raises(ConfigError, match="task.env_idd; did you mean task.env_id"):
        load_config(typo)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="no config file or preset 'nope'"):
        load_config("nope")


@pytest.mark.parametrize(
    ("given", "said"), [("Pendulum-v1", "pendulum, the preset for Pendulum-v1?"), ("acrobot-v1", "acrobot, the")]
)
def test_a_gymnasium_id_given_for_a_preset_names_the_preset_for_it(given, said):
    with pytest.raises(ConfigError, match=re.escape(f"no config file or preset '{given}'; did you mean {said}")):
        load_config(given)


def test_a_preset_extends_another_and_overrides_only_what_it_names():
    full, base = load_config("digits_full"), load_config("digits")
    assert full.task == base.task and full.collect == base.collect
    assert (full.train.batch, full.train.steps, full.train.calibrate) == (1024, 3200, base.train.calibrate)
    assert full.sweep == base.sweep and full.train.function_probes == base.train.function_probes
    # pinned to the function-space loss it was measured with, which digits changed since (session 32)
    assert (full.train.function_loss, full.train.function_compare) == (10.0, "mse")
    assert (base.train.function_loss, base.train.function_compare) == (2.0, "kl")
    assert full.train.model_overrides == {"width": 256, "heads": 4, "depth": 6, "metric_frequency": 1000}
    assert full.out == "runs/digits_full"


def test_the_large_cartpole_preset_is_the_full_one_with_a_gpu_sized_generator():
    large, full = load_config("cartpole_large"), load_config("cartpole_full")
    assert large.task == full.task and large.collect == full.collect
    assert large.sweep == dataclasses.replace(full.sweep, rerank=1)  # measured before ranking existed
    assert large.train.model_overrides == {"width": 512, "heads": 8, "depth": 8, "metric_frequency": 1000}
    assert not large.train.calibrate and full.train.calibrate  # pinned to how its numbers were measured
    assert (large.train.batch, large.train.steps, large.train.lr) == (1024, 3000, 5e-4)


def test_extends_a_file_beside_it_and_refuses_a_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain: {steps: 7}\n")
    (tmp_path / "b.yaml").write_text("extends: cartpole\ntrain: {steps: 5, batch: 3}\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.train.steps, cfg.train.batch, cfg.task.env_id) == (7, 3, "CartPole-v1")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ConfigError, match="'extends: nowhere' names no file"):
        load_config(tmp_path / "a.yaml")


def test_an_empty_section_keeps_the_base_section(tmp_path):
    (tmp_path / "c.yaml").write_text("extends: digits\nsweep:\n")  # digits sets 1.5, not the default 2
    assert load_config(tmp_path / "c.yaml").sweep.guidance == load_config("digits").sweep.guidance == 1.5


def test_wandb_mode_variable_sits_between_the_file_and_the_command_line(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert load_config("cartpole").wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert load_config("cartpole").wandb.mode == "disabled"
    assert load_config("cartpole", ["wandb.mode=online"]).wandb.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's old name for offline
    assert load_config("cartpole").wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "loud")
    with pytest.raises(ConfigError, match="WANDB_MODE='loud'"):
        load_config("cartpole")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a whole `wandb=` mapping without a mode keeps the variable's
    assert load_config("cartpole", ["wandb={project: p}"]).wandb.mode == "disabled"
    assert load_config("cartpole", ["wandb={project: p, mode: online}"]).wandb.mode == "online"


def test_wandb_runs_are_grouped_by_experiment_and_named_by_stage(tmp_path, monkeypatch):
    """What start_run asks of wandb.init (a stand-in: offline wandb keeps it in a binary file)."""
    wandb = pytest.importorskip("wandb")
    from rl_gpt.wandb_run import start_run

    asked: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kw: asked.append(kw) or object())
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = load_config("digits", [f"out={tmp_path / 'lr-sweep'}", "wandb.mode=offline"])
    start_run(cfg, "train", tmp_path, {"a": 1})
    kw = asked[-1]
    assert (kw["group"], kw["job_type"], kw["name"], kw["tags"]) == ("lr-sweep", "train", "lr-sweep-train", ["digits"])
    assert kw["project"] == "rl_gpt" and kw["config"] == {"a": 1}
    assert (tmp_path / "wandb" / "train-digits.run_id").read_text() == kw["id"]  # the key earlier runs resume by
    monkeypatch.setenv("WANDB_PROJECT", "theirs")  # the variable names the project the config leaves open
    start_run(cfg, "sweep", tmp_path, {})
    assert asked[-1]["project"] == "theirs"
    start_run(load_config("digits", ["wandb.project=mine", "wandb.mode=offline"]), "sweep", tmp_path, {})
    assert asked[-1]["project"] == "mine"

    def unreachable(**kw):  # online with a key but no network: wandb gives up after its timeout
        raise wandb.errors.CommError("Failed to get resume status\nname resolution failed: no such host")

    monkeypatch.setattr(wandb, "init", unreachable)
    with pytest.raises(ConfigError) as caught:
        start_run(load_config("digits", ["wandb.mode=online"]), "collect", tmp_path, {})
    assert str(caught.value) == (
        "W&B: Failed to get resume status (or log offline: wandb.mode=offline, and upload later with `wandb sync`)"
    )


@pytest.mark.parametrize("command", ["collect", "train", "sweep"])
def test_the_cli_reads_a_leading_key_value_as_an_override_of_the_embedded_default(command, monkeypatch, tmp_path):
    from rl_gpt import cli

    seen = {}
    monkeypatch.setitem(cli.COMMANDS, command, lambda args: seen.update(config=args.config, overrides=args.overrides))
    assert cli.main([command, "steps=7", f"out={tmp_path}"]) == 0
    assert seen == {"config": None, "overrides": ["steps=7", f"out={tmp_path}"]}
    assert cli.main([command, "cartpole", "steps=7"]) == 0
    assert seen == {"config": "cartpole", "overrides": ["steps=7"]}
    odd = tmp_path / "lr=0.1.yaml"  # a config file whose name holds '=' is still a config file
    odd.write_text("seed: 3\n")
    assert cli.main([command, str(odd)]) == 0
    assert seen == {"config": str(odd), "overrides": []}


def test_quiet_commands_silence_wandb_only_while_they_run(monkeypatch):
    import os

    from rl_gpt import cli

    seen = []
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "collect", lambda args: seen.append(os.environ.get("WANDB_SILENT")))
    assert cli.main(["collect", "-q"]) == 0 and cli.main(["collect"]) == 0
    assert seen == ["true", None] and "WANDB_SILENT" not in os.environ


@pytest.mark.parametrize("module", ["rl_gpt.interrupt", "rl_gpt.collect"])
def test_ctrl_c_while_the_cli_loads_its_modules_stops_quietly(monkeypatch, capsys, tmp_path, module):
    """rl_gpt.interrupt is imported by main itself; rl_gpt.collect (torch, SB3: seconds) by the command, once its
    config is read."""
    import builtins

    from rl_gpt import cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == module:
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert cli.main(["collect", f"out={tmp_path / 'exp'}", "wandb.mode=disabled"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "exp").exists()
    # main's own import stops quietly; once the command runs, a stop no stage spoke for gets one line
    said = "rl-gpt collect: interrupted; nothing half-written is left: run the same command again"
    assert (said in err) == (module == "rl_gpt.collect"), err


def test_another_env_on_a_preset_warns_of_the_range_it_keeps():
    with pytest.warns(UserWarning, match=r"keeps its task\.metric_range=\[0, 500\] and task\.reward_threshold=475"):
        load_config("cartpole", ["task.env_id=Pendulum-v1"], command="collect")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("cartpole", ["task.env_id=Pendulum-v1", "task.metric_range=null", "task.reward_threshold=-200"])
        load_config("cartpole", ["task.env_id=CartPole-v1"])  # the preset's own environment
        load_config("cartpole", ["task.env_id=Pendlum-v1"])  # unknown: collect refuses it, no warning first
        load_config("inverted_pendulum", ["task.env_id=InvertedPendulum-v4"])  # another version, the same range
    with pytest.warns(UserWarning, match="CartPole-v0 replaces the preset's CartPole-v1"):  # episodes end at 200
        load_config("cartpole", ["task.env_id=CartPole-v0"])
    with pytest.warns(UserWarning, match=r"my_envs:Corridor-v0 replaces .* keeps its task\.metric_range=\[0, 500\]"):
        load_config("cartpole", ["task.env_id=my_envs:Corridor-v0"])  # a user's own env: not imported to warn


def test_a_file_that_moves_a_preset_to_another_env_warns_of_the_range_it_keeps(tmp_path):
    own = tmp_path / "mcar.yaml"
    own.write_text("extends: cartpole\ntask: {env_id: MountainCar-v0}\n")
    with pytest.warns(UserWarning, match=r"MountainCar-v0 \(.*mcar.yaml\) replaces the preset's CartPole-v1"):
        load_config(str(own))
    own.write_text("extends: cartpole\ntask: {env_id: MountainCar-v0, metric_range: null, reward_threshold: -110}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(str(own))


def test_a_saved_wandb_run_id_is_used_only_when_valid(tmp_path):
    from rl_gpt.wandb_run import _saved_run_id

    path = tmp_path / "train-cartpole.run_id"
    assert _saved_run_id(path) is None  # none saved: a new run
    path.write_text("0a43def1\n")
    assert _saved_run_id(path) == "0a43def1"
    for bad in ("", "not an id!"):
        path.write_text(bad)
        with pytest.warns(UserWarning, match="holds no W&B run id; this stage logs to a new run"):
            assert _saved_run_id(path) is None


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("unable to write to file </d/runs/.tmp-run_00008/metric.memmap>: No space left on device (28)"),
        OSError(28, "No space left on device", "/d/model/model.json"),
        RuntimeError("unable to resize file </d/.tmp-data/params.memmap> to the right size: File too large (27)"),
        # atomic_save_safetensors' OSError, which carries safetensors' message but no errno
        OSError(
            "could not write /d/model/train_state.tmp/state.safetensors: Error while serializing: I/O error: "
            "No space left on device (os error 28)"
        ),
    ],
)
def test_a_full_disk_is_one_line_that_says_what_to_do(monkeypatch, capsys, error):
    from rl_gpt import cli

    def fail(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "info", fail)
    assert cli.main(["info", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "free space (or raise the limit) and run the same command again" in err
    assert "memmap" in err or "model.json" in err or "state.safetensors" in err  # where


def test_other_errors_are_not_taken_for_a_full_disk(monkeypatch):
    from rl_gpt import cli

    def fail(args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "info", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info", "somewhere"])


def test_a_hyperparameter_the_collection_samples_anew_is_said_to_be_unused():
    with pytest.warns(UserWarning, match=r"draws lr for every run, so task.hyperparams.lr is not used"):
        load_config("digits", ["task.hyperparams.lr=0.01"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config("digits", ["task.hyperparams.lr=0.01", "collect.sample_hyperparams={}"])
        load_config("digits")  # the preset's own lr is the default the sampling replaces: nothing to say


def test_a_mapping_given_whole_says_which_fields_it_drops():
    with pytest.warns(UserWarning, match=r"replaces the whole mapping, dropping heads: 4, depth: 2, metric_frequency"):
        cfg = load_config("digits", ["train.model_overrides={width: 64}"], command="train")
    assert cfg.train.model_overrides == {"width": 64}  # replaced, as said
    with pytest.warns(UserWarning, match=r"task.hyperparams=\{...\} replaces the whole mapping, dropping batch_size"):
        load_config("cartpole", ["task.hyperparams={n_steps: 64}"])  # the built-in PPO settings it inherits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one field, or a mapping cleared on purpose: nothing to say
        assert load_config("digits", ["train.model_overrides.width=64"]).train.model_overrides["depth"] == 2
        assert load_config("digits", ["collect.sample_hyperparams={}"]).collect.sample_hyperparams == {}


@pytest.mark.parametrize("override", ["task=null", "train={}", "wandb=~", "sweep="])
def test_a_whole_section_set_empty_on_the_command_line_is_refused(override):
    """In a file an empty section keeps the base's values; on the command line it reset them (task=null: CartPole)."""
    with pytest.raises(ConfigError, match=r"would reset the whole \w+ section to .*set single fields"):
        load_config("digits", [override])


def test_a_config_path_may_leave_out_its_yaml_suffix_as_extends_does(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.yaml").write_text("extends: digits\ncollect: {runs: 7}\n")
    (tmp_path / "digits.yaml").write_text("collect: {runs: 3}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("sub/my").collect.runs == 7
    assert load_config("./digits").collect.runs == 3  # ./NAME is a path
    assert load_config("digits").collect.runs == 512  # a bare name is the preset's, not a file in this folder


def test_extends_names_a_file_beside_it_without_its_yaml_suffix(tmp_path):
    """A copied presets folder: mnist.yaml says ``extends: digits`` for the digits.yaml beside it."""
    (tmp_path / "base.yaml").write_text("task: {env_id: CartPole-v1}\ncollect: {runs: 7}\n")
    (tmp_path / "child.yaml").write_text("extends: base\ncollect: {seed: 3}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.collect.runs, cfg.collect.seed) == (7, 3)


def test_a_copied_preset_that_extends_its_namesake_extends_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cartpole.yaml").write_text("extends: cartpole\ncollect: {runs: 3}\n")
    cfg = load_config("cartpole.yaml")
    assert cfg.collect.runs == 3 and cfg.task.env_id == "CartPole-v1"


def test_the_demo_folder_of_a_file_named_as_a_preset_is_not_the_presets(tmp_path, monkeypatch) -> None:
    from rl_gpt.demo import default_demo_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "cartpole.yaml").write_text("extends: cartpole\n")
    (tmp_path / "pendulum_fast.yaml").write_text("extends: pendulum\n")
    assert default_demo_folder(None) == "runs/demo"
    assert default_demo_folder("digits") == "runs/demo-digits"
    assert default_demo_folder(str(PRESETS / "digits.yaml")) == "runs/demo-digits"  # the preset's own file
    assert default_demo_folder("my/cartpole.yaml") == "runs/demo-my-cartpole"
    assert default_demo_folder("pendulum_fast.yaml") == "runs/demo-pendulum_fast"


def test_a_model_folder_does_not_choose_to_log_online(tmp_path, monkeypatch, capsys):
    """``sweep --model`` reads the folder's config.yaml, which its maker wrote: its ``wandb.mode:
    online`` and ``entity`` would send this user's results to a server, maybe to the maker's team."""
    from rl_gpt.train.saved_config import load_model_config

    monkeypatch.delenv("WANDB_MODE", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("task:\n  name: cartpole\nwandb: {mode: online, entity: them, project: p}\n")

    def config(*overrides: str, command: str = "sweep"):
        return load_model_config(str(model), overrides, command=command)

    cfg = config()
    assert (cfg.wandb.mode, cfg.wandb.entity, cfg.wandb.project) == ("offline", None, "p")
    assert "trained with wandb.mode=online; this sweep logs offline unless asked" in capsys.readouterr().err
    cfg = config("wandb.mode=online")  # asked here: online, to this user's default entity unless named
    assert (cfg.wandb.mode, cfg.wandb.entity) == ("online", None)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WANDB_MODE", "online")
    assert config().wandb.mode == "online" and capsys.readouterr().err == ""
    monkeypatch.delenv("WANDB_MODE")
    assert config(command="calibrate").wandb.mode == "offline"  # it logs too, so it says so as a sweep does
    assert "this calibration logs offline unless asked" in capsys.readouterr().err
    assert config(command="generate").wandb.mode == "offline" and capsys.readouterr().err == ""  # logs nothing
    (model / "config.yaml").write_text("wandb:\n  mode: disabled\n")  # the quieter choices are kept
    assert config().wandb.mode == "disabled"
    (model / "config.yaml").write_text("wandb: {mode: offline, project: rl_gpt}\n")  # written out before session 33
    assert config().wandb.project is None  # so WANDB_PROJECT, if set, names the project (wandb_run.project_name)


@pytest.mark.parametrize("saved_as", ["config.yaml", "model.json"])
def test_a_library_user_reads_an_old_model_folder_as_the_cli_does(tmp_path, monkeypatch, capsys, saved_as):
    """``load_model_config`` is what ``sweep --model`` and ``calibrate --model`` read, for Python too: a
    model saved before ranking sweeps unranked (as its calibration was measured), and the folder's
    online logging and team are dropped. From config.yaml, else the copy in model.json."""
    import json
    import subprocess
    import sys

    from rl_gpt.train.saved_config import load_model_config

    monkeypatch.delenv("WANDB_MODE", raising=False)
    saved = {"task": {"name": "cartpole"}, "sweep": {"inits": 3}, "wandb": {"mode": "online", "entity": "them"}}
    model = tmp_path / "model"
    model.mkdir()
    if saved_as == "config.yaml":
        (model / "config.yaml").write_text(yaml.safe_dump(saved))
    else:
        (model / "model.json").write_text(json.dumps({"format": {"name": "rl_gpt.model"}, "meta": {"config": saved}}))
    cfg = load_model_config(model)
    assert (cfg.sweep.rerank, cfg.sweep.inits) == (1, 3)  # today's default would be 4: not what it was measured with
    assert (cfg.wandb.mode, cfg.wandb.entity) == ("offline", None)
    assert capsys.readouterr().err == ""  # no command named: nothing that logs to say it of
    cfg = load_model_config(model, ["rerank=2"], command="sweep")  # the command's short names, and its note
    assert (cfg.sweep.rerank, cfg.wandb.mode) == (2, "offline")
    assert "model was trained with wandb.mode=online; this sweep logs offline" in capsys.readouterr().err
    assert load_model_config(tmp_path / "nothing").sweep == load_config().sweep  # no model: the embedded default
    if saved_as == "config.yaml":  # read without importing torch: `rl-gpt sweep --model DIR typo=` is said at once
        probe = (
            "import sys\nfrom rl_gpt.train.saved_config import load_model_config\n"
            f"load_model_config({str(model)!r})\nprint('torch' in sys.modules)"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == ["False"], done.stdout + done.stderr


def test_a_folder_that_cannot_be_entered_is_named(tmp_path, monkeypatch, capsys):
    """``Permission denied: .../model/model.json`` suggests the file's mode; the folder is what blocks."""
    import os

    from rl_gpt.cli import main

    model = tmp_path / "theirs" / "model"
    model.mkdir(parents=True)
    (model / "model.json").write_text("{}")
    real_access = os.access
    blocked = tmp_path / "theirs"

    def access(path, mode, *args, **kwargs):  # root enters every folder: pretend to be another user
        return False if Path(path) == blocked else real_access(path, mode, *args, **kwargs)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(model / "model.json"))

    monkeypatch.setattr(os, "access", access)
    import rl_gpt.cli

    monkeypatch.setitem(rl_gpt.cli.COMMANDS, "info", refused)  # what reading model.json raises for another user
    assert main(["info", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"cannot enter {blocked} (permission denied): ask its owner" in err, err


@pytest.mark.parametrize("command", ["collect", "train", "sweep", "calibrate"])
def test_a_config_typo_is_said_before_torch_is_imported(command):
    """A typo is said in one line at once: torch and tensordict's imports take seconds (~12 s under load)."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom rl_gpt.cli import main\n"
        f"code = main([{command!r}, 'cartpole', 'task.algo=dqn', 'wandb.mode=disabled'])\n"
        "print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.strip() == f"rl-gpt {command}: error: task.algo: 'dqn' is not one of 'ppo', 'sac'"


@pytest.mark.parametrize(
    ("text", "overrides", "said"),
    [
        ("extends: digits\nout: runs/${task.name}\n", [], r"out: 'runs/\$\{task.name\}' holds \$\{...\}, which"),
        ("extends: digits\n", ["out=${oc.env:HOME}/x"], r"out: '\$\{oc.env:HOME\}/x' holds \$\{...\}, which"),
    ],
)
def test_an_omegaconf_interpolation_is_refused_not_taken_as_text(tmp_path, text, overrides, said):
    """Found with Hydra habits, `out: ${oc.env:HOME}/x` in a file that extends digits: nothing expands it, and
    collect would have written into a folder named `${oc.env:HOME}/x` under the current one."""
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=said + r".*not interpolate"):
        load_config(config, overrides, command="collect")


@pytest.mark.parametrize("given", ["./", "/", "sub/"])
def test_a_folder_given_for_a_config_is_no_preset_not_a_crash(tmp_path, monkeypatch, given):
    """`rl-gpt collect ./` crashed with ValueError ('.' has an empty name) once a path could leave out .yaml,
    and `sub/` read sub.yaml beside the folder."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub.yaml").write_text("collect: {runs: 3}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config file or preset"):
        load_config(given)


def test_a_key_given_twice_in_a_mapping_on_the_command_line_is_said_so():
    """Since a key given twice is refused, `task.hyperparams={steps: 3, steps: 5}` fell back to text and was
    refused as "expected a mapping, got '{steps: 3, steps: 5}'", which it is."""
    with pytest.raises(ConfigError, match=r"^task.hyperparams=\{steps: 3, steps: 5\}: 'steps' is given twice"):
        load_config("digits", ["task.hyperparams={steps: 3, steps: 5}"])


def test_a_config_named_like_a_file_or_an_env_id_says_what_to_give(tmp_path, monkeypatch):
    """A user's first tries: `collect corridor` with corridor.yaml here, `collect Hopper-v5` or
    `collect my_envs:Corridor-v0` (an env id where a config goes), and a local cartpole.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corridor.yaml").write_text("extends: cartpole\n")
    with pytest.raises(ConfigError, match=r"no preset 'corridor'; a file is named by its path: \./corridor\.yaml"):
        load_config("corridor")
    load_config("./corridor.yaml")
    for env_id in ("Hopper-v5", "my_envs:Corridor-v0"):
        with pytest.raises(ConfigError, match=f"looks like an env id: give a preset and task.env_id={env_id}"):
            load_config(env_id)
    (tmp_path / "cartpole.yaml").write_text("extends: cartpole\ncollect: {runs: 3}\n")
    with pytest.warns(UserWarning, match=r"'cartpole' is the preset cartpole\.yaml, not \./cartpole\.yaml"):
        assert load_config("cartpole").collect.runs != 3  # the preset wins
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the local file's own `extends: cartpole` means the preset: no warning
        assert load_config("./cartpole.yaml").collect.runs == 3
