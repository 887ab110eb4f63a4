"""What an experiment folder (``dataset/`` and ``model/``) holds and how the commands read it: the dataset's
labels measured again, the self-describing model file, ``info``, damaged files, a moved or copied folder's
dataset, and another task's model or config refused. Uses the tiny CartPole ``experiment`` (conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import QUIET
from safetensors.torch import load_file

from rl_gpt.cli import main
from rl_gpt.train.modelfile import ModelFileError, check_compatible, load_generator, model_dataset, read_model_info


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
    assert f"config       {(experiment / 'model' / 'config.yaml').resolve()}" in out
    assert main(["info", str(experiment)]) == 0  # the experiment folder: its dataset, then its model
    out = capsys.readouterr().out
    assert out.index("runs         4") < out.index("model        ") and "M parameters" in out
    assert main(["info", str(tmp_path / "none")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["info", str(experiment / "model" / "model.json")]) == 0  # the file that marks a folder: that folder
    assert "step 30 of train.steps=30 (finished)" in capsys.readouterr().out


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
    with pytest.raises(ModelFileError, match="trained for cartpole .* config is for digits.* preset, `cartpole`"):
        check_config_task(info, "digits", "digits", "supervised")
    hopper = json.loads(json.dumps(info))  # a task named on the command line: there is no preset to suggest
    hopper["spec"]["task"]["name"], hopper["spec"]["env_id"] = "hopper", "Hopper-v5"
    with pytest.raises(ModelFileError, match=r"no config is given\)$"):
        check_config_task(hopper, "inverted_pendulum", "InvertedPendulum-v5")
    supervised = {"spec": {"task": {"name": "digits"}, "env_id": "digits"}}  # env_id: the data set's name
    check_config_task(supervised, "digits", "CartPole-v1", "supervised")  # a config that left task.env_id out
