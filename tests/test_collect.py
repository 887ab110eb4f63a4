"""Checkpoint collection through the real CLI: tiny runs, reloading rows into SB3, resume, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from tensordict import TensorDict

from rl_gpt.cli import main
from rl_gpt.collect.sb3_run import build_model
from rl_gpt.config import load_config, to_dict

TINY = ["wandb.mode=disabled", "collect.eval_episodes=2", "-q"]


def _collect(preset: str, out: Path, *extra: str) -> int:
    return main(["collect", preset, f"out={out}", *TINY, *extra])


def _load(out: Path) -> TensorDict:
    return TensorDict.load_memmap(out / "dataset" / "data", allow_pickle=False)


@pytest.mark.parametrize(
    ("preset", "extra"),
    [
        ("cartpole", ["runs=2", "timesteps=512", "collect.checkpoint_every=256", "task.n_envs=2"]),
        (
            "pendulum",
            ["runs=1", "timesteps=300", "collect.checkpoint_every=100", "task.hyperparams.learning_starts=100"],
        ),
        ("inverted_pendulum", ["runs=1", "timesteps=256", "collect.checkpoint_every=128"]),
    ],
)
def test_tiny_collection_writes_a_complete_dataset(tmp_path, preset, extra):
    assert _collect(preset, tmp_path, "workers=1", *extra) == 0
    td = _load(tmp_path)
    spec = json.loads((tmp_path / "dataset" / "spec.json").read_text())
    runs = load_config(preset, extra, command="collect").collect.runs
    assert torch.unique(td["run"]).tolist() == list(range(runs))
    assert td["params"].shape[1] == spec["layout"]["numel"]
    assert (td["step"][td["run"] == 0][0] == 0).item()  # the random initialisation is stored
    timesteps = load_config(preset, extra, command="collect").collect.timesteps
    assert (td["step"][td["run"] == 0][-1] >= timesteps).item()  # and the trained policy, at the run's end
    assert spec["checkpoint_timing"] == "after_update"
    assert torch.isfinite(td["metric"]).all() and td["valid"].all()
    assert set(spec) >= {"task", "env_id", "algo", "policy_kwargs", "metric", "layout", "versions", "policy"}
    assert set(spec["fields"]) == set(td.keys())  # each column described, and each description a column
    # VecNormalize statistics travel with each checkpoint, for reference once folded into the weights. (This
    # branch had read spec["policy"]["normalize_obs"], which folding sets false: it never ran.)
    if spec["task"]["normalize"]:
        assert not spec["policy"]["normalize_obs"]  # collect.fold_normalisation (default on) folded them
        assert td["obs_mean"].shape == (len(td), spec["policy"]["obs_dim"])
    else:
        assert "obs_mean" not in set(td.keys())
    assert (tmp_path / "dataset" / "config.yaml").exists()


def test_a_checkpoint_evaluated_with_its_own_normalisation_reproduces_its_label(tmp_path):
    """Unfolded datasets: sweeps deploy a retrieved checkpoint with its own VecNormalize statistics."""
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate.dataset_metric import evaluate_flat

    extra = ["workers=1", "runs=1", "timesteps=256", "collect.checkpoint_every=128", "collect.fold_normalisation=false"]
    assert _collect("inverted_pendulum", tmp_path, *extra) == 0
    ds = CheckpointDataset(tmp_path / "dataset")
    rows = torch.arange(len(ds.data["metric"]))
    cfg = load_config("inverted_pendulum", ["collect.eval_episodes=2"], command="collect").collect
    own = evaluate_flat(ds, ds.data["params"][:].float(), 2, cfg.eval_seed, [0], stats_rows=rows).mean
    torch.testing.assert_close(own.float(), ds.data["metric"][:].float())
    assert not torch.equal(ds.data["obs_mean"][0], ds.data["obs_mean"][-1])  # step 0 has the initial statistics


def test_folded_checkpoints_read_raw_observations_and_reproduce_their_labels(tmp_path):
    """collect.fold_normalisation (the default): stored policies need no VecNormalize statistics."""
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.evaluate import PolicySpec, evaluate_params, fold_obs_normalisation
    from rl_gpt.evaluate.dataset_metric import evaluate_flat

    extra = ["workers=1", "runs=1", "timesteps=256", "collect.checkpoint_every=128"]
    assert _collect("inverted_pendulum", tmp_path, *extra) == 0
    ds = CheckpointDataset(tmp_path / "dataset")
    assert ds.spec["task"]["normalize"] and not ds.spec["policy"]["normalize_obs"]
    assert ds.spec["obs_normalisation"].startswith("folded into the first layer")
    assert "folded" in ds.spec["fields"]["params"] and "folded" in ds.spec["fields"]["obs_mean"]
    assert not torch.equal(ds.data["obs_mean"][0], ds.data["obs_mean"][-1])  # raw statistics kept for reference
    params, metric = ds.data["params"][:].float(), ds.data["metric"][:].float()
    seed = load_config("inverted_pendulum", extra, command="collect").collect.eval_seed
    spec = PolicySpec.from_dict(ds.spec["policy"])
    again = evaluate_params(params, ds.layout, spec, ds.spec["env_id"], episodes=2, deterministic=True, seed=seed)
    assert torch.equal(again.mean.float(), metric)
    # The sweep's path: no statistics at all, so a generated policy is judged like a stored one.
    assert torch.equal(evaluate_flat(ds, params, 2, seed, [0]).mean.float(), metric)
    # The same run collected unfolded: the same training, its weights folded by the same rule, and
    # its labels (measured with its own statistics, clipped) agree with the folded ones.
    assert _collect("inverted_pendulum", tmp_path / "raw", *extra, "collect.fold_normalisation=false") == 0
    raw = CheckpointDataset(tmp_path / "raw" / "dataset")
    mean, var = raw.data["obs_mean"][:].float(), raw.data["obs_var"][:].float()
    torch.testing.assert_close(fold_obs_normalisation(raw.data["params"][:].float(), raw.layout, mean, var), params)
    torch.testing.assert_close(raw.data["metric"][:].float(), metric, atol=2.0, rtol=0.05)


def _sb3_policy_from_spec(spec: dict, row: torch.Tensor) -> PPO:
    """Rebuild an SB3 PPO from spec.json alone (no rl_gpt), as a user of the open format would."""
    import gymnasium as gym
    from torch import nn

    kwargs = dict(spec["policy_kwargs"])
    kwargs["activation_fn"] = {"tanh": nn.Tanh, "relu": nn.ReLU}[kwargs.pop("activation_fn", "tanh")]
    model = PPO("MlpPolicy", gym.make(spec["env_id"]), policy_kwargs=kwargs, device="cpu")
    state = model.policy.state_dict()
    for p in spec["layout"]["params"]:
        n = int(np.prod(p["shape"]))
        state[p["name"]] = row[p["offset"] : p["offset"] + n].reshape(p["shape"])
    model.policy.load_state_dict(state)
    return model


def test_stored_rows_reload_into_sb3_with_identical_actions(tmp_path):
    extra = ["runs=1", "timesteps=1024", "collect.checkpoint_every=512", "task.n_envs=2", "seed=3"]
    assert _collect("cartpole", tmp_path, "workers=1", *extra) == 0
    td = _load(tmp_path)
    spec = json.loads((tmp_path / "dataset" / "spec.json").read_text())
    cfg = load_config("cartpole", extra, command="collect")
    # the same seed rebuilds the same run deterministically: compare the final policy's actions
    torch.set_num_threads(1)
    saved = build_model(cfg.task, seed=3)
    assert torch.equal(
        td["params"][0], torch.cat([saved.policy.state_dict()[p["name"]].flatten() for p in spec["layout"]["params"]])
    )
    saved.learn(total_timesteps=1024)
    reloaded = _sb3_policy_from_spec(spec, td["params"][-1].clone())
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        saved.predict(obs, deterministic=True)[0], reloaded.predict(obs, deterministic=True)[0]
    )


def test_killed_collection_resumes_without_duplicates(tmp_path):
    args = [
        "collect",
        "cartpole",
        f"out={tmp_path}",
        "runs=4",
        "timesteps=256",
        "collect.checkpoint_every=128",
        "task.n_envs=2",
        "workers=1",
        *TINY,
    ]
    cmd = [sys.executable, "-c", "import sys; from rl_gpt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    proc = subprocess.Popen(cmd, start_new_session=True)
    runs_dir = tmp_path / "dataset" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs_dir.glob("run_*/run.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no cleanup handlers run
    proc.wait()
    stored = sorted(p.name for p in runs_dir.glob("run_*"))
    assert 1 <= len(stored) < 4, stored
    assert main(args) == 0
    td = _load(tmp_path)
    pairs = list(zip(td["run"].tolist(), td["step"].tolist()))
    assert len(pairs) == len(set(pairs)), "duplicate checkpoints after resume"
    assert sorted(set(td["run"].tolist())) == [0, 1, 2, 3]
    assert main(args) == 0  # a finished collection is a no-op
    assert len(_load(tmp_path)) == len(td)


def test_extending_a_dataset_of_older_checkpoints_says_they_differ(tmp_path):
    """Datasets from before the copies were taken after each update hold policies one update older."""
    args = ["timesteps=256", "collect.checkpoint_every=128", "task.n_envs=2", "workers=1"]
    assert _collect("cartpole", tmp_path, "runs=1", *args) == 0
    spec_path = tmp_path / "dataset" / "spec.json"
    spec = json.loads(spec_path.read_text())
    del spec["checkpoint_timing"]  # as an older rl_gpt wrote it
    spec_path.write_text(json.dumps(spec))
    older = ".*holds runs stored by an older rl_gpt, which copied each policy before"
    with pytest.warns(UserWarning, match=older):
        assert _collect("cartpole", tmp_path, "runs=2", *args) == 0
    assert json.loads(spec_path.read_text())["checkpoint_timing"] == "mixed"  # the spec says so from now on
    with pytest.warns(UserWarning, match=older):  # and every extension says it again
        assert _collect("cartpole", tmp_path, "runs=3", *args) == 0
    assert json.loads(spec_path.read_text())["checkpoint_timing"] == "mixed"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=older)  # a finished collection adds nothing: nothing to say
        assert _collect("cartpole", tmp_path, "runs=3", *args) == 0
    assert json.loads(spec_path.read_text())["checkpoint_timing"] == "mixed"
    from rl_gpt.dataset.info import describe  # and `rl-gpt info` says so, where it had said nothing

    assert "checkpoints  mixed: older runs copied each policy before the update" in describe(tmp_path / "dataset")


def test_a_resume_collects_exactly_the_runs_that_are_missing(tmp_path):
    from rl_gpt.collect.executor import collect, dataset_spec
    from rl_gpt.collect.sb3_run import RunResult
    from rl_gpt.dataset import DatasetWriter

    cfg = load_config("cartpole", [f"out={tmp_path}", "runs=4", "workers=1", "wandb.mode=disabled"], command="collect")
    spec = dataset_spec(cfg)

    def rows(run: int) -> dict:
        return {
            "params": torch.full((2, spec["layout"]["numel"]), float(run)),
            "metric": torch.tensor([10.0, 20.0]),
            "step": torch.tensor([0, 256]),
            "valid": torch.ones(2, dtype=torch.bool),
        }

    writer = DatasetWriter(cfg.dataset_dir, spec)
    for run in (0, 2):  # parallel workers finished runs 0 and 2 before a kill -9 stopped run 1
        writer.add_run(run, rows(run), {"seed": run})
    ran = []

    def fake_run(cfg, run):
        ran.append(run)
        return RunResult(rows(run), {"seed": run})

    collect(cfg, run_fn=fake_run, progress=False)
    assert ran == [1, 3]
    td = _load(tmp_path)
    assert td["run"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and td["params"][:, 0].tolist() == td["run"].tolist()


def _spawned_workers(group: int) -> list[int]:
    """Processes of the process group ``group`` started by multiprocessing's spawn (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp == group and b"spawn_main" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
def test_workers_of_a_collection_killed_with_kill_9_exit_too(tmp_path):
    args = ["collect", "cartpole", f"out={tmp_path}", "runs=4", "timesteps=1000000", "workers=2", *TINY]
    cmd = [sys.executable, "-c", "import sys; from rl_gpt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_spawned_workers(proc.pid)) < 2:
            time.sleep(0.05)
        assert len(_spawned_workers(proc.pid)) == 2
        time.sleep(2)  # the workers are training their runs now
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone: no handler runs, the pool is not shut down
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and _spawned_workers(proc.pid):
            time.sleep(0.1)
        assert not _spawned_workers(proc.pid), "workers outlived their collection"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("when", ["workers_starting", "first_run_stored"])
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
def test_ctrl_c_stops_a_parallel_collection_in_one_message(tmp_path, when):
    """A terminal's Ctrl-C reaches the whole process group: workers still importing torch printed
    tracebacks, and cancelled futures an InvalidStateError. Now the main process alone handles it."""
    args = ["collect", "cartpole", f"out={tmp_path}", "runs=6", "timesteps=4096", "workers=2", *TINY]
    # Ctrl-C handled as at a terminal, whatever this test inherits: a shell's background job (`cmd &`)
    # starts with SIGINT ignored, and Python keeps an inherited SIG_IGN.
    run = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from rl_gpt.cli import main; "
    cmd = [sys.executable, "-c", run + "sys.exit(main(sys.argv[1:]))", *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "dataset" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        _spawned_workers(proc.pid) if when == "workers_starting" else list(runs.glob("run_*/run.json"))
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "Error" not in err, err
    assert "run the same command again to resume" in err
    deadline = time.time() + 20  # no worker is left running (multiprocessing's tracker leaves last)
    with contextlib.suppress(ProcessLookupError):
        while time.time() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_a_dataset_being_collected_is_refused_to_a_second_collection(tmp_path, capsys):
    from rl_gpt.io import exclusive_folder

    (tmp_path / "dataset").mkdir()
    with exclusive_folder(tmp_path / "dataset", "collect"):
        assert _collect("cartpole", tmp_path, "runs=1", "timesteps=1024", "workers=1") == 2
    assert "dataset is being written by another process (an `rl-gpt collect`" in capsys.readouterr().err
    assert list((tmp_path / "dataset").iterdir()) == []


def test_a_folder_chosen_with_dataset_is_named_so_in_the_message(tmp_path, capsys):
    from rl_gpt.io import exclusive_folder

    (tmp_path / "elsewhere").mkdir()
    with exclusive_folder(tmp_path / "elsewhere", "collect"):
        assert _collect("cartpole", tmp_path, f"dataset={tmp_path / 'elsewhere'}", "runs=1", "timesteps=1024") == 2
    assert "or use another dataset= directory" in capsys.readouterr().err


def test_parallel_workers_match_the_run_count(tmp_path):
    extra = ["runs=3", "timesteps=256", "collect.checkpoint_every=128", "task.n_envs=2", "workers=2"]
    assert _collect("cartpole", tmp_path, *extra) == 0
    assert torch.unique(_load(tmp_path)["run"]).tolist() == [0, 1, 2]


def test_a_warning_raised_in_every_worker_is_said_once_on_one_line(tmp_path):
    """SB3 warns of truncated mini-batches in each model it builds: the main process (building the spec)
    and every worker. Workers' warnings now reach the main process, which says each one once."""
    # batch_size 48 and a rollout of 32 steps x 2 envs: SB3's "truncated mini-batch" warning
    args = ["collect", "cartpole", f"out={tmp_path}", "runs=3", "timesteps=256", "collect.checkpoint_every=128"]
    args += ["task.n_envs=2", "workers=2", "task.hyperparams.batch_size=48", *TINY]
    cmd = [sys.executable, "-c", "import sys; from rl_gpt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "mini-batch size of 48" in line]
    assert len(said) == 1 and said[0].startswith("rl-gpt collect: warning from stable_baselines3: "), done.stderr


def test_a_workers_own_warning_reaches_the_main_process_once():
    from rl_gpt.collect import executor

    caught = [("made up in a worker", executor.WarningCategory.of(RuntimeWarning), "/nowhere/worker_only.py", 7)] * 2
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("default")
        executor._say_worker_warnings(caught)
        executor._say_worker_warnings(caught)
    assert [(str(w.message), w.category, w.lineno) for w in said] == [("made up in a worker", RuntimeWarning, 7)]


class _ModelWarning(DeprecationWarning):
    """A library's own warning class, as a user filters it."""


def test_a_workers_warning_keeps_its_class_where_this_process_has_imported_it():
    from rl_gpt.collect import executor

    def warns(cfg, runs):
        warnings.warn("this policy keyword will go", _ModelWarning, stacklevel=1)
        return []

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a worker's filters, not the default's silence for DeprecationWarning
        _, caught = executor._call_job(warns, None, [1])
    (named,) = (c[1] for c in caught)
    assert named == executor.WarningCategory(__name__, "_ModelWarning", "DeprecationWarning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", _ModelWarning)  # a filter on the class still matches it
        with pytest.raises(_ModelWarning, match="will go"):
            executor._say_worker_warnings(caught)
    # from a module this process never imported: its nearest built-in class, not an import to find it
    elsewhere = executor.WarningCategory("not_imported_here.warnings", "ModelWarning", "DeprecationWarning")
    assert elsewhere.here() is DeprecationWarning and "not_imported_here" not in sys.modules


def test_a_failing_jobs_warnings_are_said_in_its_worker_not_lost_with_it():
    from rl_gpt.collect import executor

    def diverges(cfg, runs):
        warnings.warn("learning rate too high: diverging", RuntimeWarning, stacklevel=1)
        raise ValueError("diverged")

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="diverged"):
            executor._call_job(diverges, None, [1])
    assert [(str(w.message), w.category) for w in said] == [("learning rate too high: diverging", RuntimeWarning)]


def test_ray_addresses_are_checked_with_ipv6_hosts_and_ray_clients_default_port():
    import socket

    from rl_gpt.collect.executor import _host_port, check_ray
    from rl_gpt.config import ConfigError

    assert _host_port("127.0.0.1:6379") == ("127.0.0.1", 6379) and _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("head", default_port=10001) == ("head", 10001) and _host_port("head")[1] is None
    with socket.create_server(("127.0.0.1", 0)) as server:  # something answers: no refusal
        check_ray(f"ray://127.0.0.1:{server.getsockname()[1]}")
        check_ray(f"[127.0.0.1]:{server.getsockname()[1]}")
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        check_ray("ray://127.0.0.1")  # Ray Client's port 10001, where nothing listens here


def test_a_ray_address_from_the_environment_is_checked_and_named(monkeypatch):
    from rl_gpt.collect.executor import check_ray
    from rl_gpt.config import ConfigError

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # ray.init would join it, and wait for minutes
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS \(environment\)=127.0.0.1:1: no Ray .* or unset RAY_ADDRESS"):
        check_ray(None)
    with pytest.raises(ConfigError, match=r"^collect.ray_address=127.0.0.1:2: .* or drop collect.ray_address"):
        check_ray("127.0.0.1:2")  # the setting wins over the environment, as ray.init's address= does
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS .*=127.0.0.1:1: no Ray .* unset RAY_ADDRESS and drop"):
        check_ray("auto")  # ray.init(address="auto") joins RAY_ADDRESS too
    monkeypatch.setenv("RAY_ADDRESS", "local")  # ray.init starts a new instance: nothing to reach
    check_ray(None)
    check_ray("local")


def test_ray_executor_with_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    extra = ["runs=2", "timesteps=256", "collect.checkpoint_every=128", "task.n_envs=2", "workers=2", "executor=ray"]
    assert _collect("cartpole", tmp_path, *extra) == 0
    assert torch.unique(_load(tmp_path)["run"]).tolist() == [0, 1]


def test_sac_runs_must_train_past_learning_starts():
    from rl_gpt.collect.sb3_run import check_rl_collection
    from rl_gpt.config import ConfigError, load_config

    def cfg(timesteps: int, *more: str):
        return load_config("pendulum", [f"collect.timesteps={timesteps}", "collect.checkpoint_every=1000", *more])

    with pytest.raises(ConfigError, match="ends before SAC's first update \\(after learning_starts = 100 steps\\)"):
        check_rl_collection(cfg(100, "task.hyperparams.learning_starts=100"))
    check_rl_collection(cfg(101, "task.hyperparams.learning_starts=100"))  # the update after step 101 is stored
    with pytest.raises(ConfigError, match="gradient_steps=0: SAC would never update"):
        check_rl_collection(cfg(1000, "task.hyperparams.gradient_steps=0"))
    with pytest.raises(ConfigError, match="learning_starts = 500"):  # a sampled value at the top of its range
        check_rl_collection(cfg(400, "collect.sample_hyperparams={learning_starts: [10, 500]}"))


def test_ppo_runs_must_be_at_least_a_rollout_long_and_say_where_checkpoints_fall():
    from rl_gpt.collect.sb3_run import check_rl_collection
    from rl_gpt.config import ConfigError, load_config

    def cfg(timesteps: int, every: int, *more: str):  # the cartpole preset: n_steps 32 x 8 envs = 256 a rollout
        return load_config("cartpole", [f"collect.timesteps={timesteps}", f"collect.checkpoint_every={every}", *more])

    said = r"collect.timesteps=255 is less than one PPO rollout \(task.hyperparams.n_steps 32 x task.n_envs 8 = 256"
    with pytest.raises(ConfigError, match=said):  # SB3 would train 256 steps, and the dataset would say 255
        check_rl_collection(cfg(255, 256))
    with pytest.raises(ConfigError, match="n_steps 2048 x task.n_envs 1 = 2048"):  # SB3's default n_steps
        check_rl_collection(cfg(256, 256, "task.hyperparams={}", "task.n_envs=1"))
    with pytest.raises(ConfigError, match="n_steps 64 x"):  # a sampled value at the top of its range
        check_rl_collection(cfg(256, 512, "collect.sample_hyperparams={n_steps: [16, 64]}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_rl_collection(cfg(256, 256))  # one rollout, a checkpoint at its end: nothing to say
    with pytest.warns(UserWarning, match="checkpoint_every=128 is less than one PPO rollout \\(256 steps\\)"):
        check_rl_collection(cfg(1024, 128))


def test_a_net_arch_key_the_algorithm_does_not_read_is_refused():
    from rl_gpt.collect.sb3_run import check_rl_collection
    from rl_gpt.config import ConfigError, load_config

    sac_arch = "task.policy_kwargs={net_arch: {pi: [32], qf: [64, 64]}}"  # the pendulum preset's, under PPO
    with pytest.raises(ConfigError, match="PPO reads pi and vf, not qf"):
        check_rl_collection(load_config("cartpole", [sac_arch]))
    with pytest.raises(ConfigError, match="SAC reads pi and qf, not vf"):
        check_rl_collection(load_config("pendulum", ["task.policy_kwargs={net_arch: {pi: [32], vf: [64]}}"]))
    with pytest.raises(ConfigError, match="PPO reads pi and vf, not 64"):  # a YAML key that is no name
        check_rl_collection(load_config("cartpole", ["task.policy_kwargs={net_arch: {pi: [16], 64: [64]}}"]))
    check_rl_collection(load_config("pendulum", [sac_arch]))  # its own keys
    check_rl_collection(load_config("cartpole", ["task.policy_kwargs={net_arch: [16, 16]}"]))  # one list, shared


@pytest.mark.parametrize(
    ("preset", "overrides", "every", "total"),
    [
        ("cartpole", ["task.n_envs=2", "task.hyperparams.n_steps=16"], 64, 96),  # rollouts of 32: at 64, 96
        ("cartpole", ["task.n_envs=3", "task.hyperparams.n_steps=10", "task.normalize=true"], 64, 200),  # of 30
        ("pendulum", ["task.hyperparams.learning_starts=8", "task.hyperparams.batch_size=8"], 10, 25),
        (
            "pendulum",
            [
                *("task.n_envs=2", "task.hyperparams.learning_starts=20", "task.hyperparams.batch_size=8"),
                *("task.hyperparams.train_freq=4", "task.hyperparams.gradient_steps=2"),
            ],
            10,
            60,
        ),
    ],
)
def test_checkpoints_are_the_policy_after_the_updates_on_their_steps(preset, overrides, every, total):
    """A copy taken while SB3 collects a rollout is the policy before the update on it: the run's last
    update was never stored. Each copy must equal the policy after SB3's update at its step, the last
    the trained one, with the VecNormalize statistics of that moment."""
    from stable_baselines3.common.vec_env import VecNormalize

    from rl_gpt.collect.sb3_run import _Snapshots, build_model
    from rl_gpt.config import load_config
    from rl_gpt.sb3_policy import actor_layout, read_actor

    cfg = load_config(preset, overrides)
    model = build_model(cfg.task, seed=3)
    layout = actor_layout(model.policy, cfg.task.algo)
    after_update: dict[int, torch.Tensor] = {}  # the actor after each of SB3's updates, by the steps it trained on
    sb3_train = model.train

    def train(*args, **kwargs):
        sb3_train(*args, **kwargs)
        after_update[model.num_timesteps] = read_actor(model.policy, layout)

    model.train = train
    snaps = _Snapshots(layout, every, start=0.0)
    snaps.snapshot(model, 0)
    model.learn(total_timesteps=total, callback=snaps)
    steps = [item["step"] for item in snaps.items]
    assert steps[0] == 0 and steps[-1] == model.num_timesteps and steps == sorted(set(steps)) and len(steps) >= 3
    for item in snaps.items[1:]:  # the latest update at or before its step (none before learning_starts)
        updates = [s for s in after_update if s <= item["step"]]
        expected = after_update[max(updates)] if updates else snaps.items[0]["params"]
        assert torch.equal(item["params"], expected), item["step"]
    assert max(after_update) == steps[-1]  # the last row shows the last update
    if isinstance(model.get_env(), VecNormalize):
        assert torch.equal(snaps.items[-1]["obs_mean"], torch.as_tensor(model.get_env().obs_rms.mean).float())


def test_sigterm_stops_a_ray_collection_with_its_message(tmp_path):
    """Ray's driver installs a SIGTERM handler that aborted the process with a core dump, skipping the
    consolidation and the message that a scheduler's stop (SIGTERM) gets elsewhere."""
    pytest.importorskip("ray")
    args = ["collect", "cartpole", f"out={tmp_path}", "runs=6", "timesteps=4096", "workers=1", "executor=ray", *TINY]
    cmd = [sys.executable, "-c", "import sys; from rl_gpt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        runs = tmp_path / "dataset" / "runs"
        deadline = time.time() + 180
        while time.time() < deadline and not list(runs.glob("run_*/run.json")) and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted:" in err and "run the same command again to resume" in err, err[-2000:]
    assert "SIGTERM received" not in err
    assert (tmp_path / "dataset" / "data").is_dir()  # what was stored is consolidated


_NO_RANGE = ["task.metric_range=null", "task.reward_threshold=null"]  # another env than the preset's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task.env_id=CartPole-v9"], "unknown Gymnasium environment 'CartPole-v9'"),
        (["collect.runz=2"], "did you mean collect.runs"),
        (["runs=two"], "collect.runs: expected an integer"),
        (["task.policy_kwargs={activation_fn: sigmoid}"], "task.policy_kwargs.activation_fn='sigmoid': choose"),
        (["task.policy_kwargs={net_arch: {pi: [0]}}"], "task.policy_kwargs.net_arch: {'pi': [0]} must be"),
        (["task.policy_kwargs={net_arch: 5}"], "task.policy_kwargs.net_arch: 5 must be a list of layer widths"),
        (  # the critic, in no layout: 3.6 GB for each network built before this check
            ["task.policy_kwargs={net_arch: {pi: [16], vf: [30000, 30000]}}"],
            "layers wider than 65536 units or more than 1e+08 weights; use a smaller network",
        ),
        (["task.policy_kwargs={net_arch: [10000, 10000, 10000]}"], "more than 1e+08 weights; use a smaller"),
        (["executor=ray", "collect.ray_address=127.0.0.1:1"], "collect.ray_address=127.0.0.1:1: no Ray cluster"),
        (["executor=ray", "collect.ray_address=ray://127.0.0.1:1"], "ray_address=ray://127.0.0.1:1: no Ray cluster"),
        (["seed=-1"], "collect.seed: -1 is negative; use 0 or more"),
        (["task.higher_is_better=no"], "task.higher_is_better=false: a return is higher-is-better; set it to true"),
        (["task.metric=test_loss"], "an RL task's metric is its episode return: task.metric=return"),
        (["task.n_envs=0"], "task.n_envs: 0 is too small"),
        (["task.hyperparams.learning_rate=abc"], "Stable-Baselines3 refused task.hyperparams"),
        (["task.hyperparams.batch_size=-5"], "task.hyperparams.batch_size: -5 must be a whole number of 1 or more"),
        (["collect.sample_hyperparams={learning_rate: [1e-4]}"], "learning_rate: [0.0001] is not [low, high]"),
        (["executor=ray", "collect.ray_address=head"], "collect.ray_address='head': expected HOST:PORT"),
        (["task.env_id=FrozenLake-v1", *_NO_RANGE], "FrozenLake-v1 observes Discrete(16); rl_gpt's policies read"),
        (["task.env_id=Blackjack-v1", *_NO_RANGE], "Blackjack-v1 observes Tuple(Discrete(32)"),
        (["task.hyperparams.use_sde=true"], "task.hyperparams.use_sde: gSDE policies are not supported"),
        (["task.policy_kwargs={foo: 1}"], "task.policy_kwargs: ActorCriticPolicy.__init__() got an unexpected"),
        (["--bogus"], "rl-gpt collect: error: unrecognized arguments: --bogus (see rl-gpt collect --help)"),
        (
            ["--runs", "2"],
            "rl-gpt collect: error: unrecognized arguments: --runs 2; settings are key=value overrides "
            "without dashes: runs=... (see rl-gpt collect --help)",
        ),
    ],
)
def test_bad_input_fails_fast_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) if args[0].startswith("--") else contextlib.nullcontext():
        assert _collect("cartpole", tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "dataset").exists()  # refused before the folder was made


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert _collect("cartpole", blocker / "sub", "runs=1") == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and err.strip().endswith("choose another output directory (out=)"), err


def test_info_prints_summary(tmp_path, capsys):
    assert (
        _collect("cartpole", tmp_path, "runs=1", "timesteps=256", "collect.checkpoint_every=128", "task.n_envs=2") == 0
    )
    capsys.readouterr()
    assert main(["info", str(tmp_path / "dataset")]) == 0
    out = capsys.readouterr().out
    assert "runs         1" in out and "checkpoints  3" in out and "parameters   114" in out
    assert "collected    256 timesteps per run (2 envs), a checkpoint every 128 timesteps; each evaluated on" in out
    assert f"config       {(tmp_path / 'dataset' / 'config.yaml').resolve()}" in out


def test_info_says_how_supervised_runs_were_trained_and_what_was_sampled(tmp_path):
    from rl_gpt.dataset.info import _collection_lines

    spec = {
        "task": {"kind": "supervised", "hyperparams": {"optimizer": "sgd", "steps": 500, "batch_size": 128}},
        "collect": {"checkpoint_every": 10, "sample_hyperparams": {"lr": [0.01, 0.3]}},
    }
    assert _collection_lines(spec, tmp_path) == [
        "collected    500 sgd steps (batch 128) per run, a checkpoint every 10 steps",
        "sampled      per run, log-uniformly: lr in [0.01, 0.3]",
    ]
    assert _collection_lines({"format": "another tool's"}, tmp_path) == []
    odd = {"task": {"kind": "supervised", "hyperparams": "sgd"}, "collect": {"checkpoint_every": 5}}
    assert _collection_lines(odd, tmp_path) == ["collected    ? steps (batch ?) per run, a checkpoint every 5 steps"]
    # an older supervised spec kept the RL-only collect settings: a classifier is evaluated on no episodes
    older = {**spec, "collect": {**spec["collect"], "eval_episodes": 64, "timesteps": 32768}}
    said = _collection_lines(older, tmp_path)[0]
    assert said == "collected    500 sgd steps (batch 128) per run, a checkpoint every 10 steps"


def test_collection_leaves_no_sb3_log_folder(tmp_path, monkeypatch):
    # SB3's default logger makes an empty tempdir/SB3-<date> folder per learn(); ours logs nowhere.
    # An isolated temp dir, so SB3 runs in other processes cannot make this flaky.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    extra = ["runs=1", "timesteps=256", "collect.checkpoint_every=128", "task.n_envs=2", "workers=1"]
    assert _collect("cartpole", tmp_path / "exp", *extra) == 0
    assert len(_load(tmp_path / "exp")) == 3
    assert not list(temp.glob("SB3-*"))


def test_progress_bar_names_the_task_metric():
    from rl_gpt.collect.executor import _last_metric

    rl = load_config("cartpole", [], command="collect")
    assert _last_metric(rl, {"final_return": 487.25}) == {"last_return": "487.2"}
    digits = load_config("digits", [], command="collect")
    assert _last_metric(digits, {"final_metric": 0.23456}) == {"last_test_loss": "0.2346"}
    error = load_config("digits", ["task.metric=test_error"], command="collect")
    assert _last_metric(error, {"final_metric": 0.05}) == {"last_test_error": "0.05"}


def test_an_environment_a_module_registers_is_named_module_colon_id(tmp_path, monkeypatch):
    from rl_gpt.collect.sb3_run import check_env_id
    from rl_gpt.config import ConfigError

    (tmp_path / "own_envs_for_test.py").write_text(
        "import gymnasium as gym\n"
        "from gymnasium.envs.classic_control.cartpole import CartPoleEnv\n"
        "gym.register('OwnCartPole-v0', entry_point=CartPoleEnv, max_episode_steps=100)\n"
    )
    with pytest.raises(
        ConfigError, match="cannot import .own_envs_for_test. .*module not found; run with its folder on PYTHONPATH"
    ):
        check_env_id("own_envs_for_test:OwnCartPole-v0")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_env_id("own_envs_for_test:OwnCartPole-v0")  # imported, then found registered
    with pytest.raises(ConfigError, match="unknown Gymnasium environment 'OwnCartpole-v0'"):
        check_env_id("own_envs_for_test:OwnCartpole-v0")


def test_an_env_module_in_the_current_folder_is_not_imported(tmp_path, monkeypatch, capsys):
    """`python -m rl_gpt.cli` in a stranger's folder: a `module:Env` id in its dataset or model files must
    not run the folder's module.py. A folder the user names on PYTHONPATH is searched as before."""
    import sys

    from rl_gpt.env_modules import EnvModuleError, import_env_module

    (tmp_path / "stranger_envs_for_test.py").write_text("open('RAN', 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # what `python -m` puts first: the current folder
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(
        EnvModuleError, match=r"PYTHONPATH \(PYTHONPATH=\. for the current folder, which is not searched otherwise\)"
    ):
        import_env_module("stranger_envs_for_test:CartPole-v1")
    assert not (tmp_path / "RAN").exists() and "" in sys.path  # sys.path is given back as it was
    from rl_gpt.env_modules import make_env  # the factory of vector envs, run again in spawned workers

    with pytest.raises(EnvModuleError, match="which is not searched otherwise"):
        make_env("stranger_envs_for_test:CartPole-v1")
    assert _collect("cartpole", tmp_path / "out", "task.env_id=stranger_envs_for_test:CartPole-v1") == 2
    assert "which is not searched otherwise" in capsys.readouterr().err and not (tmp_path / "RAN").exists()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # chosen by the user: imported
    assert import_env_module("stranger_envs_for_test:CartPole-v1") == "CartPole-v1"
    assert (tmp_path / "RAN").exists()
    monkeypatch.delitem(sys.modules, "stranger_envs_for_test")


def test_generate_starts_from_a_policy_file_of_an_environment_a_module_registers(tmp_path, monkeypatch):
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.dataset import task_record
    from rl_gpt.generate.run import load_start
    from rl_gpt.sb3_policy import actor_layout, read_actor

    (tmp_path / "own_envs_for_generate.py").write_text(
        "import gymnasium as gym\n"
        "from gymnasium.envs.classic_control.cartpole import CartPoleEnv\n"
        "gym.register('OwnCartPoleGen-v0', entry_point=CartPoleEnv, max_episode_steps=100)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config("cartpole", ["task.env_id=own_envs_for_generate:OwnCartPoleGen-v0"], command="generate")
    model = build_model(cfg.task, seed=3)
    model.save(tmp_path / "mine.zip")
    layout = actor_layout(model.policy, "ppo")
    info = {"spec": {"task": task_record(to_dict(cfg.task))}, "layout": layout.to_dict()}
    start = load_start(info, str(tmp_path / "mine.zip"), 0)  # was refused: "module:Env" would import a module
    torch.testing.assert_close(start, read_actor(model.policy, layout))


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert _collect("cartpole", tmp_path, "executor=ray") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs Ray: pip install 'rl_gpt[ray]' (in a checkout: pip install -e '.[ray]')"), err
    assert not (tmp_path / "dataset").exists()
    assert _collect("cartpole", tmp_path, "executor=ray", "collect.ray_address=head") == 2  # the address first
    assert "collect.ray_address='head': expected HOST:PORT" in capsys.readouterr().err


def test_an_algorithm_that_does_not_fit_the_env_or_its_settings_is_named():
    from rl_gpt.collect.sb3_run import build_model
    from rl_gpt.config import ConfigError, load_config

    sac_on_cartpole = load_config("cartpole", ["task.algo=sac", "task.hyperparams={}", "task.policy_kwargs={}"])
    with pytest.raises(ConfigError, match=r"task.algo=sac needs continuous \(Box\) actions; CartPole-v1 has Discrete"):
        build_model(sac_on_cartpole.task, 0)
    ppo_settings = load_config("pendulum", ["task.hyperparams={gae_lambda: 0.9}"])  # PPO's, under SAC
    with pytest.raises(ConfigError, match=r"task.hyperparams: SAC takes no gae_lambda; give its own settings, or "):
        build_model(ppo_settings.task, 0)
    typo = load_config("cartpole", ["task.policy_kwargs={net_arch: [16], optimizer_kwargs: {foo: 1}}"])
    with pytest.raises(ConfigError, match=r"^task.policy_kwargs: .*'foo'"):  # the optimiser's, not a hyperparameter
        build_model(typo.task, 0)


def test_versions_name_the_commit_of_the_rl_gpt_that_ran(tmp_path):
    """spec.json's rl_gpt version has been 0.1.0 at every commit: a checkout's commit says which code collected."""
    from rl_gpt.collect.sb3_run import describe_versions, source_commit

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    try:
        subprocess.run([*git, "init", "-q", str(tmp_path / "repo")], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    repo = tmp_path / "repo"
    (repo / "f").write_text("x")
    subprocess.run([*git, "-C", str(repo), "add", "f"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "one"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_commit(repo) == head  # a branch's loose ref
    subprocess.run(["git", "-C", str(repo), "pack-refs", "--all"], check=True)
    assert source_commit(repo) == head  # packed
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(tmp_path / "wt")], check=True)
    assert source_commit(tmp_path / "wt") == head  # a worktree's detached HEAD
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "-b", "b", str(tmp_path / "wt2")], check=True)
    assert source_commit(tmp_path / "wt2") == head  # a worktree's branch, kept in the main .git
    assert source_commit(tmp_path) is None  # not a checkout: an installed package
    versions = describe_versions()
    assert "scikit-learn" in versions  # digits' split is scikit-learn's
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / ".git").exists():
        ran = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert versions["rl_gpt_commit"] == ran.stdout.strip()


_SMALL_PPO = [
    *("task.n_envs=2", "task.hyperparams.n_steps=16", "task.hyperparams.batch_size=32", "task.hyperparams.n_epochs=4"),
    *("collect.timesteps=512", "collect.checkpoint_every=128", "collect.eval_episodes=2"),
]


def test_a_discrete_ppo_run_trains_without_distribution_checks_and_the_same_numbers(monkeypatch):
    """torch.distributions' argument checks cost ~5 % of a CartPole run and compute nothing it uses: they are off
    while a Discrete PPO run trains (restored after), kept for Gaussian heads, and the rows are bit for bit
    those of a run with them on."""
    from torch.distributions import Distribution

    from rl_gpt.collect import sb3_run
    from rl_gpt.config import load_config

    cfg = load_config("cartpole", _SMALL_PPO)
    before = Distribution._validate_args
    seen = []
    sb3_learn = PPO.learn

    def learn(self, *args, **kwargs):
        seen.append(Distribution._validate_args)
        return sb3_learn(self, *args, **kwargs)

    monkeypatch.setattr(PPO, "learn", learn)
    fast = sb3_run.train_rl_run(cfg, 1)
    assert seen == [False] and Distribution._validate_args == before

    @contextlib.contextmanager
    def checked(model):
        yield False

    monkeypatch.setattr(sb3_run, "_unchecked_distributions", checked)
    slow = sb3_run.train_rl_run(cfg, 1)
    assert seen == [False, before]
    assert fast.rows.keys() == slow.rows.keys()
    for key in fast.rows.keys() - {"wall_time"}:
        assert torch.equal(fast.rows[key].nan_to_num(-1.0), slow.rows[key].nan_to_num(-1.0)), key
    with sb3_run._unchecked_distributions(sb3_run.build_model(load_config("pendulum").task, seed=0)) as unchecked:
        assert not unchecked and Distribution._validate_args == before  # a Gaussian head keeps its checks


def test_a_diverged_discrete_ppo_run_still_fails():
    """Without the distribution checks, a run whose weights turn NaN is refused by its callback before they act."""
    from rl_gpt.collect.sb3_run import train_rl_run
    from rl_gpt.config import load_config

    blow_up = ["task.hyperparams.learning_rate=1e30", "task.hyperparams.max_grad_norm=1e20"]
    with pytest.raises(ValueError, match="PPO training diverged: the policy has non-finite"):
        train_rl_run(load_config("cartpole", [*_SMALL_PPO, *blow_up]), 0)
