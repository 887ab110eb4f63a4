"""`rl-gpt demo`: collect, train and sweep in one command, restarted and resumed (on a copy of the tiny
CartPole ``experiment``'s dataset, conftest.py), and refused when given both a config and --task."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import QUIET, TINY_MODEL

from rl_gpt.cli import main
from rl_gpt.train.modelfile import read_model_info


def test_demo_runs_end_to_end_and_restarts(experiment, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(experiment / "dataset", out / "dataset")  # collection then finds all 4 runs done
    args = ["demo", "cartpole", "runs=4", "timesteps=1024", "collect.checkpoint_every=256", "task.n_envs=2"]
    args += ["collect.eval_episodes=2"]  # as the copied dataset was collected: more runs must be alike
    args += ["steps=4", *TINY_MODEL, "inits=2", "prompts=3", "samples=1", "episodes=2", "--out", str(out), *QUIET]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inits"] == 2 and len(report["prompts"]) == 3 and (out / "sweep.png").is_file()
    assert main([*args, "steps=6", "--restart"]) == 0
    assert read_model_info(out / "model")["meta"]["step"] == 6
    assert not (out / "model" / "calibration.json").exists()  # only where train.calibrate asks for it

    calibrated = [*args, "steps=6", "train.calibrate=true", "sweep.calibration_inits=2", "sweep.calibration_prompts=3"]
    assert main(calibrated) == 0
    cal = out / "model" / "calibration.json"
    first = cal.read_text()
    assert json.loads((out / "report.json").read_text())["calibration"]["applied"]
    assert main(calibrated) == 0  # resumed: same weights and settings, so the calibration is kept as it was
    assert cal.read_text() == first
    cal.write_text("{")  # damaged: the demo measures it again instead of stopping
    assert main(calibrated) == 0
    assert json.loads(cal.read_text())["prompts"] == json.loads(first)["prompts"]

    moved = tmp_path / "moved"  # out= instead of --out: every stage writes there, the report included
    shutil.copytree(experiment / "dataset", moved / "dataset")
    at = args.index("--out")
    assert main([*args[:at], *args[at + 2 :], f"out={moved}"]) == 0
    assert (moved / "report.json").is_file() and (moved / "model" / "model.json").is_file()


def test_the_demo_refuses_a_config_and_a_task_together(tmp_path, capsys):
    assert main(["demo", "cartpole", "--task", "digits", "--out", str(tmp_path / "d"), *QUIET]) == 2
    assert "--task digits or cartpole, not both" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_table_writes_returns_near_zero_with_the_decimals_that_tell_them_apart():
    from rl_gpt.sweep.table import _value_formats

    assert _value_formats([0.0, 500.0], rl=True) == ("{:.1f}", "{:.0f}")  # CartPole: as the README's table
    value, whole = _value_formats([-0.8, 0.1], rl=True)  # a short HalfCheetah run
    assert value.format(-0.2606) != value.format(-0.3351) and whole.format(-0.326) == "-0.326"
    assert _value_formats([8.0, 60.0], rl=True)[0].format(12.345) == "12.35"
    assert _value_formats([0.1, 2.3], rl=False) == ("{:.3f}", "{:.3f}")  # losses and errors keep 3


def test_the_demos_help_says_how_to_change_its_settings():
    """Found reading each command's --help: the demo's alone said only "key=value overrides", with no dotted
    name or short name to show what a key is."""
    from rl_gpt.cli_parser import build_parser

    text = " ".join(build_parser().commands["demo"].format_help().split())
    assert "a dotted name (train.lr=3e-4" in text and "short name (runs= timesteps=" in text
    assert "DIR/dataset, DIR/model and DIR/report.json" in text


def test_the_demo_refuses_its_folder_given_twice(tmp_path, capsys):
    """Found giving `--out A out=B`: the demo wrote to B without a word about A."""
    assert main(["demo", "--out", str(tmp_path / "a"), f"out={tmp_path / 'b'}", *QUIET]) == 2
    assert f"--out {tmp_path / 'a'} or out={tmp_path / 'b'}, not both" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_demos_help_names_hyperparameters_the_default_demo_has():
    """Its example task.hyperparams.steps=200 is the digits classifier's: the embedded CartPole demo's PPO
    refuses it ("PPO takes no steps")."""
    import re

    from rl_gpt.cli_parser import build_parser
    from rl_gpt.config import TaskConfig

    text = " ".join(build_parser().commands["demo"].format_help().split())
    named = re.findall(r"task\.hyperparams\.(\w+)=", text)
    assert named and all(key in TaskConfig().hyperparams for key in named), named


def test_the_demo_says_where_it_writes_before_it_starts(tmp_path, monkeypatch, capsys):
    """Collection prints nothing but a progress bar for minutes: the folder, under the folder the command
    runs in (an installed rl-gpt has no checkout to write into), is said first."""
    import rl_gpt.demo

    class Stop(Exception):
        pass

    def collect(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(rl_gpt.demo, "collect", collect)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        rl_gpt.demo.run_demo("runs/demo", overrides=["wandb.mode=disabled"])
    assert f"demo: writing to runs/demo (in {tmp_path}): dataset/" in capsys.readouterr().out
