"""Resuming, interrupting and restarting `rl-gpt train` on the tiny CartPole ``experiment`` (conftest.py):
a run goes on where it stopped (Ctrl-C, SIGTERM, a save cut short) or says why it cannot."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_helpers import QUIET, TINY_MODEL, ctrl_c_with_a_wandb_run_open
from safetensors.torch import load_file

from rl_gpt.cli import main
from rl_gpt.train.modelfile import ModelFileError, load_generator


def test_a_save_cut_between_its_two_renames_is_resumed_from_the_old_state(experiment, tmp_path, capsys):
    out = tmp_path / "cut"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "train.ckpt_every=10", "train.final_probe=false", *TINY_MODEL]
    assert main([*args, *QUIET, "steps=10"]) == 0
    state = out / "model" / "train_state"
    state.rename(state.with_name("train_state.old"))  # replace_dir moved the old state aside, then was killed
    capsys.readouterr()
    assert main([*args, "wandb.mode=disabled", "steps=10"]) == 0  # found: the run is at step 10 already
    assert "already trained to train.steps=10; nothing to do" in capsys.readouterr().out
    assert main([*args, *QUIET, "steps=20"]) == 0  # goes on from step 10, and its save replaces both names
    assert json.loads((state / "state.json").read_text())["step"] == 20
    assert not state.with_name("train_state.old").exists()


def test_model_files_from_two_saves_are_refused_and_saved_again_by_the_same_train(experiment, tmp_path, capsys):
    out = tmp_path / "pair"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "train.ckpt_every=10", "train.final_probe=false", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=10"]) == 0
    old_json = (out / "model" / "model.json").read_text()
    old_weights = (out / "model" / "model.safetensors").read_bytes()
    assert main([*args, "steps=20"]) == 0
    # a kill between the two renames of the last save: step 20's weights beside step 10's model.json
    (out / "model" / "model.json").write_text(old_json)
    with pytest.raises(ModelFileError, match="come from different saves"):
        load_generator(out / "model")
    assert main(["info", str(out / "model")]) == 0
    assert "from another save than model.json" in capsys.readouterr().out
    assert main([*args, "steps=20"]) == 0  # not "nothing to do": the same command saves both again
    gen, info = load_generator(out / "model")
    assert info["meta"]["step"] == 20
    # a kill between the training state's save and the model's: a whole pair, one save behind
    (out / "model" / "model.json").write_text(old_json)
    (out / "model" / "model.safetensors").write_bytes(old_weights)
    assert main([*args, "steps=20"]) == 0
    assert load_generator(out / "model")[1]["meta"]["step"] == 20


def test_resume_continues_the_same_run(experiment, tmp_path, capsys):
    out = tmp_path / "resume"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "train.ckpt_every=10", "train.warmup=2", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=10"]) == 0
    saved_ema = load_file(str(out / "model" / "model.safetensors"))
    # a later call with more steps continues from step 10 (the "interrupted" run) rather than restarting,
    # and says that the learning rate's schedule, recomputed over 20 steps, jumps back up
    with pytest.warns(UserWarning, match=r"train.steps 10 -> 20: .* at step 10 it goes from 0.0001 to 0.000[56]"):
        assert main([*args, "steps=20"]) == 0
    state = json.loads((out / "model" / "train_state" / "state.json").read_text())
    assert state["step"] == 20
    # the loss curve goes on where the first call stopped (train.log_every=5), and is drawn
    assert [h["step"] for h in state["history"]] == [5, 10, 15, 20]
    assert all(np.isfinite(h["loss"]) and h["lr"] > 0 for h in state["history"])
    assert (out / "model" / "training.png").stat().st_size > 10_000
    resumed_ema = load_file(str(out / "model" / "model.safetensors"))
    assert any(not torch.equal(saved_ema[k], resumed_ema[k]) for k in saved_ema)
    # the model file says that train.steps=20 alone would not train these weights, and `info` repeats it
    segments = json.loads((out / "model" / "model.json").read_text())["meta"]["segments"]
    assert [(s["from_step"], s["steps"], s["processes"]) for s in segments] == [(0, 10, 1), (10, 20, 1)]
    capsys.readouterr()
    assert main(["info", str(out / "model")]) == 0
    assert "resumed with other settings, so its config alone does not retrain it: steps 0+ with train.steps=10" in (
        capsys.readouterr().out
    )
    # the same command again finds the run finished: nothing is trained, measured or rewritten
    written = {f.name: f.stat().st_mtime_ns for f in (out / "model").iterdir() if f.is_file()}
    capsys.readouterr()
    assert main([a for a in args if a != "-q"] + ["steps=20"]) == 0
    said = capsys.readouterr().out
    assert "already trained to train.steps=20; nothing to do" in said and "model written to" not in said
    assert written == {f.name: f.stat().st_mtime_ns for f in (out / "model").iterdir() if f.is_file()}
    # alignment.json written before it recorded its step (an older rl_gpt measured it only at the end)
    alignment = out / "model" / "alignment.json"
    alignment.write_text(json.dumps({k: v for k, v in json.loads(alignment.read_text()).items() if k != "step"}))
    assert main([a for a in args if a != "-q"] + ["steps=20"]) == 0
    assert "already trained to train.steps=20; nothing to do" in capsys.readouterr().out
    # a run stopped while measuring its alignment (alignment.json of another step) measures it again
    alignment.write_text(json.dumps(json.loads(alignment.read_text()) | {"step": 10}))
    assert main([*args, "steps=20"]) == 0
    assert json.loads(alignment.read_text())["step"] == 20
    # changing what is trained is refused instead of silently mixing two runs, naming the values
    capsys.readouterr()
    assert main([*args, "steps=30", "train.lr=0.5"]) == 2
    said = capsys.readouterr().err
    assert "holds a run trained with other settings (train.lr: 0.001 -> 0.5); pass train.lr=0.001 to go on" in said
    assert main([*args, "steps=30", "train.model_overrides={width: 16, depth: 1}"]) == 2
    assert "train.model or model_overrides differ from the run's" in capsys.readouterr().err


def test_a_resumed_run_says_it_does_not_use_runs_added_since(experiment, tmp_path, capsys):
    out = tmp_path / "grown"
    shutil.copytree(experiment / "dataset", out / "dataset")
    assert main(["train", "cartpole", f"out={out}", "steps=4", *TINY_MODEL, *QUIET]) == 0
    more = ["runs=5", "timesteps=1024", "collect.checkpoint_every=256", "task.n_envs=2", "collect.eval_episodes=2"]
    assert main(["collect", "cartpole", f"out={out}", "workers=1", *more, *QUIET]) == 0
    capsys.readouterr()
    assert main(["info", str(out / "model")]) == 0  # the model's description says so too
    assert "held out; the dataset now has 5 runs, 1 added since (train again with --restart" in capsys.readouterr().out
    with pytest.warns(UserWarning, match=r"has 1 run\(s\) more than .* train with --restart to use them"):
        assert main(["train", "cartpole", f"out={out}", "steps=6", *TINY_MODEL, *QUIET]) == 0


def test_a_run_resumed_on_another_collection_is_refused(experiment, tmp_path, capsys):
    """Found by resuming a stopped digits training with dataset= another collection (collect.seed 5): it went
    on silently, as if that dataset had only grown, under the first one's split and normaliser."""
    out, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(experiment / "dataset", out / "dataset")
    shutil.copytree(experiment / "dataset", other)
    spec = json.loads((other / "spec.json").read_text())
    spec["collect"]["seed"] = 7  # as `rl-gpt collect seed=7` records it
    (other / "spec.json").write_text(json.dumps(spec))
    args = ["train", "cartpole", f"out={out}", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=4"]) == 0
    capsys.readouterr()
    assert main([*args, "steps=6", f"dataset={other}"]) == 2
    err = capsys.readouterr().err
    assert "holds a run started on a dataset collected otherwise than" in err and "collect.seed: 0 -> 7" in err
    assert f"pass dataset={(out / 'dataset').resolve()} to go on with that run" in err
    assert json.loads((out / "model" / "train_state" / "state.json").read_text())["step"] == 4
    moved = tmp_path / "moved"  # the same collection in another folder goes on
    shutil.copytree(out / "dataset", moved)
    assert main([*args, "steps=6", f"dataset={moved}"]) == 0


def test_a_run_whose_dataset_was_collected_again_in_its_folder_is_not_told_to_pass_that_folder(
    experiment, tmp_path, capsys
):
    """The refusal said "pass dataset=DIR to go on with that run" with DIR the very folder given, which now holds
    the other collection."""
    out = tmp_path / "again"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=4"]) == 0
    spec = json.loads((out / "dataset" / "spec.json").read_text())
    spec["collect"]["seed"] = 7  # deleted and collected again with seed=7 into the same folder
    (out / "dataset" / "spec.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main([*args, "steps=6"]) == 2
    err = capsys.readouterr().err
    assert "collect.seed: 0 -> 7" in err and "pass dataset=" not in err and "no longer there" in err


def test_a_run_of_two_processes_goes_on_in_one_only_with_the_same_pairs_per_step(experiment, tmp_path, capsys):
    out = tmp_path / "fewer"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", *TINY_MODEL, *QUIET]  # batch=32
    assert main([*args, "steps=4"]) == 0
    state = out / "model" / "train_state" / "state.json"
    saved = json.loads(state.read_text())
    saved["data"]["processes"] = 2  # as if torchrun had trained it on two: 64 pairs per step
    state.write_text(json.dumps(saved))
    capsys.readouterr()
    assert main([*args, "steps=6", "batch=48"]) == 2  # 48 pairs per step: another run
    assert "train.batch: 32 -> 48" in capsys.readouterr().err
    assert main([*args, "steps=6", "batch=64"]) == 0  # the same 64: it goes on
    assert json.loads(state.read_text())["step"] == 6


def test_a_model_folder_being_trained_is_refused_to_a_second_training(experiment, tmp_path, capsys):
    """A second `rl-gpt train` (or a restart while a killed torchrun's workers go on) must not write
    over a running training's steps."""
    from rl_gpt.io import exclusive_folder

    out = tmp_path / "busy"
    shutil.copytree(experiment / "dataset", out / "dataset")
    (out / "model").mkdir()
    with exclusive_folder(out / "model", "train"):
        assert main(["train", "cartpole", f"out={out}", "steps=10", *TINY_MODEL, *QUIET]) == 2
    assert "is being written by another process" in capsys.readouterr().err
    assert list((out / "model").iterdir()) == []
    assert main(["train", "cartpole", f"out={out}", "steps=10", *TINY_MODEL, *QUIET]) == 0


def test_a_second_ctrl_c_during_the_interrupt_save_waits_for_it(experiment, tmp_path, monkeypatch, capsys):
    import signal

    from rl_gpt.train import checkpoint as ckpt

    out = tmp_path / "twice"
    shutil.copytree(experiment / "dataset", out / "dataset")
    calls = {"lr": 0}

    def first_ctrl_c(step, cfg):
        calls["lr"] += 1
        if calls["lr"] == 4:
            raise KeyboardInterrupt
        return cfg.lr

    save = ckpt.save_train_state

    def second_ctrl_c_while_saving(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        save(*args, **kwargs)

    monkeypatch.setattr("rl_gpt.train.loop.lr_at", first_ctrl_c)
    monkeypatch.setattr("rl_gpt.train.loop.save_train_state", second_ctrl_c_while_saving)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        assert main(["train", "cartpole", f"out={out}", "steps=50", *TINY_MODEL, "wandb.mode=disabled"]) == 130
    finally:
        signal.signal(signal.SIGINT, outer)
    assert "interrupted at step 3; checkpoint saved" in capsys.readouterr().out
    assert json.loads((out / "model" / "train_state" / "state.json").read_text())["step"] == 3


def test_an_interrupted_run_resumed_ends_as_the_uninterrupted_one(experiment, tmp_path, monkeypatch):
    """Bit for bit: the random streams follow the step, and a Ctrl-C during an update waits for it."""
    import signal

    import rl_gpt.train.loop as loop

    dropout = "train.model_overrides={width: 32, depth: 1, dropout: 0.2}"  # draws from torch's default generator
    args = ["train", "cartpole", "steps=12", "train.ckpt_every=100", "train.warmup=2", *TINY_MODEL, dropout, *QUIET]
    whole, split = tmp_path / "whole", tmp_path / "split"
    for out in (whole, split):
        shutil.copytree(experiment / "dataset", out / "dataset")
    assert main([*args, f"out={whole}"]) == 0
    update_ema = loop.update_ema

    def ctrl_c_mid_update(ema, model, decay, step):  # after opt.step(), before the step is counted
        update_ema(ema, model, decay, step)
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with monkeypatch.context() as patch:
            patch.setattr(loop, "update_ema", ctrl_c_mid_update)
            assert main([*args, f"out={split}"]) == 130
    finally:
        signal.signal(signal.SIGINT, outer)
    assert json.loads((split / "model" / "train_state" / "state.json").read_text())["step"] == 7
    assert main([*args, f"out={split}"]) == 0  # resumed from step 7
    a, b = (load_file(str(out / "model" / "model.safetensors")) for out in (whole, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_restart_stopped_before_its_first_checkpoint_is_not_resumed_as_the_old_run(
    experiment, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "restart"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=10"]) == 0
    assert (out / "model" / "train_state" / "state.json").is_file()

    def crash(*_args, **_kwargs):  # a kill -9 before the restart's first checkpoint
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr("rl_gpt.train.loop.lr_at", crash)
        with pytest.raises(RuntimeError, match="killed"):
            main([*args, "steps=20", "--restart"])
    assert not (out / "model" / "train_state").exists()
    capsys.readouterr()
    assert main([a for a in args if a != "-q"] + ["steps=20"]) == 0
    assert "resuming from step" not in capsys.readouterr().out  # a new run, not the old one's step 10
    assert json.loads((out / "model" / "train_state" / "state.json").read_text())["step"] == 20


def test_a_resumed_training_logs_to_the_wandb_run_it_began(experiment, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "wb"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", *TINY_MODEL, "wandb.mode=offline", "-q"]
    assert main([*args, "steps=5"]) == 0
    assert main([*args, "steps=10"]) == 0  # resumed from step 5
    parts = sorted((out / "model" / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and len({part.name for part in parts}) == 2
    assert len({run.stem for run in (out / "model" / "wandb").glob("offline-run-*/run-*.wandb")}) == 1, parts
    assert main([*args, "steps=5", "--restart"]) == 0  # a new run of the folder is a new W&B run
    assert len({run.stem for run in (out / "model" / "wandb").glob("offline-run-*/run-*.wandb")}) == 2


@pytest.mark.parametrize(
    ("stopped", "setting", "said", "kept"),
    [
        ("rl_gpt.sweep.calibrate.ensure_calibrated", "train.calibrate=true", "calibrating", "calibration.json"),
        ("rl_gpt.train.loop.quick_alignment", "train.final_probe=true", "measuring prompt alignment", "alignment.json"),
    ],
)
def test_ctrl_c_after_training_keeps_the_model(experiment, tmp_path, monkeypatch, capsys, stopped, setting, said, kept):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stopped, ctrl_c)
    out = tmp_path / "stopped"
    shutil.copytree(experiment / "dataset", out / "dataset")
    small = ["sweep.calibration_inits=2", "sweep.calibration_prompts=3", "sweep.episodes=2"]
    args = ["train", "cartpole", f"out={out}", "steps=4", *TINY_MODEL, setting, *small, *QUIET]
    assert main(args) == 130
    assert f"interrupted while {said}: the model in" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / kept).exists()
    monkeypatch.undo()  # the same command measures it, and trains no further
    assert main(args) == 0 and (out / "model" / kept).is_file()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(experiment, tmp_path):
    """`kill PID` (a scheduler's stop; also how to stop `nohup rl-gpt train &`, which ignores Ctrl-C)."""
    out = tmp_path / "term"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "train.ckpt_every=10", *TINY_MODEL, *QUIET, "steps=100000"]
    code = "import sys; from rl_gpt.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    state_file = out / "model" / "train_state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state_file.exists():  # the first periodic checkpoint
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout
    assert "interrupted at step" in stdout and "Run the same command to resume" in stdout
    step = json.loads(state_file.read_text())["step"]
    assert 10 <= step < 100000
    from rl_gpt.train.modelfile import load_generator

    with pytest.warns(UserWarning, match=f"saved at step {step} of train.steps=100000"):  # sweeps say so
        load_generator(out / "model")
    assert main([*args[:-1], f"steps={step + 5}"]) == 0  # continues from the saved step
    assert json.loads(state_file.read_text())["step"] == step + 5


def test_resume_after_a_registry_change_is_one_line(experiment, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from rl_gpt.model import MODELS

    out = tmp_path / "registry"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "steps=4", "train.ckpt_every=2", *TINY_MODEL, *QUIET]
    assert main(args) == 0
    monkeypatch.setitem(MODELS, "mlp", replace(MODELS["mlp"], mlp_ratio=2.0))  # same name, other network
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--restart" in err and "a registry default changed since" in err, err
    assert main([*args, "--restart"]) == 0


def test_training_fewer_steps_than_are_saved_is_refused(experiment, tmp_path, capsys):
    out = tmp_path / "short"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "train.ckpt_every=10", "train.final_probe=false", *TINY_MODEL, *QUIET]
    assert main([*args, "steps=20"]) == 0
    capsys.readouterr()
    assert main([*args, "steps=10"]) == 2
    assert "already trained to step 20" in capsys.readouterr().err
    assert main([*args, "steps=10", "--restart"]) == 0
    assert json.loads((out / "model" / "train_state" / "state.json").read_text())["step"] == 10


class _WandbRunStandIn:
    """Finishes once, as W&B's run does, and keeps what the command had said by then."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self.capfd = capfd
        self.exit_codes: list[int] = []
        self.said_before = ""

    def log(self, data: dict, step: int | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        if not self.exit_codes:
            said = self.capfd.readouterr()
            self.said_before = said.out + said.err
            self.exit_codes.append(exit_code)


@pytest.mark.parametrize("stop", ["ctrl_c", "full_disk"])
def test_wandb_runs_finish_before_the_line_that_says_what_to_do(experiment, tmp_path, monkeypatch, capfd, stop):
    """W&B's closing lines ("You can sync this run…") came after it, at the interpreter's exit."""
    import errno

    import rl_gpt.train.loop as loop
    import rl_gpt.wandb_run as wandb_run

    out = tmp_path / stop
    shutil.copytree(experiment / "dataset", out / "dataset")
    run = _WandbRunStandIn(capfd)

    def opened(cfg, processes, resume):  # a run start_run opened
        wandb_run._started.append(run)
        return run

    def stopped(step, cfg):
        if step == 2:
            raise KeyboardInterrupt if stop == "ctrl_c" else OSError(errno.ENOSPC, "No space left on device")
        return cfg.lr

    monkeypatch.setattr(loop, "_wandb_init", opened)
    monkeypatch.setattr(loop, "lr_at", stopped)
    code = main(["train", "cartpole", f"out={out}", "steps=5", *TINY_MODEL, "train.final_probe=false"])
    assert code == (130 if stop == "ctrl_c" else 1)
    said_after = "".join(capfd.readouterr())
    last = "interrupted at step 2" if stop == "ctrl_c" else "No space left on device"
    assert last not in run.said_before and last in said_after
    assert run.exit_codes == [1] and wandb_run._started == []


def test_a_wandb_run_that_fails_to_finish_does_not_hide_the_interrupted_line(experiment, tmp_path, monkeypatch, capfd):
    """Finishing the W&B run before the line that says what to do (4b73401) let W&B's error there replace that
    line and the interrupt (rl-gpt train: error: ..., exit 1): the command's own finish guards against it."""
    import rl_gpt.train.loop as loop
    import rl_gpt.wandb_run as wandb_run

    out = tmp_path / "broken_wandb"
    shutil.copytree(experiment / "dataset", out / "dataset")
    run = _WandbRunStandIn(capfd)

    def failing_finish(exit_code: int = 0) -> None:
        raise RuntimeError("W&B: the upload failed")

    run.finish = failing_finish

    def opened(cfg, processes, resume):
        wandb_run._started.append(run)
        return run

    def stopped(step, cfg):
        if step == 2:
            raise KeyboardInterrupt
        return cfg.lr

    monkeypatch.setattr(loop, "_wandb_init", opened)
    monkeypatch.setattr(loop, "lr_at", stopped)
    code = main(["train", "cartpole", f"out={out}", "steps=5", *TINY_MODEL, "train.final_probe=false"])
    said = "".join(capfd.readouterr())
    assert code == 130 and "interrupted at step 2" in said and "upload failed" not in said
    assert wandb_run._started == []


def test_ctrl_c_while_the_calibration_is_logged_says_it_was_written_after_wbs_lines(
    experiment, tmp_path, monkeypatch, capsys
):
    """Found by interrupting `rl-gpt train digits` while calibrate's W&B run logged: it said 'without a
    calibration' of a calibration.json it had written, and W&B's closing lines came under that line."""
    monkeypatch.setattr("rl_gpt.sweep.calibrate._log_wandb", ctrl_c_with_a_wandb_run_open)
    out = tmp_path / "stopped"
    shutil.copytree(experiment / "dataset", out / "dataset")
    small = ["sweep.calibration_inits=2", "sweep.calibration_prompts=3", "sweep.episodes=2"]
    args = ["train", "cartpole", f"out={out}", "steps=4", *TINY_MODEL, "train.calibrate=true", *small, *QUIET]
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert (out / "model" / "calibration.json").is_file()
    assert err[-1] == f"interrupted after {out / 'model' / 'calibration.json'} was written; " + (
        "calibration.png or the W&B log may be missing"
    ), err


def test_a_run_saved_with_the_per_tensor_optimiser_goes_on_with_foreach_to_the_same_numbers(
    experiment, tmp_path, monkeypatch
):
    """Runs saved before session 42 recorded AdamW's foreach unset (one tensor at a time on the CPU) and a
    per-tensor EMA; resumed now, they go on with the foreach kernels and end as an uninterrupted run does."""
    import signal

    import rl_gpt.train.loop as loop

    args = ["train", "cartpole", "steps=12", "train.ckpt_every=100", "train.warmup=2", *TINY_MODEL, *QUIET]
    whole, split = tmp_path / "whole", tmp_path / "split"
    for out in (whole, split):
        shutil.copytree(experiment / "dataset", out / "dataset")
    assert main([*args, f"out={whole}"]) == 0

    def old_optimizer(model, cfg):  # the code before session 42
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    @torch.no_grad()
    def old_ema_then_ctrl_c(ema, model, decay, step):
        decay = min(decay, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(loop, "make_optimizer", old_optimizer)
            patch.setattr(loop, "update_ema", old_ema_then_ctrl_c)
            assert main([*args, f"out={split}"]) == 130
    finally:
        signal.signal(signal.SIGINT, outer)
    state = json.loads((split / "model" / "train_state" / "state.json").read_text())
    assert state["step"] == 6 and [g["foreach"] for g in state["param_groups"]] == [None]
    adam = importlib.import_module("torch.optim.adam")  # AdamW's step runs Adam's kernels
    multi, calls = adam._multi_tensor_adam, []
    monkeypatch.setattr(adam, "_multi_tensor_adam", lambda *a, **k: calls.append(1) or multi(*a, **k))
    assert main([*args, f"out={split}"]) == 0  # resumed from step 6
    assert len(calls) == 6  # the foreach kernels, not the saved run's per-tensor loop
    for name in ("model/model.safetensors", "model/train_state/state.safetensors"):
        a, b = (load_file(str(out / name)) for out in (whole, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history = [json.loads((out / "model/train_state/state.json").read_text())["history"] for out in (whole, split)]
    assert history[0] == history[1]
