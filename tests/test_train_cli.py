"""`rl-gpt train` on the tiny CartPole ``experiment`` (conftest.py), through the real CLI: what it trains on,
what it refuses before training, what it logs, calibration after training, and two-process (DDP) training.
Resuming, interrupting and restarting a training are in test_train_resume.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from cli_helpers import QUIET, TINY_MODEL
from tensordict import TensorDict

from rl_gpt.cli import main
from rl_gpt.train.info import describe_model
from rl_gpt.train.modelfile import read_model_info


def test_a_run_shorter_than_its_warmup_says_so(experiment, tmp_path):
    args = ["train", "cartpole", f"out={tmp_path}", f"dataset={experiment / 'dataset'}", "steps=3", *TINY_MODEL, *QUIET]
    with pytest.warns(UserWarning, match="train.steps=3 ends within the 200-step warm-up"):
        assert main([*args, "train.final_probe=false"]) == 0


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


def test_a_dataset_whose_metric_never_changes_is_said_before_training(experiment, tmp_path):
    out = tmp_path / "flat"
    shutil.copytree(experiment / "dataset", out / "dataset")
    data = TensorDict.load_memmap(out / "dataset" / "data", allow_pickle=False)
    data["metric"].fill_(10.0)  # no run learns (MountainCar's -200 under its own preset's range)
    args = ["train", "cartpole", f"out={out}", "steps=2", "train.final_probe=false", *TINY_MODEL, *QUIET]
    with pytest.warns(UserWarning, match="every training checkpoint has return 10: with no spread"):
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
    monkeypatch.setattr(rl_gpt.train.loop, "_wandb_init", lambda cfg, processes, resume: recorder)
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
    monkeypatch.setattr(rl_gpt.train.loop, "_wandb_init", lambda cfg, processes, resume: recorder)
    out = tmp_path / "rate"
    shutil.copytree(experiment / "dataset", out / "dataset")
    args = [*TINY_MODEL, "train.probe_every_s=1e-9", "train.final_probe=false", "train.log_every=1", "steps=3"]
    assert main(["train", "cartpole", f"out={out}", *args, *QUIET]) == 0
    rates = [d["samples_per_s"] for d in logged if "samples_per_s" in d]
    # 32 pairs a step over a few clock readings: hundreds a second; counting the probes would give < 0.1
    assert len(rates) == 3 and min(rates) > 32, rates


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


# Rank 0 measures alignment.json alone after training; it waits (up to a minute) for rank 1 to have returned.
_RANK_ZERO_WAITS = """
import os, sys, time
from pathlib import Path
import rl_gpt.train.loop as loop
marker, args = Path(sys.argv[1]), sys.argv[2:]
measure = loop._final_alignment
def waits_for_rank_one(*a, **k):
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    marker.with_name("seen").write_text(str(marker.exists()))
    return measure(*a, **k)
loop._final_alignment = waits_for_rank_one
from rl_gpt.cli import main
code = main(args)
if os.environ["RANK"] == "1":
    marker.write_text("returned")
sys.exit(code)
"""


def test_the_other_ranks_do_not_wait_for_rank_zeros_work_after_training(experiment, tmp_path):
    """They waited at a barrier while rank 0 measured alignment.json and uploaded to W&B: past gloo's 30-minute
    timeout (MuJoCo on the CPU) their barrier failed, torchrun stopped rank 0, and every rerun did so again."""
    out = tmp_path / "ddp"
    shutil.copytree(experiment / "dataset", out / "dataset")
    script = tmp_path / "waits.py"
    script.write_text(_RANK_ZERO_WAITS)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "returned")]
    cmd += ["train", "cartpole", f"out={out}", "steps=2", *TINY_MODEL, *QUIET]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "seen").read_text() == "True"  # rank 1 had returned while rank 0 still had work to do
    assert json.loads((out / "model" / "alignment.json").read_text())["step"] == 2
    # `info` says how the step's batch was made: train.batch counts pairs per process
    assert "on 2 processes x train.batch=32 (64 pairs per step)" in describe_model(out / "model")


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
    meta = read_model_info(out / "model")["meta"]
    assert meta["step"] == 4
    # what trained it: another CPU's kernels give other weights in the last bits
    assert meta["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["machine"]["threads"] == torch.get_num_threads() and meta["machine"]["processes"] == 1


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


def _on_two_gloo_ranks(fn) -> dict:
    """``fn(rank, port, results)`` in two spawned processes; what each put in ``results``."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(fn, args=(port, results), nprocs=2, join=True)
    return dict(results)


def test_a_nan_on_one_ddp_rank_reaches_every_rank():
    """The trainer checks the gradient norm after backward so all ranks stop together on one rank's NaN."""
    assert _on_two_gloo_ranks(_nan_on_rank_one) == {0: False, 1: False}


def _loss_of_rank(rank, port, results):
    import torch.distributed as dist

    from rl_gpt.train.loop import mean_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:  # each rank's share of the batch has its own loss; the logged one is the whole batch's
        results[rank] = mean_over_ranks({"loss": torch.tensor(1.0 + 2 * rank), "mse_x0": torch.tensor(0.5)}, 2)
    finally:
        dist.destroy_process_group()


def test_the_logged_loss_under_ddp_is_the_mean_over_ranks():
    from rl_gpt.train.loop import mean_over_ranks

    assert _on_two_gloo_ranks(_loss_of_rank) == {0: {"loss": 2.0, "mse_x0": 0.5}, 1: {"loss": 2.0, "mse_x0": 0.5}}
    assert mean_over_ranks({"loss": torch.tensor(3.0)}, 1) == {"loss": 3.0}  # one process: as it is


def test_the_train_rooms_lazy_names_are_listed_and_imported():
    import rl_gpt.train as room

    assert set(room.__all__) <= set(dir(room))  # completion and help() see them before first use
    assert all(getattr(room, name).__name__ == name for name in room.__all__)


def test_malformed_model_overrides_are_one_line(experiment, tmp_path, capsys):
    out = tmp_path / "bad"
    shutil.copytree(experiment / "dataset", out / "dataset")
    assert main(["train", "cartpole", f"out={out}", "steps=2", "train.model_overrides={width:32}", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space after each colon" in err, err


def test_a_full_disk_while_training_is_the_last_line_said(experiment, tmp_path, monkeypatch, capsys):
    """The one-line error ends the output: the progress bar is closed before it, not drawn again after it."""

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "model" / "train_state.tmp"))

    monkeypatch.setattr("rl_gpt.train.loop.save_train_state", full)
    args = ["train", "cartpole", f"out={tmp_path}", f"dataset={experiment / 'dataset'}", "steps=4", *TINY_MODEL]
    assert main([*args, "train.ckpt_every=2", "wandb.mode=disabled"]) == 1
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("rl-gpt train: error: No space left on device") and "run the same command again" in last


def test_a_sweep_device_that_is_no_device_is_refused_by_train_not_saved_for_the_sweep(experiment, tmp_path, capsys):
    """Found with `rl-gpt train ... sweep.device=None` (Python's None; YAML's is null): train saved the text
    'None' in config.yaml, and only the later `sweep --model` refused it."""
    out = tmp_path / "none"
    shutil.copytree(experiment / "dataset", out / "dataset")
    assert main(["train", "cartpole", f"out={out}", "steps=2", "sweep.device=None", *TINY_MODEL, *QUIET]) == 2
    said = "rl-gpt train: error: sweep.device='None' is not a device; use cpu, cuda or cuda:N; null (not None)"
    assert said in capsys.readouterr().err
    assert not (out / "model").exists()
    # a device this machine lacks is still saved for a sweep elsewhere
    assert main(["train", "cartpole", f"out={out}", "steps=2", "sweep.device=cuda:3", *TINY_MODEL, *QUIET]) == 0
