"""Train → sweep → generate on a tiny CartPole dataset, through the real CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from tensordict import TensorDict

from rl_gpt.cli import main
from rl_gpt.demo import format_table
from rl_gpt.evaluate import evaluate_sb3_file
from rl_gpt.evaluate.sb3 import read_sb3_file
from rl_gpt.train.modelfile import ModelFileError, check_compatible, load_generator, model_dataset, read_model_info

QUIET = ["wandb.mode=disabled", "-q"]
TINY_MODEL = [
    "model=mlp",
    "train.model_overrides={width: 32, depth: 1}",
    "batch=32",
    "train.probe_every_s=0",
    "train.log_every=5",
    "train.test_fraction=0.25",
    "train.calibrate=false",  # the tests that calibrate ask for it
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp")
    assert (
        main(
            [
                "collect",
                "cartpole",
                f"out={out}",
                "runs=4",
                "timesteps=1024",
                "collect.checkpoint_every=256",
                "task.n_envs=2",
                "workers=1",
                "collect.eval_episodes=2",
                *QUIET,
            ]
        )
        == 0
    )
    assert main(["train", "cartpole", f"out={out}", "steps=30", "train.ckpt_every=10", *TINY_MODEL, *QUIET]) == 0
    return out


def test_evaluating_dataset_rows_reproduces_their_labels_by_default(experiment, capsys):
    from rl_gpt.dataset import CheckpointDataset

    labels = CheckpointDataset(experiment / "dataset").data["metric"][:3].tolist()
    capsys.readouterr()
    assert main(["evaluate", f"{experiment / 'dataset'}:0:3"]) == 0  # the labels' 2 episodes and seed 10,000
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header == "returns (2 episodes, seed 10000, deterministic actions):"
    for line, label in zip(lines, labels, strict=True):
        measured = float(line.split(": ")[1].split(" +- ")[0])
        assert measured == pytest.approx(label, abs=0.01) and line.endswith(f"(label {label:.2f})"), line
    assert main(["evaluate", f"{experiment / 'dataset'}:1:3", "--stochastic"]) == 0  # depends on the rows together:
    said = capsys.readouterr().out
    assert "label" not in said and "stochastic actions" in said  # no label is claimed, and it says how it measured


def test_model_file_is_self_describing(experiment):
    info = read_model_info(experiment / "model")
    assert info["meta"]["step"] == 30
    assert set(info) >= {"model", "diffusion", "normalizer", "layout", "spec", "meta"}
    assert info["meta"]["train_runs"] and info["meta"]["test_runs"]
    assert not set(info["meta"]["train_runs"]) & set(info["meta"]["test_runs"])
    weights = load_file(str(experiment / "model" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_info_summarises_a_model_and_an_experiment_folder(experiment, tmp_path, capsys):
    assert main(["info", str(experiment / "model")]) == 0
    out = capsys.readouterr().out
    assert "task         cartpole (CartPole-v1)" in out and "step 30 of train.steps=30 (finished)" in out
    assert "3 for training, 1 held out" in out and f"dataset      {experiment / 'dataset'}" in out
    assert main(["info", str(experiment)]) == 0  # the experiment folder: its dataset, then its model
    out = capsys.readouterr().out
    assert out.index("runs         4") < out.index("model        ") and "M parameters" in out
    assert main(["info", str(tmp_path / "none")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["info", str(experiment / "model" / "model.json")]) == 0  # the file that marks a folder: that folder
    assert "step 30 of train.steps=30 (finished)" in capsys.readouterr().out


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


def test_damaged_model_files_are_one_line_errors(experiment, tmp_path, capsys):
    import pickle

    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    (model / "model.safetensors").write_bytes(pickle.dumps({"weights": 1}))  # a pickle where safetensors belong
    args = ["generate", "--model", str(model), "--target-return", "100", "--out", str(tmp_path / "g")]
    assert main(args) == 2
    assert "model.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert main(["info", str(model)]) == 0  # info still describes the rest
    assert "unreadable weights file" in capsys.readouterr().out
    (model / "model.json").write_text('{"format": ')
    assert main(["info", str(model)]) == 2
    assert "model.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # 10^11 weights if built: refused from the weights file's header, before anything is allocated
        (lambda info: info["model"].update(width=100_000 * info["model"].get("heads", 1)), r"tensor\(s\) differ"),
        (lambda info: info["diffusion"].update(steps=10**9), r"diffusion steps 1000000000 is not 1\.\.100000"),
    ],
)
def test_model_json_sizes_are_checked_against_the_weights_before_building(experiment, tmp_path, capsys, change, said):
    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    info = json.loads((model / "model.json").read_text())
    change(info)
    (model / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelFileError, match=said):
        load_generator(model)


def test_a_run_shorter_than_its_warmup_says_so(experiment, tmp_path):
    args = ["train", "cartpole", f"out={tmp_path}", f"dataset={experiment / 'dataset'}", "steps=3", *TINY_MODEL, *QUIET]
    with pytest.warns(UserWarning, match="train.steps=3 ends within the 200-step warm-up"):
        assert main([*args, "train.final_probe=false"]) == 0


def test_a_moved_run_folder_finds_its_dataset(experiment, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(experiment / "dataset", moved / "dataset")
    shutil.copytree(experiment / "model", moved / "model")
    info = read_model_info(moved / "model")
    info["meta"]["dataset"] = str(tmp_path / "gone")  # the original place no longer exists
    assert model_dataset(moved / "model", info) == (moved / "dataset").resolve()
    del info["meta"]["dataset_relative"]  # a model from before the relative path was stored
    with pytest.raises(ModelFileError, match="dataset=PATH"):
        model_dataset(moved / "model", info)
    assert model_dataset(moved / "model", info, fallback=moved / "dataset") == moved / "dataset"


def test_a_copied_run_folder_reads_its_own_dataset(experiment, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(experiment / "dataset", copy / "dataset")
    shutil.copytree(experiment / "model", copy / "model")
    info = read_model_info(copy / "model")
    assert Path(info["meta"]["dataset"]).resolve() == (experiment / "dataset").resolve()  # where it was trained
    assert model_dataset(copy / "model", info) == (copy / "dataset").resolve()  # the copy's, not the original's
    assert model_dataset(experiment / "model", info) == Path(info["meta"]["dataset"])  # in place: as recorded


def test_a_dataset_the_user_names_is_used_and_checked(experiment, tmp_path):
    """dataset= / --dataset is not ignored when the recorded one exists; another task's is refused."""
    copy = tmp_path / "copy"
    shutil.copytree(experiment / "dataset", copy)
    info = read_model_info(experiment / "model")
    assert model_dataset(experiment / "model", info, given=copy) == copy
    with pytest.warns(UserWarning, match="holds no dataset"):
        assert model_dataset(experiment / "model", info, given=tmp_path / "typo") == Path(info["meta"]["dataset"])
    spec = json.loads((copy / "spec.json").read_text())
    spec["task"]["name"], spec["env_id"] = "pendulum", "Pendulum-v1"
    (copy / "spec.json").write_text(json.dumps(spec))
    args = ["sweep", "--model", str(experiment / "model"), "--out", str(tmp_path / "s"), f"dataset={copy}"]
    assert main([*args, *QUIET]) == 2
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_sweeps_retrieval_and_novelty_pool_is_the_training_runs_usable_checkpoints(experiment, tmp_path, monkeypatch):
    import rl_gpt.sweep.run as sweep_run

    copy = tmp_path / "copy"
    shutil.copytree(experiment / "dataset", copy)
    td = TensorDict.load_memmap(copy / "data", allow_pickle=False).clone()
    td["valid"][td["step"] == 256] = False  # checkpoints training may not use (exploding weights, say)
    shutil.rmtree(copy / "data")
    td.memmap(copy / "data")
    seen, novelty, evaluate_flat, evaluated = {}, sweep_run.novelty_audit, sweep_run.evaluate_flat, []

    def spy(ds, methods, inits, pool_rows, train_runs, test_runs, seed=0):
        seen.update(ds=ds, pool=pool_rows, retrieved=methods["retrieval"][0], noisy=methods["noise"][0])
        seen.update(train=train_runs, test=test_runs)
        return novelty(ds, methods, inits, pool_rows, train_runs, test_runs, seed)

    def measured(ds, params, *args, stats_rows=None, **kwargs):
        evaluated.append((params, stats_rows))
        return evaluate_flat(ds, params, *args, stats_rows=stats_rows, **kwargs)

    monkeypatch.setattr(sweep_run, "novelty_audit", spy)
    monkeypatch.setattr(sweep_run, "evaluate_flat", measured)
    args = ["sweep", "--model", str(experiment / "model"), "--out", str(tmp_path / "s"), f"dataset={copy}"]
    sizes = ["inits=2", "prompts=3", "samples=1", "episodes=1", "sweep.recursive=0", "sweep.rerank=1"]
    assert main([*args, *sizes, *QUIET]) == 0
    ds, pool = seen["ds"], seen["pool"]
    slices = ds.run_slices()
    usable = [i for r in seen["train"] for i in range(slices[r].start, slices[r].stop) if ds.valid_mask()[i]]
    assert seen["test"] and sorted(pool.tolist()) == usable  # no held-out run, no invalid row
    assert any(torch.equal(seen["retrieved"][0], ds.data["params"][i]) for i in usable)
    # the noise baseline: the retrieved checkpoint plus sweep.noise_scale (0.1) of each tensor's std
    noise = (seen["noisy"] - seen["retrieved"]) / load_generator(experiment / "model")[0].normalizer.std
    assert float(noise.std()) == pytest.approx(0.1, rel=0.2) and abs(float(noise.mean())) < 0.03
    # each retrieved (or noised) checkpoint is measured with its own row's observation statistics
    own = [(p, rows) for p, rows in evaluated if rows is not None]
    assert len(own) == 2 and all(torch.equal(p, ds.data["params"][rows]) for p, rows in own[:1])
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["novelty"]["nn_dist_heldout"] > 0  # the held-out run's final checkpoint is not in the pool
    assert report["novelty"]["retrieval"] == 0  # a training checkpoint is its own nearest: the whole pool is searched


def test_novelty_without_held_out_runs_keeps_the_runs_standing_in_out_of_the_pool(experiment, tmp_path, monkeypatch):
    """train.test_fraction=0 leaves no held-out run: two training runs stand in, so they must leave the pool
    (their own final checkpoints would be their nearest, and every novelty ratio 0/0)."""
    import rl_gpt.sweep.run as sweep_run

    novelty = sweep_run.novelty_audit

    def without_held_out(ds, methods, inits, pool_rows, train_runs, test_runs, seed=0):
        return novelty(ds, methods, inits, pool_rows, train_runs, [], seed)

    monkeypatch.setattr(sweep_run, "novelty_audit", without_held_out)
    args = ["sweep", "--model", str(experiment / "model"), "--out", str(tmp_path / "s")]
    sizes = ["inits=2", "prompts=3", "samples=1", "episodes=1", "sweep.recursive=0", "sweep.rerank=1"]
    assert main([*args, *sizes, *QUIET]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["novelty"]["nn_dist_heldout"] > 0
    assert all(math.isfinite(report["novelty"][name]) for name in ("generator", "retrieval", "noise"))


def test_training_permutes_theta_and_theta_next_of_a_pair_alike(experiment, tmp_path, monkeypatch):
    from rl_gpt.train.generator import ParameterGenerator

    out = tmp_path / "aug"
    td = TensorDict.load_memmap(experiment / "dataset" / "data", allow_pickle=False).clone()
    first = {int(r): i for i, r in reversed(list(enumerate(td["run"].tolist())))}
    for i, r in enumerate(td["run"].tolist()):  # every checkpoint a multiple of its run's init: θ' = c θ
        td["params"][i] = (1 + i - first[r]) * td["params"][first[r]]
    shutil.copytree(experiment / "dataset", out / "dataset", ignore=shutil.ignore_patterns("data"))
    td.memmap(out / "dataset" / "data")
    pairs, loss = [], ParameterGenerator.loss

    def recording(self, batch, *args, **kwargs):
        pairs.append((batch["theta"].clone(), batch["theta_next"].clone()))
        return loss(self, batch, *args, **kwargs)

    monkeypatch.setattr(ParameterGenerator, "loss", recording)
    args = ["train", "cartpole", f"out={out}", "steps=2", "train.final_probe=false", *TINY_MODEL, *QUIET]
    assert main(args) == 0
    theta, theta_next = (torch.cat(x) for x in zip(*pairs))
    cos = torch.nn.functional.cosine_similarity(theta, theta_next, dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # one permutation for both: still θ' = c θ
    stored = td["params"].float()
    as_stored = (theta[:, None] == stored[None]).all(-1).any(-1)
    assert as_stored.float().mean() < 0.1  # ... and the pairs were permuted


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


def test_a_dataset_whose_metric_never_changes_is_said_before_training(experiment, tmp_path):
    out = tmp_path / "flat"
    shutil.copytree(experiment / "dataset", out / "dataset")
    data = TensorDict.load_memmap(out / "dataset" / "data", allow_pickle=False)
    data["metric"].fill_(-200.0)  # MountainCar before any run learns
    args = ["train", "cartpole", f"out={out}", "steps=2", "train.final_probe=false", *TINY_MODEL, *QUIET]
    with pytest.warns(UserWarning, match="every training checkpoint has return -200: with no spread"):
        assert main(args) == 0


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("task.algo=sac", "holds PPO policies but the config has task.algo=sac"),
        ("task.policy_kwargs={net_arch: {pi: [8], vf: [64, 64]}}", "actors of another shape or activation"),
        ("task.policy_kwargs.activation_fn=relu", "actors of another shape or activation"),
    ],
)
def test_a_config_whose_policy_differs_from_the_datasets_is_refused(experiment, tmp_path, capsys, override, said):
    args = ["train", "cartpole", f"out={tmp_path}", f"dataset={experiment / 'dataset'}", "steps=2", *TINY_MODEL]
    assert main([*args, override, *QUIET]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


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


def test_an_interrupted_sweep_says_so_and_leaves_no_empty_folder(experiment, tmp_path, monkeypatch, capsys):
    import rl_gpt.sweep.run

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rl_gpt.sweep.run, "sample_candidates", ctrl_c)
    out = tmp_path / "sweep"
    args = ["sweep", "cartpole", f"out={experiment}", "--out", str(out), "inits=2", "prompts=2", "episodes=2"]
    assert main(args) == 130
    assert "interrupted: a sweep writes report.json only when it ends" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr("rl_gpt.sweep.plot.plot_sweep", ctrl_c)  # after report.json is written
    assert main(args) == 130
    assert f"interrupted after {out / 'report.json'} was written" in capsys.readouterr().err
    assert (out / "report.json").is_file()


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


def test_a_world_size_without_torchrun_is_one_line(experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    out = tmp_path / "ws"
    assert main(["train", "cartpole", f"out={out}", f"dataset={experiment / 'dataset'}", "steps=2", *TINY_MODEL]) == 2
    assert "WORLD_SIZE=2 is set but MASTER_ADDR / MASTER_PORT are not: start distributed training with" in (
        capsys.readouterr().err
    )
    assert not out.exists()


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


def test_probes_run_only_when_a_wandb_run_takes_them(experiment, tmp_path, monkeypatch):
    import rl_gpt.train.loop

    calls = []
    monkeypatch.setattr(rl_gpt.train.loop, "quick_alignment", lambda *a, **k: calls.append(k) or 0.5)
    out = tmp_path / "probe"
    shutil.copytree(experiment / "dataset", out / "dataset")
    often = [*TINY_MODEL, "train.probe_every_s=1e-9", "train.final_probe=false", "steps=3", *QUIET]
    assert main(["train", "cartpole", f"out={out}", *often]) == 0
    assert calls == [], "W&B disabled: nothing would read the probe"

    class Recorder:
        def __init__(self) -> None:
            self.logged: list[dict] = []

        def log(self, data: dict, step: int | None = None) -> None:
            self.logged.append(data)

        def finish(self) -> None:
            pass

    recorder = Recorder()
    monkeypatch.setattr(rl_gpt.train.loop, "_wandb_init", lambda cfg, resume: recorder)
    assert main(["train", "cartpole", f"out={tmp_path / 'probe2'}", f"dataset={out / 'dataset'}", *often]) == 0
    probes = [d for d in recorder.logged if "probe/train_r2" in d]
    assert len(probes) == 3 and len(calls) == 6  # every step, for training and held-out inits


def test_throughput_leaves_out_probe_time(experiment, tmp_path, monkeypatch):
    import rl_gpt.train.loop

    now = [0.0]

    def clock() -> float:  # 10 ms between any two readings, and 1,000 s inside each probe
        now[0] += 0.01
        return now[0]

    def slow_probe(*args, **kwargs) -> float:
        now[0] += 1000.0
        return 0.5

    logged: list[dict] = []
    recorder = types.SimpleNamespace(log=lambda data, step=None: logged.append(data), finish=lambda: None)
    monkeypatch.setattr(rl_gpt.train.loop, "time", types.SimpleNamespace(time=clock))
    monkeypatch.setattr(rl_gpt.train.loop, "quick_alignment", slow_probe)
    monkeypatch.setattr(rl_gpt.train.loop, "_wandb_init", lambda cfg, resume: recorder)
    out = tmp_path / "rate"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = [*TINY_MODEL, "train.probe_every_s=1e-9", "train.final_probe=false", "train.log_every=1", "steps=3"]
    assert main(["train", "cartpole", f"out={out}", *args, *QUIET]) == 0
    rates = [d["samples_per_s"] for d in logged if "samples_per_s" in d]
    # 32 pairs a step over a few clock readings: hundreds a second; counting the probes would give < 0.1
    assert len(rates) == 3 and min(rates) > 32, rates


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


def test_training_refuses_another_tasks_data_or_run_naming_both_tasks(experiment, tmp_path, capsys):
    out = tmp_path / "mixed"
    args = [f"out={out}", f"dataset={experiment / 'dataset'}", "steps=2", *TINY_MODEL, *QUIET]
    assert main(["train", "digits", *args]) == 2  # CartPole checkpoints under a digits config
    err = capsys.readouterr().err.strip()
    assert "holds cartpole (CartPole-v1) checkpoints but the config is for digits" in err, err
    assert f"the config it was collected with ({experiment / 'dataset' / 'config.yaml'})" in err, err
    assert not out.exists()  # refused before the model folder was made
    assert main(["train", "cartpole", *args]) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    info["spec"]["task"]["name"] = "acrobot"  # as if that folder held another task's run
    (out / "model" / "model.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["train", "cartpole", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a generator trained for acrobot" in err and "--restart" in err, err


def test_a_network_that_fails_in_recursive_prompting_stays_failed_and_the_sweep_finishes(
    experiment, tmp_path, monkeypatch
):
    """The sampler refuses non-finite inputs: a network that fails at step 1 had crashed the sweep at step 2,
    before report.json. It now stays failed, scored as the worst prompt, and the others go on."""
    import rl_gpt.sweep.run

    real = rl_gpt.sweep.run.run_prompts
    calls = []

    def one_fails(gen, ref, theta, metric, cond, samples, *rest):
        out = real(gen, ref, theta, metric, cond, samples, *rest)
        if len(cond) == 1:  # a recursive step (the sweep's own calls have 3 prompts)
            calls.append(len(theta))
            if len(calls) == 1:
                out[1] = math.nan
        return out

    monkeypatch.setattr(rl_gpt.sweep.run, "run_prompts", one_fails)
    out = tmp_path / "sweep"
    args = ["sweep", "cartpole", f"out={experiment}", "--out", str(out), "inits=2", "prompts=3", "samples=1"]
    assert main([*args, "episodes=2", "sweep.recursive=3", "sweep.rerank=1", *QUIET]) == 0
    recursive = json.loads((out / "report.json").read_text())["recursive"]
    assert recursive["failed_fraction"] == [0.0, 0.5, 0.5, 0.5]
    assert calls == [2, 1, 1]  # only the live network is updated again
    prompts = json.loads((out / "report.json").read_text())["prompts"]
    assert all(math.isfinite(v) and v >= min(prompts) / 2 for v in recursive["mean_return"])


def test_sweep_writes_a_complete_report_and_plot(experiment, tmp_path, capsys, monkeypatch):
    import rl_gpt.sweep.audit

    monkeypatch.setattr(rl_gpt.sweep.audit, "FIDELITY_OTHER_INITS", 2)  # real training's reference: 2 of 3 inits
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                "cartpole",
                f"out={experiment}",
                "--out",
                str(out),
                "inits=3",
                "prompts=4",
                "samples=2",
                "episodes=2",
                "sweep.recursive=2",
                "task.reward_threshold=5",  # below any CartPole return: every network counts as solved
                *QUIET,
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["baselines"]["identity"]["one_step"]["solved_fraction"] == 1.0  # the override, not the data's 475
    for key in (
        "task",
        "prompts",
        "achieved",
        "prompt_alignment_r2",
        "prompt_alignment_r2_ci95",
        "one_step",
        "recursive",
        "novelty",
        "init_fidelity",
        "baselines",
        "training_equivalent",
        "timings",
    ):
        assert key in report, key
    assert np.array(report["achieved"]).shape == (3, 4, 2)
    fidelity = report["init_fidelity"]
    assert (fidelity["real_training_runs"], fidelity["real_training_other_inits"]) == (1, 2)
    assert 0 < fidelity["real_training"] < 2 and 0 < fidelity["generator"] < 2
    first = report["config"]["init_seed"]  # unseen inits: the seeds `generate --seed 0..2` starts from too
    assert report["init_ids"] == {"seeds": [first, first + 1, first + 2]}
    assert set(report["baselines"]) == {"retrieval", "noise", "identity"}
    assert set(report["one_step"]) == {"prompt", "mean_return", "solved_fraction", "failed_fraction"}
    assert report["baselines"]["retrieval"]["prompt_alignment_r2_ci95"] == [None, None]  # one network per prompt
    assert len(report["recursive"]["mean_return"]) == 3
    assert report["recursive"]["failed_fraction"] == [0.0, 0.0, 0.0]  # the inits, then two generated steps
    assert report["recursive"]["training_curve"]["step_unit"] == "environment steps"
    assert report["training_equivalent"]["step_unit"] == "environment steps"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0  # a sweep folder: its table
    table = capsys.readouterr().out
    assert "generator" in table
    assert main(["info", str(out / "report.json")]) == 0  # or the report itself
    assert capsys.readouterr().out == table
    folder = tmp_path / "experiment"  # an experiment folder lists its sweeps
    folder.mkdir()
    (folder / "model").symlink_to(experiment / "model")
    shutil.copytree(out, folder / "sweep")
    assert main(["info", str(folder)]) == 0
    listed = f"sweep {folder / 'sweep' / 'report.json'}: R2 {report['prompt_alignment_r2']:.3f}"
    said = capsys.readouterr().out
    assert listed in said and "mean of 1, rerank 4, not calibrated, prompts 0 to 500" in said  # how it was measured
    assert f"the model at step {report['model_step']}" in said and "saved again" not in said
    copied = json.loads((folder / "sweep" / "report.json").read_text())
    (folder / "sweep" / "report.json").write_text(json.dumps(copied | {"model_save_id": "0" * 32}))
    assert main(["info", str(folder)]) == 0  # a report of an earlier save of the model (trained on since)
    assert "model has been saved again since (now at step 30): these numbers are not its" in capsys.readouterr().out
    behaviour = report["behavioural_novelty"]
    # "heldout": held-out checkpoints of the generated networks' returns, the behaviour column's reference
    assert set(behaviour) == {"generator", "retrieval", "noise", "identity", "heldout"}
    assert behaviour["heldout"]["policies"] == behaviour["generator"]["policies"] == 3
    matched = report["novelty"]["matched_heldout_rows"]
    assert len(matched) == 3
    assert set(report["novelty"]["final_checkpoint_reference"]) == {"generator", "retrieval", "noise"}
    for name, block in behaviour.items():
        assert set(block) == {"fraction", "compared", "tolerance", "states", "policies", "per_policy"}, name
        assert block["compared"] == "actions" and block["tolerance"] is None  # CartPole: discrete actions
        assert block["states"] == 2048 and len(block["per_policy"]) == block["policies"]
        assert 0.0 <= block["fraction"] <= 1.0
    assert behaviour["identity"]["policies"] == 3 and behaviour["retrieval"]["policies"] == 1
    assert behaviour["retrieval"]["fraction"] == 0.0  # a training checkpoint's nearest neighbour is itself
    table = format_table(report)
    assert "behaviour" in table.splitlines()[1] and "2048 own-rollout states" in table
    assert "solved" in table.splitlines()[1]  # CartPole has a reward threshold
    assert report["failed_fraction"] == 0.0 and "failed" not in table
    report["failed_fraction"] = 0.125  # a sweep where some networks gave no finite return says so
    assert "failed (no finite metric; scored at the prompt range's end farther from its prompt): generator 12.5%" in (
        format_table(report)
    )
    assert "better half" in table.splitlines()[1] and report["better_half_prompts"] == 2  # of 4 prompts 0..500
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_calibrate_then_sweep_and_generate_condition_on_its_map(experiment, tmp_path):
    from rl_gpt.train.calibration import load_calibration

    model = tmp_path / "model"  # a copy: calibration.json must not reach the other tests' model
    shutil.copytree(experiment / "model", model)
    common = ["cartpole", f"out={experiment}", "--model", str(model)]
    small = ["samples=1", "episodes=2", *QUIET]
    assert main(["calibrate", *common, "inits=2", "prompts=3", *small]) == 0  # calibrate's own inits and prompts
    assert (model / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the map, to look at
    cal = load_calibration(model)
    assert cal is not None and len(cal.prompts) == 3 and cal.meta["samples"] == 1
    normalizer = read_model_info(model)["normalizer"]  # measured only where the sweep conditions: the training range
    assert cal.prompts[0] == pytest.approx(normalizer["metric_low"]) and cal.prompts[-1] == normalizer["metric_high"]
    assert set(cal.meta["runs"]) <= set(read_model_info(model)["meta"]["train_runs"])  # never held-out runs

    out = tmp_path / "sweep"
    assert main(["sweep", *common, "--out", str(out), "inits=2", "prompts=3", "sweep.recursive=1", *small]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["applied"] and report["calibration"]["sampler"] == cal.sampler
    expected = cal.conditioning(torch.tensor(report["prompts"]))
    torch.testing.assert_close(torch.tensor(report["calibration"]["conditioned_on"]), expected)
    # from the training runs' own inits, the ones the calibration was fitted on: in-sample, and said so
    with pytest.warns(UserWarning, match="its R² is in-sample"):
        args = ["--out", str(tmp_path / "own"), "inits=2", "prompts=3", "sweep.init_source=train", *small]
        assert main(["sweep", *common, *args]) == 0

    # measured with another guidance scale: not applied, and the user is told how to refit
    with pytest.warns(UserWarning, match="run `rl-gpt calibrate`"):
        assert main(["sweep", *common, "--out", str(out), "inits=2", "prompts=3", "guidance=1.5", *small]) == 0
    report = json.loads((out / "report.json").read_text())
    assert not report["calibration"]["applied"]
    # prompts as given, except where they lie outside the training data's range: there its nearest end
    low, high = report["calibration"]["clamp_range"]
    assert report["prompts"][0] < low < high < report["prompts"][-1]  # the preset sweeps 0..500; the data less
    assert report["calibration"]["conditioned_on"] == [min(max(p, low), high) for p in report["prompts"]]

    # measured for other weights (the model was trained again since): not applied either
    stale = load_calibration(model)
    stale.model_sha256 = "0" * 64
    stale.save(model)
    with pytest.warns(UserWarning, match="not measured for these weights"):
        assert main(["sweep", *common, "--out", str(out), "inits=2", "prompts=3", *small]) == 0
    assert not json.loads((out / "report.json").read_text())["calibration"]["applied"]
    cal.save(model)

    args = ["generate", "--model", str(model), "--target-return", "300", "--episodes", "2"]
    args += ["--out", str(tmp_path / "g")]
    assert main(args) == 0
    rec = json.loads((tmp_path / "g" / "generated.json").read_text())
    assert rec["calibrated"]
    assert rec["conditioned_on"] == pytest.approx(float(cal.conditioning(torch.tensor([300.0]))[0]))
    target = (low + high) / 2  # inside the training range: conditioned on as given
    assert main([*args[:4], f"{target}", *args[5:], "--no-calibration"]) == 0
    rec = json.loads((tmp_path / "g" / "generated.json").read_text())
    assert not rec["calibrated"] and rec["conditioned_on"] == target

    # without a config, calibrate (like sweep) takes the settings saved with --model, not the embedded default's
    saved = yaml.safe_load((model / "config.yaml").read_text())
    saved["sweep"]["guidance"] = 1.5
    (model / "config.yaml").write_text(yaml.safe_dump(saved))
    grid = ["sweep.calibration_inits=2", "sweep.calibration_prompts=3"]
    assert main(["calibrate", "--model", str(model), *grid, *small]) == 0
    assert load_calibration(model).sampler["guidance"] == 1.5


def test_a_flat_calibration_is_said_to_change_nothing(experiment, tmp_path, monkeypatch):
    import rl_gpt.sweep.calibrate as calibrate

    real = calibrate.evaluate_flat

    def every_prompt_alike(*args, **kwargs):  # a generator that ignores its prompt
        res = real(*args, **kwargs)
        return type(res)(torch.full_like(res.mean, 42.0), res.std, res.returns, res.lengths)

    monkeypatch.setattr(calibrate, "evaluate_flat", every_prompt_alike)
    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    args = ["calibrate", "cartpole", f"out={experiment}", "--model", str(model), "sweep.calibration_inits=2"]
    with pytest.warns(UserWarning, match=r"\(mean 42\), so this calibration changes no prompt"):
        assert main([*args, "sweep.calibration_prompts=3", "samples=1", "episodes=2", *QUIET]) == 0

    # logged as W&B users compare calibrations: beside the model's training run, with what it measured
    pytest.importorskip("wandb")
    opened, logged = [], []
    recorder = types.SimpleNamespace(log=logged.append, finish=lambda: None)
    monkeypatch.setattr("rl_gpt.wandb_run.start_run", lambda *a, **k: opened.append((a, k)) or recorder)
    with pytest.warns(UserWarning, match="changes no prompt"):
        assert main([*args, "sweep.calibration_prompts=3", "samples=1", "episodes=2", "-q"]) == 0
    (_, stage, directory, config), kwargs = opened[0]
    assert stage == "calibrate" and Path(directory) == model and kwargs["experiment"] == tmp_path.name
    assert config["sweep"]["guidance"] == 2.0 and config["sweep"]["inits"] == 2 and config["model"]["step"] > 0
    assert config["task"]["name"] == "cartpole" and "wandb" not in config
    summary = logged[0]
    assert summary["calibration/applied"] is False and summary["calibration/failed_fraction"] == 0.0
    assert "calibration" in summary  # its plot


def test_train_calibrate_measures_the_calibration_after_training(experiment, tmp_path):
    out = tmp_path / "run"
    args = ["train", "cartpole", f"out={out}", f"dataset={experiment / 'dataset'}", "steps=4", *TINY_MODEL]
    args += ["train.calibrate=true", "sweep.calibration_inits=2", "sweep.calibration_prompts=3", "sweep.episodes=2"]
    pytest.importorskip("wandb")
    assert main([*args, "wandb.mode=offline", "-q"]) == 0
    cal = json.loads((out / "model" / "calibration.json").read_text())
    assert len(cal["prompts"]) == 3 and cal["meta"]["episodes"] == 2
    # two offline W&B runs beside the model, one per stage
    assert {p.name for p in (out / "model" / "wandb").glob("*.run_id")} == {
        "train-cartpole.run_id",
        "calibrate-cartpole.run_id",
    }


def test_start_metric_reproduces_the_datasets_own_labels(experiment):
    # The generator's input m must be measured as the labels it trained on were (episodes, seed).
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate.dataset_metric import start_metric

    ds = CheckpointDataset(experiment / "dataset")
    rows = torch.tensor([s.start for s in ds.run_slices().values()] + [s.stop - 1 for s in ds.run_slices().values()])
    measured = start_metric(ds, ds.data["params"][rows].float(), list(ds.run_slices()))
    torch.testing.assert_close(measured.float(), ds.data["metric"][rows].float())


def test_a_network_with_nan_weights_measures_nan_not_a_return(experiment):
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate.dataset_metric import evaluate_flat

    ds = CheckpointDataset(experiment / "dataset")
    params = ds.data["params"][:2].float().clone()
    params[1, 0] = float("nan")  # a generated network that failed
    res = evaluate_flat(ds, params, 2, 0, list(ds.run_slices()))
    assert torch.isfinite(res.mean[0]) and res.mean[1].isnan() and res.returns[1].isnan().all()


def test_sweep_conditions_on_the_label_protocols_init_metric(experiment, tmp_path, monkeypatch):
    import rl_gpt.sweep.run as sweep_run
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate.dataset_metric import start_metric

    seen = []
    real = sweep_run.run_prompts

    def spy(gen, model, theta, metric, *args, **kwargs):
        seen.append((theta.clone(), metric.clone()))
        return real(gen, model, theta, metric, *args, **kwargs)

    monkeypatch.setattr(sweep_run, "run_prompts", spy)
    out = tmp_path / "sweep"
    args = ["sweep", "cartpole", f"out={experiment}", "--out", str(out), "inits=3", "prompts=3", "samples=1"]
    assert main([*args, "episodes=3", "sweep.recursive=1", *QUIET]) == 0
    ds = CheckpointDataset(experiment / "dataset")
    inits, metric = seen[0]
    expected = start_metric(ds, inits, read_model_info(experiment / "model")["meta"]["train_runs"])
    torch.testing.assert_close(metric, expected.float())
    assert ds.spec["evaluation"]["episodes"] == 2  # the labels' count, not the sweep's 3
    assert "pure-torch port of CartPole-v1" in ds.spec["evaluation"]["definition"]  # readable without rl_gpt
    report = json.loads((out / "report.json").read_text())
    assert report["init_metric_as_labelled"] == pytest.approx(expected.tolist())


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


def test_model_for_another_task_is_refused(experiment):
    info = read_model_info(experiment / "model")
    other = json.loads(json.dumps(info["spec"]))
    other["task"]["name"], other["env_id"] = "acrobot", "Acrobot-v1"
    with pytest.raises(ModelFileError, match="trained for cartpole"):
        check_compatible(info, other)
    other = json.loads(json.dumps(info["spec"]))
    other["layout"]["numel"] = 999
    with pytest.raises(ModelFileError, match="layout"):
        check_compatible(info, other)


def test_a_config_for_another_task_is_refused_but_a_supervised_env_id_is_not_compared(experiment):
    from rl_gpt.train.modelfile import check_config_task

    info = read_model_info(experiment / "model")
    check_config_task(info, "cartpole", "CartPole-v1")
    with pytest.raises(ModelFileError, match="trained for cartpole .* config is for digits"):
        check_config_task(info, "digits", "digits", "supervised")
    supervised = {"spec": {"task": {"name": "digits"}, "env_id": "digits"}}  # env_id: the data set's name
    check_config_task(supervised, "digits", "CartPole-v1", "supervised")  # a config that left task.env_id out


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


def test_a_sweep_of_a_named_model_lands_beside_it(experiment, tmp_path, monkeypatch, capsys):
    model = tmp_path / "copy" / "model"
    shutil.copytree(experiment / "model", model)
    monkeypatch.chdir(tmp_path)  # the model's saved out= is relative to where it was trained, not to here
    args = ["sweep", "--model", str(model), "inits=1", "prompts=2", "samples=1", "episodes=2", "sweep.recursive=1"]
    assert main([*args, *QUIET]) == 0
    assert (tmp_path / "copy" / "sweep" / "report.json").is_file()
    capsys.readouterr()
    assert main([*args, "wandb.mode=disabled"]) == 0  # again into the same folder: it says it replaces the report
    assert "holds an earlier sweep, which this one replaces when it ends" in capsys.readouterr().out
    # a copy of the experiment checks its own model; the original, trained on since, is flagged
    shutil.copytree(tmp_path / "copy", tmp_path / "moved")
    info = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps(info | {"rl_gpt.save_id": "f" * 32}))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "copy" / "sweep")]) == 0
    assert f"{model.resolve()} has been saved again since" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "moved" / "sweep")]) == 0
    assert "saved again" not in capsys.readouterr().out


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


def test_generate_params_samples_in_memory_what_generate_writes(experiment, tmp_path):
    from rl_gpt.generate import generate_params

    model = experiment / "model"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in model.rglob("*"))
    result = generate_params(model, [100, 400], num=2, seed=3, episodes=2)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in model.rglob("*")) == before  # nothing written
    assert result.params.shape == (2, 2, result.layout.numel) and result.targets == [100.0, 400.0]
    assert result.guidance == 2.0 and result.average == 1  # the model's own sweep settings
    args = ["generate", "--model", str(model), "--target-return", "100", "400", "--num", "2", "--episodes", "2"]
    assert main([*args, "--seed", "3", "--out", str(tmp_path / "g")]) == 0
    written = read_sb3_file(tmp_path / "g" / "target_400" / "policy_001.zip").state
    for name, tensor in result.layout.unflatten(result.params[1, 1]).items():
        torch.testing.assert_close(written[name], tensor)
    record = json.loads((tmp_path / "g" / "target_400" / "generated.json").read_text())
    assert record["conditioned_on"] == pytest.approx(float(result.conditioned_on[1]))
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


def test_training_without_a_dataset_leaves_no_model_folder(tmp_path, capsys):
    assert main(["train", "cartpole", f"out={tmp_path / 'x'}", *QUIET]) == 2
    assert not (tmp_path / "x").exists()


def test_a_dataset_of_single_checkpoint_runs_is_refused(experiment, tmp_path, capsys, monkeypatch):
    out = tmp_path / "one"  # collect always stores a run's end now; datasets made before (or elsewhere) may not
    monkeypatch.setattr("rl_gpt.collect.sb3_run._Snapshots._on_training_end", lambda self: None)
    collect = ["collect", "cartpole", f"out={out}", "runs=2", "timesteps=64", "collect.checkpoint_every=4096"]
    collect += ["workers=1"]  # in this process, where the patch holds
    assert main([*collect, "task.n_envs=2", "collect.eval_episodes=1", *QUIET]) == 0
    assert main(["train", "cartpole", f"out={out}", "steps=2", *TINY_MODEL, *QUIET]) == 2
    assert "single valid checkpoint" in capsys.readouterr().err
    assert not (out / "model").exists()


def test_a_sweep_and_its_calibration_follow_the_metric_range_they_are_given(experiment, tmp_path):
    from rl_gpt.train.calibration import load_calibration

    model = tmp_path / "model"  # a copy: calibration.json must not reach the other tests' model
    shutil.copytree(experiment / "model", model)
    out = tmp_path / "sweep"
    args = ["cartpole", f"out={experiment}", "--model", str(model), "samples=1", "episodes=2", *QUIET]
    sweep = ["sweep", *args, "--out", str(out), "inits=1", "prompts=3", "sweep.recursive=1"]
    assert main([*sweep, "task.metric_range=[20,60]"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == [20.0, 40.0, 60.0] == report["calibration"]["conditioned_on"]

    # as given: the preset's 0 and 500 lie outside the training data's range, and stay there
    assert main([*sweep, "sweep.clamp_prompts=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["clamp_range"] is None
    assert report["prompts"] == report["calibration"]["conditioned_on"] == [0.0, 250.0, 500.0]

    # a calibration measured over a narrower range is not applied to a sweep beyond it
    # 2 inits x 3 prompts x 1 sample: too few to test for a rise, so this tiny model's fit stays a curve
    grid = ["sweep.calibration_inits=2", "sweep.calibration_prompts=3"]
    assert main(["calibrate", *args, "task.metric_range=[20,60]", *grid]) == 0
    assert load_calibration(model).prompts[0] == 20.0 and load_calibration(model).prompts[-1] == 60.0
    with pytest.warns(UserWarning, match=r"measured over prompts \[20, 60\], which do not cover"):
        assert main(sweep) == 0
    assert not json.loads((out / "report.json").read_text())["calibration"]["applied"]


def test_a_sweep_can_start_from_the_models_own_runs(experiment, tmp_path):
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.sweep.compare import ReportError, compare_reports

    info = read_model_info(experiment / "model")
    ds = CheckpointDataset(experiment / "dataset")
    slices = ds.run_slices()
    args = ["sweep", "cartpole", f"out={experiment}", "prompts=3", "samples=1", "episodes=2", "sweep.recursive=1"]
    reports = {}
    for source, runs in (("train", info["meta"]["train_runs"]), ("heldout", info["meta"]["test_runs"])):
        out = tmp_path / source
        assert main([*args, "--out", str(out), "inits=8", f"sweep.init_source={source}", *QUIET]) == 0
        reports[source] = json.loads((out / "report.json").read_text())
        assert reports[source]["init_source"] == source and reports[source]["inits"] == min(8, len(runs))
        assert reports[source]["init_ids"] == {"runs": runs[:8]}  # which runs' step-0 networks
        # the generator's input is each run's step-0 label, measured again as the dataset measured it
        labels = [float(ds.data["metric"][slices[r].start]) for r in runs[:8]]
        assert reports[source]["init_metric_as_labelled"] == pytest.approx(labels)
    with pytest.raises(ReportError, match="sweep.init_source"):
        compare_reports([tmp_path / "train", tmp_path / "heldout"])


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


def test_ddp_training_with_two_processes(experiment, tmp_path):
    out = tmp_path / "ddp"
    shutil.copytree(experiment / "dataset", out / "dataset")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "rl_gpt.cli",
        "train",
        "cartpole",
        f"out={out}",
        "steps=6",
        *TINY_MODEL,
        *QUIET,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_model_info(out / "model")["meta"]["step"] == 6
    more = [c if c != "steps=6" else "steps=8" for c in cmd if c != "-q"]
    result = subprocess.run(more, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.count("model written to") == 1, result.stdout  # rank 0 alone
    shutil.copytree(out / "model", tmp_path / "ddp2" / "model")
    # Resumed in one process: each step now takes half the pairs, which is said with the remedy
    with pytest.warns(UserWarning, match=r"goes on with 1: .* 32 pairs instead of 64; pass train.batch=64 to keep"):
        assert main(["train", "cartpole", f"out={out}", "steps=10", *TINY_MODEL, *QUIET]) == 0
    # which is accepted: the pairs per step stay the same, so the run goes on as it was
    again = ["train", "cartpole", f"out={tmp_path / 'ddp2'}", f"dataset={out / 'dataset'}", "steps=10", *TINY_MODEL]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*again, *QUIET, "batch=64"]) == 0
    assert not [w for w in caught if "process(es)" in str(w.message)]
    assert read_model_info(tmp_path / "ddp2" / "model")["meta"]["step"] == 10


def test_training_with_the_function_loss(experiment, tmp_path):
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.train.function_loss import function_probe

    ds = CheckpointDataset(experiment / "dataset")
    probe = function_probe(ds, [0, 1], count=64, seed=0)
    assert probe.inputs.shape == (64, 4) and probe.inputs[:, 0].abs().max() < 3.0  # CartPole states
    rows = ds.data["params"][:3].float()
    assert probe.loss(rows, rows).abs().max() == 0 and (probe.loss(rows, rows.flip(0))[[0, 2]] > 0).all()
    out = tmp_path / "fn"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = ["train", "cartpole", f"out={out}", "steps=4", "train.function_loss=1", "train.function_probes=32"]
    assert main([*args, *TINY_MODEL, *QUIET]) == 0
    assert read_model_info(out / "model")["meta"]["step"] == 4


def _nan_on_rank_one(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
        loss = model(torch.ones(2, 3)).sum() * (float("nan") if rank == 1 else 1.0)
        loss.backward()
        results[rank] = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_ddp_rank_reaches_every_rank():
    """The trainer checks the gradient norm after backward so all ranks stop together on one rank's NaN."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_nan_on_rank_one, args=(port, results), nprocs=2, join=True)
    assert dict(results) == {0: False, 1: False}


def test_malformed_model_overrides_are_one_line(experiment, tmp_path, capsys):
    out = tmp_path / "bad"
    shutil.copytree(experiment / "dataset", out / "dataset")
    assert main(["train", "cartpole", f"out={out}", "steps=2", "train.model_overrides={width:32}", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space after each colon" in err, err


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


def test_warnings_print_as_one_line_naming_the_command():
    import warnings

    from rl_gpt.cli import _one_line_warnings

    previous = _one_line_warnings("generate")
    try:
        text = warnings.formatwarning(UserWarning("target 5000 lies outside"), UserWarning, "cli.py", 74, "x = 1")
    finally:
        warnings.formatwarning = previous
    assert text == "rl-gpt generate: warning: target 5000 lies outside\n"
    import torch  # a library's warning says which library it is (torchrl 0.6 warns on every command)

    library = str(Path(torch.__file__).parent / "nn" / "modules" / "module.py")
    previous = _one_line_warnings("train")
    try:
        text = warnings.formatwarning(UserWarning("Failed to import\n  details"), UserWarning, library, 7, None)
    finally:
        warnings.formatwarning = previous
    assert text == "rl-gpt train: warning from torch: Failed to import\n"


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


def test_a_model_folder_without_its_config_yaml_sweeps_with_the_config_in_model_json(experiment, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    (model / "config.yaml").unlink()
    info = json.loads((model / "model.json").read_text())
    info["meta"]["config"]["sweep"]["prompts"] = 3  # marks where the sweep took its settings from
    (model / "model.json").write_text(json.dumps(info))
    args = ["sweep", "--model", str(model), "--out", str(tmp_path / "s"), "inits=1", "samples=1", "episodes=1"]
    assert main([*args, *QUIET]) == 0
    assert len(json.loads((tmp_path / "s" / "report.json").read_text())["prompts"]) == 3


def test_a_model_saved_before_ranking_samples_without_it(experiment, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    for name in ("ranker.safetensors", "ranker.json"):  # fitted there by earlier tests' sweeps
        (model / name).unlink(missing_ok=True)
    saved = yaml.safe_load((model / "config.yaml").read_text())
    assert saved["sweep"]["rerank"] == 4  # today's default, saved with the model
    del saved["sweep"]["rerank"]  # as config.yaml was written before session 19
    (model / "config.yaml").write_text(yaml.safe_dump(saved))
    args = ["sweep", "--model", str(model), "--out", str(tmp_path / "s"), "inits=1", "prompts=2", "samples=1"]
    assert main([*args, "episodes=1", "sweep.recursive=0", *QUIET]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["config"]["rerank"] == 1 and "rerank" not in report and not (model / "ranker.json").exists()


def test_rerank_ranks_candidates_in_sweep_calibrate_and_generate(experiment, tmp_path):
    from rl_gpt.train.calibration import load_calibration

    model = tmp_path / "model"  # a copy: the ranker and calibration must not reach the other tests' model
    shutil.copytree(experiment / "model", model)
    common = ["cartpole", f"out={experiment}", "--model", str(model)]
    small = ["samples=1", "episodes=2", "rerank=3", *QUIET]
    out = tmp_path / "sweep"
    assert main(["sweep", *common, "--out", str(out), "inits=2", "prompts=3", "sweep.recursive=1", *small]) == 0
    ranker_file = model / "ranker.safetensors"
    assert ranker_file.is_file()  # fitted on first use and stored with the model
    report = json.loads((out / "report.json").read_text())
    rerank = report["rerank"]
    assert rerank["candidates"] == 3 and rerank["ranker"]["rows"] > 0 and np.isfinite(rerank["rmse_on_chosen"])
    labels = TensorDict.load_memmap(experiment / "dataset" / "data", allow_pickle=False)["metric"].numpy()
    assert rerank["ranker"]["rmse_train"] < 0.5 * np.nanstd(labels)  # it learned the labels, not their mean
    unranked = rerank["without_rerank"]  # the same draws, unranked, scored alike
    assert np.array(unranked["achieved"]).shape == np.array(report["achieved"]).shape
    assert np.isfinite(unranked["prompt_alignment_r2"])

    grid = ["sweep.calibration_inits=2", "sweep.calibration_prompts=3"]
    assert main(["calibrate", *common, *grid, *small]) == 0
    assert load_calibration(model).sampler["rerank"] == 3

    fitted = ranker_file.stat().st_mtime_ns
    args = ["generate", "--model", str(model), "--target-return", "300", "--episodes", "2", "--num", "2"]
    assert main([*args, "--rerank", "3", "--out", str(tmp_path / "g")]) == 0
    assert ranker_file.stat().st_mtime_ns == fitted  # the stored ranker is reused
    rec = json.loads((tmp_path / "g" / "generated.json").read_text())
    assert rec["rerank"] == 3 and rec["calibrated"]  # calibrated with the same reranking
    assert all(np.isfinite(p["predicted_return"]) for p in rec["policies"])
    with pytest.warns(UserWarning, match="rerank 3, not .* rerank 1"):  # measured with ranking: not applied without
        assert main([*args, "--rerank", "1", "--out", str(tmp_path / "g1")]) == 0
    rec = json.loads((tmp_path / "g1" / "generated.json").read_text())
    assert not rec["calibrated"] and "predicted_return" not in rec["policies"][0]

    # several targets, several policies each: every target's folder gets its own ranked policies
    assert main([*args[:4], "100", "400", *args[5:], "--rerank", "3", "--out", str(tmp_path / "g2")]) == 0
    for folder in ("target_100", "target_400"):
        policies = json.loads((tmp_path / "g2" / folder / "generated.json").read_text())["policies"]
        assert len(policies) == 2 and all(np.isfinite(p["predicted_return"]) for p in policies)

    for key, stale in (("train_runs", [0]), ("data_sha256", "0" * 64)):  # other runs or other data: fitted again
        meta = json.loads((model / "ranker.json").read_text())
        meta["fit"][key] = stale
        (model / "ranker.json").write_text(json.dumps(meta))
        assert main(["sweep", *common, "--out", str(out), "inits=2", "prompts=3", "sweep.recursive=1", *small]) == 0
        assert json.loads((model / "ranker.json").read_text())["fit"][key] != stale


def test_ranked_sampling_draws_what_plain_sampling_draws(experiment):
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.train.modelfile import load_generator
    from rl_gpt.train.probe import sample_candidates
    from rl_gpt.train.ranker import fit_ranker

    gen, info = load_generator(experiment / "model")
    theta, metric, prompts = torch.zeros(2, gen.layout.numel), torch.full((2,), 20.0), torch.tensor([50.0, 300.0])
    candidates = sample_candidates(gen, None, theta, metric, prompts, 3, 4, 2.0, seed=5, candidates=1)
    rows = 2 * 2 * 3  # init x prompt x sample, in that order
    plain = gen.sample(
        theta.repeat_interleave(6, 0),
        metric.repeat_interleave(6),
        prompts.repeat_interleave(3).repeat(2),
        steps=4,
        guidance=2.0,
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(candidates.reshape(rows, -1), plain)
    # a model that holds no run out still gets a ranker, with no held-out error to report
    ranker = fit_ranker(CheckpointDataset(experiment / "dataset"), info["meta"]["train_runs"], [], steps=5)
    assert ranker.fit_info["rmse_heldout_runs"] is None and ranker.fit_info["rmse_train"] > 0


def test_the_novelty_audit_survives_a_method_whose_every_network_failed(experiment):
    """All generated networks without a finite metric: the audit says NaN for them and measures the rest
    (its first version raised in canonical_scale on the empty batch, before report.json; session 35)."""
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.sweep.audit import novelty_audit

    ds = CheckpointDataset(experiment / "dataset")
    info = read_model_info(experiment / "model")["meta"]
    train_runs, test_runs = info["train_runs"], info["test_runs"]
    slices = ds.run_slices()
    pool = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in train_runs])
    inits = ds.data["params"][torch.tensor([slices[r].start for r in test_runs])].float()
    k = len(inits)
    methods = {
        "generator": (inits, torch.full((k,), math.nan)),  # every one failed
        "retrieval": (ds.data["params"][pool[:1]].float().expand(k, -1), ds.data["metric"][pool[:1]].expand(k)),
    }
    out = novelty_audit(ds, methods, inits, pool, train_runs, test_runs)
    assert math.isnan(out["novelty"]["generator"]) and out["novelty"]["retrieval"] == 0.0
    assert out["init_fidelity"]["generator"] is None and "generator" not in out["behavioural_novelty"]
