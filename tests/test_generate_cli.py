"""`rl-gpt generate` on the tiny CartPole ``experiment`` (conftest.py), through the real CLI: SB3 policies that
load and score as recorded, starts, several targets, output folders, bad flags, and the SB3 export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import QUIET
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

from rl_gpt.cli import main
from rl_gpt.evaluate import evaluate_sb3_file
from rl_gpt.evaluate.sb3 import read_sb3_file
from rl_gpt.train.modelfile import read_model_info


def test_a_training_runs_own_init_is_never_passed_off_as_unseen(experiment, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    info = json.loads((model / "model.json").read_text())
    info["meta"]["config"]["sweep"]["init_seed"] = 0  # where the collection's seeds (collect.seed 0 + r) lie
    (model / "model.json").write_text(json.dumps(info))
    run = info["meta"]["train_runs"][0]
    args = ["generate", "--model", str(model), "--target-return", "100", "--out", str(tmp_path / "g")]
    assert main([*args, "--seed", str(run)]) == 2
    assert f"which is training run {run}'s own step-0 network" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    held_out = info["meta"]["test_runs"][0]  # not learnt from: a fair start
    assert main([*args, "--seed", str(held_out), "--episodes", "1"]) == 0
    sweep = ["sweep", "--model", str(model), "--out", str(tmp_path / "s"), "inits=2", "prompts=2", *QUIET]
    assert main([*sweep, "sweep.init_seed=0"]) == 2
    assert "'unseen' inits are training runs' own step-0 networks" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before the output folder is made


def test_generated_zip_loads_in_sb3_and_matches_recorded_return(experiment, tmp_path):
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(experiment / "model"),
                "--target-return",
                "300",
                "--random-init",
                "--seed",
                "5",
                "--num",
                "2",
                "--episodes",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "generated.json").read_text())
    assert len(record["policies"]) == 2
    for item in record["policies"]:
        model = PPO.load(out / item["file"], device="cpu")
        rewards, _ = evaluate_policy(
            model, model.get_env() or _env(), n_eval_episodes=100, deterministic=True, return_episode_rewards=True
        )
        se = np.hypot(np.std(rewards), item["achieved_std"]) / np.sqrt(100)
        assert abs(np.mean(rewards) - item["achieved_return"]) <= 4 * se + 1.0


def _env():
    import gymnasium as gym

    return gym.make("CartPole-v1")


def test_generate_from_an_incompatible_policy_is_refused(experiment, tmp_path, capsys):
    wrong = PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, device="cpu")
    wrong.save(tmp_path / "wrong.zip")
    code = main(
        [
            "generate",
            "--model",
            str(experiment / "model"),
            "--target-return",
            "300",
            "--from",
            str(tmp_path / "wrong.zip"),
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 2
    assert "is a ppo policy (4->8 tanh, 8->2); the model generates ppo actors (4->" in capsys.readouterr().err
    for start, said in ((experiment / "dataset", "is a folder"), (tmp_path / "none.zip", "does not exist")):
        args = ["generate", "--model", str(experiment / "model"), "--target-return", "300", "--from", str(start)]
        assert main([*args, "--out", str(tmp_path / "g")]) == 2
        assert f"--from {start} {said}; pass an SB3 policy .zip to start from" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_generate_from_a_generated_policy_updates_it_again(experiment, tmp_path):
    def generate(out, *start):
        args = ["generate", "--model", str(experiment / "model"), "--target-return", "400", "--episodes", "2"]
        assert main([*args, *start, "--out", str(out)]) == 0
        return json.loads((out / "generated.json").read_text())

    first = generate(tmp_path / "g1")
    start = tmp_path / "g1" / "policy_000.zip"
    second = generate(tmp_path / "g2", "--from", str(start))
    assert second["env_id"] == first["env_id"]
    assert (tmp_path / "g2" / "policy_000.zip").is_file()
    # the start is measured on the outputs' start states: `evaluate --seed eval_seed` reproduces it
    seeds = [second["eval_seed"] + s for s in range(4)]
    returns = [evaluate_sb3_file(start, episodes=2, seed=s).returns[0].tolist() for s in seeds]
    assert float(torch.tensor(returns[0]).mean()) == pytest.approx(second["start_return"], abs=1e-6)
    assert len({tuple(r) for r in returns}) > 1  # other seeds give other start states: the check can fail
    from rl_gpt.evaluate.seeds import Purpose, evaluation_seed

    # --seed 0 (the default) is rolled out on the start states of a sweep with sweep.seed=0: "measured alike"
    assert first["eval_seed"] == second["eval_seed"] == evaluation_seed(0, Purpose.SWEEP)


def test_a_generate_or_sweep_into_a_folder_in_use_is_refused(experiment, tmp_path, capsys, monkeypatch):
    from rl_gpt.io import exclusive_folder
    from rl_gpt.train.generator import ParameterGenerator

    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    with exclusive_folder(out, "generate"), monkeypatch.context() as patch:  # another generate still writing there
        patch.setattr(ParameterGenerator, "sample", lambda *a, **k: pytest.fail("sampled before --out was checked"))
        args = ["generate", "--model", str(experiment / "model"), "--target-return", "100", "--out", str(out)]
        assert main(args) == 2
        assert "is being written by another process" in capsys.readouterr().err
        assert main(["sweep", "--model", str(experiment / "model"), "--out", str(out), "inits=1", *QUIET]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_generate_sweeps_several_targets_from_one_start(experiment, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["generate", "--model", str(experiment / "model"), "--target-return", "100", "400", "100"]
    assert main([*args, "--num", "2", "--episodes", "2", "--seed", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "generated.json").read_text())
    assert summary["target_return"] == [100.0, 400.0]  # a repeated target is swept once
    assert summary["folders"] == ["target_100", "target_400"] and (out / "generated.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "target 400" in printed and "generated.png" in printed
    for folder, target, mean in zip(summary["folders"], summary["target_return"], summary["achieved_mean"]):
        record = json.loads((out / folder / "generated.json").read_text())  # a single target's layout
        assert record["target_return"] == target and record["start"] == summary["start"]
        assert len(record["policies"]) == 2 and (out / folder / "policy_001.zip").is_file()
        assert mean == pytest.approx(sum(p["achieved_return"] for p in record["policies"]) / 2)
    # the same start: a single-target call from the same seed reports the same start return, and the
    # same policies: a target's draws do not depend on the other targets asked for with it
    one = ["--target-return", "400", "--num", "2", "--episodes", "2", "--seed", "3", "--out", str(tmp_path / "one")]
    assert main([*args[:3], *one]) == 0
    single = json.loads((tmp_path / "one" / "generated.json").read_text())
    assert single["start_return"] == summary["start_return"] and single["target_return"] == 400.0
    among = json.loads((out / "target_400" / "generated.json").read_text())
    assert [p["achieved_return"] for p in single["policies"]] == [p["achieved_return"] for p in among["policies"]]
    alone, together = (read_sb3_file(d / "policy_001.zip").state for d in (tmp_path / "one", out / "target_400"))
    assert all(torch.allclose(alone[k], together[k], atol=1e-6) for k in alone if k.startswith("action_net"))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0  # a generate folder: its start and each target against what was achieved
    listed = capsys.readouterr().out
    assert f"achieved {summary['achieved_mean'][1]:.4g} (mean of 2; target_400/)" in listed
    assert main(["info", str(tmp_path / "one")]) == 0
    assert "(policy_000.zip)" in capsys.readouterr().out
    model = (experiment / "model").resolve()  # each record finds its model from where it lies, as sweeps' do
    assert (
        (out / summary["model_relative"]).resolve() == model == (out / "target_400" / among["model_relative"]).resolve()
    )


def test_a_moved_experiment_names_its_own_model_for_what_it_generated(experiment, tmp_path, capsys):
    shutil.copytree(experiment / "model", tmp_path / "exp" / "model")
    args = ["--target-return", "400", "--num", "1", "--episodes", "2", "--out", str(tmp_path / "exp" / "gen")]
    assert main(["generate", "--model", str(tmp_path / "exp" / "model"), *args]) == 0
    shutil.move(tmp_path / "exp", tmp_path / "moved")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "moved" / "gen")]) == 0
    assert f"by {(tmp_path / 'moved' / 'model').resolve()}" in capsys.readouterr().out


def test_generate_params_samples_in_memory_what_generate_writes(experiment, tmp_path):
    from rl_gpt.generate import generate_params

    model = experiment / "model"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in model.rglob("*"))
    result = generate_params(model, [100, 400], num=2, seed=3, episodes=2)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in model.rglob("*")) == before  # nothing written
    from rl_gpt.collect.inits import random_inits
    from rl_gpt.config import task_config

    # --seed 3 starts from the sweep's unseen init 3 (sweep.init_seed + 3), the network its report scores
    spec = json.loads((experiment / "dataset" / "spec.json").read_text())
    swept = read_model_info(model)["meta"]["config"]["sweep"]["init_seed"]
    torch.testing.assert_close(result.start, random_inits(task_config(spec["task"]), 4, swept)[3])
    assert result.params.shape == (2, 2, result.layout.numel) and result.targets == [100.0, 400.0]
    assert result.guidance == 2.0 and result.average == 1  # the model's own sweep settings
    args = ["generate", "--model", str(model), "--target-return", "100", "400", "--num", "2", "--episodes", "2"]
    assert main([*args, "--seed", "3", "--out", str(tmp_path / "g")]) == 0
    written = read_sb3_file(tmp_path / "g" / "target_400" / "policy_001.zip").state
    for name, tensor in result.layout.unflatten(result.params[1, 1]).items():
        torch.testing.assert_close(written[name], tensor)
    record = json.loads((tmp_path / "g" / "target_400" / "generated.json").read_text())
    assert record["conditioned_on"] == pytest.approx(float(result.conditioned_on[1]))
    assert record["start_metric_conditioned"] == pytest.approx(result.start_metric)  # m as the generator got it
    # one's own network as the start: the random init given as a tensor gives the same draws
    again = generate_params(model, 400, start=result.start, num=2, seed=3, episodes=2)
    torch.testing.assert_close(again.params[0], result.params[1])
    assert again.start_metric == result.start_metric
    with pytest.raises(
        ValueError, match=f"start has shape \\(3,\\); the model generates networks of {result.layout.numel}"
    ):
        generate_params(model, 400, start=torch.zeros(3))
    with pytest.raises(ValueError, match="num=0"):
        generate_params(model, 400, num=0)


def test_generate_again_into_a_folder_removes_what_it_no_longer_lists(experiment, tmp_path, capsys):
    out = tmp_path / "again"
    base = ["generate", "--model", str(experiment / "model"), "--episodes", "2", "--out", str(out)]
    assert main([*base, "--target-return", "100", "400", "--num", "2"]) == 0
    (out / "notes.txt").write_text("mine")  # not generate's: left alone
    assert main([*base, "--target-return", "400", "--num", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "generated.json",
        "notes.txt",
        "policy_000.zip",
        "policy_001.zip",
        "policy_002.zip",
    ]
    assert main([*base, "--target-return", "400"]) == 0
    assert not (out / "policy_001.zip").exists() and (out / "policy_000.zip").is_file()
    capsys.readouterr()


def test_a_generate_stopped_while_writing_leaves_no_record_of_replaced_files(experiment, tmp_path, monkeypatch):
    import rl_gpt.generate.run as run

    out = tmp_path / "cut"
    base = ["generate", "--model", str(experiment / "model"), "--episodes", "2", "--out", str(out)]
    assert main([*base, "--target-return", "400", "--num", "2"]) == 0
    export, written = run.export_sb3, []

    def full_disk(*args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(export(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(run, "export_sb3", full_disk)
    assert main([*base, "--target-return", "100", "--num", "2"]) == 1  # policy_000 replaced, then the disk filled
    assert not (out / "generated.json").exists()  # it described target 400's policies
    assert not list(out.glob(".*tmp*"))


def test_an_sb3_export_cut_short_leaves_the_old_zip_and_no_temporary(tmp_path, monkeypatch):
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config
    from rl_gpt.generate.export import export_sb3
    from rl_gpt.sb3_policy import actor_layout, read_actor

    task = load_config("cartpole", [], command="generate").task
    model = build_model(task, seed=0)
    layout = actor_layout(model.policy, task.algo)
    path = export_sb3(task, layout, read_actor(model.policy, layout), tmp_path / "policy.zip")
    before = path.read_bytes()

    def full_disk(self, where, *args, **kwargs):
        Path(where).write_bytes(b"the first bytes of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PPO, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        export_sb3(task, layout, read_actor(model.policy, layout) + 1, path)
    assert path.read_bytes() == before  # still the whole old zip
    assert [p.name for p in tmp_path.iterdir()] == ["policy.zip"]


def test_an_sb3_export_refuses_parameters_of_another_policy_of_the_same_shapes(tmp_path):
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config
    from rl_gpt.generate.export import export_sb3
    from rl_gpt.sb3_policy import actor_layout, read_actor

    relu = load_config("cartpole", ["task.policy_kwargs.activation_fn=relu"], command="generate").task
    tanh = load_config("cartpole", ["task.policy_kwargs.activation_fn=tanh"], command="generate").task
    model = build_model(relu, seed=0)
    layout = actor_layout(model.policy, relu.algo)  # the same shapes as tanh's, another function
    with pytest.raises(ValueError, match="does not match"):
        export_sb3(tanh, layout, read_actor(model.policy, layout), tmp_path / "policy.zip")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num", "0"], "argument --num: 0 is too small"),
        (["--num", "-2"], "--num"),
        (["--average", "0"], "--average"),
        (["--steps", "0"], "--steps"),
        (["--episodes", "0"], "--episodes"),
        (["--guidance", "-1"], "negative"),
        (["--target-return", "nan"], "not a finite number"),
    ],
)
def test_bad_generate_flags_stop_before_anything_is_written(experiment, tmp_path, capsys, flags, message):
    args = ["generate", "--model", str(experiment / "model"), "--out", str(tmp_path / "g"), *flags]
    if "--target-return" not in flags:
        args += ["--target-return", "400"]
    with pytest.raises(SystemExit) as stop:  # argparse: usage and one line on stderr
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()


def test_a_missing_model_or_a_preset_for_another_task_leaves_nothing_behind(experiment, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "--model", str(tmp_path / "none"), "--target-return", "1", "--out", str(out)]) == 2
    assert not out.exists()
    # a model with another task's preset: its sampler settings would apply to the wrong generator
    assert main(["sweep", "digits", "--model", str(experiment / "model"), "--out", str(out), *QUIET]) == 2
    assert "trained for cartpole" in capsys.readouterr().err and not out.exists()
    assert main(["calibrate", "digits", "--model", str(experiment / "model"), *QUIET]) == 2


def test_a_target_outside_the_training_range_is_conditioned_on_its_end_unless_asked(experiment, tmp_path, capsys):
    high = read_model_info(experiment / "model")["normalizer"]["metric_high"]
    args = ["generate", "--model", str(experiment / "model"), "--target-return", "5000", "--episodes", "2"]
    with pytest.warns(UserWarning, match=r"outside the range of the runs the model trained on .* nearest end instead"):
        assert main([*args, "--out", str(tmp_path / "g")]) == 0
    rec = json.loads((tmp_path / "g" / "generated.json").read_text())
    assert rec["target_return"] == 5000.0 and rec["conditioned_on"] == pytest.approx(high)
    # `rl-gpt evaluate` with the recorded seed measures the file as generate did
    policy = rec["policies"][0]
    seed = ["--seed", str(rec["eval_seed"]), "--episodes", "2", "--json", str(tmp_path / "e.json")]
    assert main(["evaluate", str(tmp_path / "g" / policy["file"]), *seed]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["policies"][0]["mean"] == policy["achieved_return"]
    capsys.readouterr()
    assert main([*args, "--out", str(experiment / "dataset")]) == 2  # outputs never land in the data
    assert "holds a checkpoint dataset; write the outputs to another folder" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="conditioning on them as given"):
        assert main([*args, "--extrapolate", "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "generated.json").read_text())["conditioned_on"] == 5000.0


def test_an_edited_generated_json_cannot_make_generate_delete_elsewhere(experiment, tmp_path):
    out, victim = tmp_path / "g", tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    for record in (
        {"policies": [{"file": "../victim.txt"}, {"file": str(victim)}], "folders": ["..", ".", "../victim.txt"]},
        [],
        {"policies": ["a.zip"], "folders": "target_1"},
    ):
        (out / "generated.json").write_text(json.dumps(record))
        args = ["generate", "--model", str(experiment / "model"), "--target-return", "400", "--episodes", "2"]
        assert main([*args, "--out", str(out)]) == 0
        assert victim.read_text() == "keep me"
    # generating again from a policy of the last call into the same folder keeps that start file
    assert main([*args, "--num", "3", "--out", str(out)]) == 0
    start = out / "policy_002.zip"
    assert main([*args, "--from", str(start), "--out", str(out)]) == 0
    assert start.is_file() and not (out / "policy_001.zip").exists()


def test_targets_given_in_python_are_read_as_numbers_never_as_characters():
    from rl_gpt.generate.targets import read_targets

    with pytest.raises(TypeError, match="a number or a sequence of numbers"):
        read_targets("500")  # would iterate its characters: targets 5 and 0
    assert read_targets(np.float32(300)) == [300.0]  # a numpy scalar is one target, not an iterable
    assert read_targets(torch.tensor(250.0)) == [250.0]
    assert read_targets(torch.tensor([100.0, 400.0])) == [100.0, 400.0]
    assert read_targets(np.array([0.3, 1.0], dtype=np.float32)) == pytest.approx([0.3, 1.0])


def test_an_sb3_export_of_a_batch_or_a_classifier_task_says_what_to_pass(tmp_path):
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import load_config
    from rl_gpt.generate.export import export_sb3
    from rl_gpt.sb3_policy import actor_layout, read_actor
    from rl_gpt.supervised import classifier_layout

    task = load_config("cartpole", [], command="generate").task
    model = build_model(task, seed=0)
    layout = actor_layout(model.policy, task.algo)
    flat = read_actor(model.policy, layout)
    with pytest.raises(ValueError, match=r"one network \(\d+,\).*one file per network"):
        export_sb3(task, layout, torch.stack([flat, flat]), tmp_path / "policy.zip")  # was torch's size mismatch
    digits = load_config("digits", [], command="generate").task
    with pytest.raises(ValueError, match="export_safetensors"):  # was "unknown Gymnasium environment 'digits'"
        export_sb3(digits, classifier_layout("digits_mlp"), torch.zeros(760), tmp_path / "c.zip")
    assert not list(tmp_path.iterdir())


def test_a_state_dict_given_as_the_start_says_to_flatten_it():
    from rl_gpt.generate.start import start_tensor
    from rl_gpt.supervised import build_classifier, classifier_layout

    layout = classifier_layout("digits_mlp")
    state = build_classifier("digits_mlp").state_dict()
    with pytest.raises(ValueError, match=r"layout.flatten\(state_dict\)"):  # was torch's "Could not infer dtype"
        start_tensor(state, layout)
    assert torch.equal(start_tensor(layout.flatten(state), layout), layout.flatten(state))


def test_a_test_error_target_is_a_fraction_from_zero_to_one_inclusive() -> None:
    from rl_gpt.config import ConfigError
    from rl_gpt.generate.targets import check_fraction_targets

    check_fraction_targets("test_error", [0.0, 0.05, 1.0])  # both ends are errors a network can have
    with pytest.raises(ConfigError, match=r"for 5 % pass 0.05"):
        check_fraction_targets("test_error", [5.0])
    check_fraction_targets("test_loss", [5.0])  # a loss is no fraction
