"""The supervised path through the same commands: digits collect → train → sweep → generate."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensordict import TensorDict

from rl_gpt.cli import main
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.supervised import build_classifier, classifier_layout, evaluate_classifiers, load_digits
from rl_gpt.sweep.compare import load_report
from rl_gpt.sweep.table import format_table
from rl_gpt.train.calibration import load_calibration

QUIET = ["wandb.mode=disabled", "-q"]


def test_digits_collect_train_sweep_generate(tmp_path, capsys):
    out = tmp_path / "digits"
    assert (
        main(
            [
                "collect",
                "digits",
                f"out={out}",
                "runs=4",
                "workers=1",
                "task.hyperparams.steps=60",
                "collect.checkpoint_every=20",
                *QUIET,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "digits",
                f"out={out}",
                "steps=20",
                "model=mlp",
                "train.model_overrides={width: 32, depth: 1}",
                "batch=16",
                "train.probe_every_s=0",
                "train.test_fraction=0.5",  # two held-out runs: their median is the mean of both
                *QUIET,
            ]
        )
        == 0
    )
    assert (
        main(["sweep", "digits", f"out={out}", "inits=2", "prompts=3", "samples=1", "sweep.recursive=1", *QUIET]) == 0
    )
    text = (out / "sweep" / "report.json").read_text()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON (NaN is not): every parser reads it
    report = load_report(out / "sweep")
    assert math.isnan(report["one_step"]["solved_fraction"])  # no threshold: null in the file
    assert report["metric"]["name"] == "test_loss" and report["metric"]["higher_is_better"] is False
    assert report["config"]["average"] == 8  # the digits preset reports means of 8 samples
    # the preset's train.calibrate measured it after training; it applies only if the achieved loss
    # rose with the prompt, which a 20-step generator need not do
    cal = load_calibration(out / "model")
    assert cal is not None and cal.meta["spearman_p"] is not None  # 16 inits x 20 prompts: tested
    assert report["calibration"]["applied"] == (len(set(cal.fitted)) > 1)
    prompts = report["prompts"]
    assert report["one_step"]["prompt"] == min(prompts)  # lower is better: the best prompt is the lowest loss
    assert np.isfinite(np.array(report["achieved"])).all()
    assert report["training_equivalent"]["step_unit"] == "optimiser steps"  # SGD steps, not environment steps
    assert report["recursive"]["training_curve"]["step"][0] == 0
    classifier = report["one_step"]["classifier"]  # both metrics of the one-step networks, and the data's best
    assert classifier["test_loss"] == pytest.approx(report["one_step"]["mean_return"], rel=1e-5)
    assert 0.0 <= classifier["dataset_best"]["test_error"] <= classifier["test_error"] <= 1.0
    retrieved_best = min(report["baselines"]["retrieval"]["achieved_mean"])  # a training checkpoint's loss
    assert classifier["dataset_best"]["test_loss"] <= retrieved_best + 1e-5
    # Where real training ends from inits the generator never saw: the held-out runs' last checkpoints.
    meta = json.loads((out / "model" / "model.json").read_text())["meta"]
    data = TensorDict.load_memmap(out / "dataset" / "data", allow_pickle=False)
    ends = [float(data["test_error"][data["run"] == r][-1]) for r in meta["test_runs"]]
    assert classifier["heldout_runs"] == {"test_loss": 2, "test_error": 2} and len(meta["test_runs"]) == 2
    assert classifier["heldout_final"]["test_error"] == pytest.approx(sum(ends) / 2)
    table = format_table(report).splitlines()
    assert "novelty" in table[1] and "solved" not in table[1]  # a classifier task has no reward threshold
    assert not any(" - " in row for row in table[2:6]), table  # and no column of dashes in its place
    line = next(x for x in table if x.startswith("one-step classifiers"))
    best = "the dataset's best, chosen on these test images: "  # the luckiest on them (docs/results.md)
    assert f"test error {classifier['test_error']:.1%}" in line and best in line
    assert f"(held-out runs end at {classifier['heldout_final']['test_loss']:.3f}, " in line
    del classifier["dataset_best"]["test_loss"]  # a dataset without that field prints what it has
    del classifier["heldout_final"]
    line = next(x for x in format_table(report).splitlines() if x.startswith("one-step classifiers"))
    assert line.endswith(f"({best}{classifier['dataset_best']['test_error']:.1%})")
    behaviour = report["behavioural_novelty"]
    assert set(behaviour) == {"generator", "retrieval", "noise", "identity", "heldout"}
    assert report["novelty"]["retrieval"] == 0.0  # a training checkpoint, ReLU units rescaled alike on both sides
    n_test = len(load_digits()[2])
    for block in behaviour.values():
        assert block["compared"] == "predictions" and block["tolerance"] is None
        assert block["states"] == min(n_test, 2048) and 0.0 <= block["fraction"] <= 1.0
    assert behaviour["retrieval"]["fraction"] == 0.0

    gen_dir = tmp_path / "gen"
    # the calibration was measured with means of 8 samples, not 3: generate says so and prompts as given
    with pytest.warns(UserWarning, match="average 3"):
        code = main(
            [
                "generate",
                "--model",
                str(out / "model"),
                "--target-return",
                str(min(prompts)),
                "--num",
                "2",
                "--average",
                "3",
                "--out",
                str(gen_dir),
            ]
        )
    assert code == 0
    assert "(test error " in capsys.readouterr().out  # the other metric, printed beside the prompted loss
    record = json.loads((gen_dir / "generated.json").read_text())
    assert record["average"] == 3 and len(record["policies"]) == 2 and not record["calibrated"]
    assert record["steps"] == 10 and record["guidance"] == 1.5  # the digits preset's sweep.steps and sweep.guidance
    first = record["policies"][0]  # both test metrics of each classifier, the prompted one being achieved_return
    assert first["test_loss"] == pytest.approx(first["achieved_return"]) and 0.0 <= first["test_error"] <= 1.0
    # --seed 0 starts from the sweep's first unseen init, not from training run 0's (seed collect.seed + 0)
    assert "seed 1000000: the sweep's unseen init 0" in record["start"]
    layout, (_, _, x_test, y_test) = classifier_layout("digits_mlp"), load_digits()
    torch.manual_seed(1_000_000)
    unseen = layout.flatten(build_classifier("digits_mlp").state_dict())[None]
    start_loss, _ = evaluate_classifiers(unseen, layout, "digits_mlp", x_test, y_test)
    assert record["start_return"] == pytest.approx(float(start_loss[0]), abs=1e-5)
    first_run = CheckpointDataset(out / "dataset").data["test_loss"][0].item()
    assert record["start_return"] != pytest.approx(first_run, abs=1e-4)
    net = build_classifier("digits_mlp")
    net.load_state_dict(load_file(str(gen_dir / record["policies"][0]["file"])))  # loads into the task's nn.Module
    layout = classifier_layout("digits_mlp")
    _, _, x_test, y_test = load_digits()
    loss, _ = evaluate_classifiers(layout.flatten(net.state_dict())[None], layout, "digits_mlp", x_test, y_test)
    assert torch.isclose(loss[0].double(), torch.tensor(record["policies"][0]["achieved_return"]).double(), atol=1e-4)

    # --from a classifier: re-prompting a generated one, or one of the user's own (no metadata)
    def generate_from(start: Path, target: float, folder: str) -> int:
        args = ["--model", str(out / "model"), "--target-return", str(target), "--from", str(start)]
        return main(["generate", *args, "--out", str(tmp_path / folder)])

    assert generate_from(gen_dir / record["policies"][0]["file"], min(prompts), "again") == 0
    again = json.loads((tmp_path / "again" / "generated.json").read_text())
    assert again["start_return"] == pytest.approx(record["policies"][0]["achieved_return"], abs=1e-5)
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "mine.safetensors"))  # a plain state dict, no header
    assert generate_from(tmp_path / "mine.safetensors", min(prompts), "mine") == 0
    torch.manual_seed(0)
    save_file(build_classifier("mnist_mlp").state_dict(), str(tmp_path / "other.safetensors"))
    capsys.readouterr()
    assert generate_from(tmp_path / "other.safetensors", 1.0, "other") == 2
    assert "does not hold a digits_mlp" in capsys.readouterr().err

    # `rl-gpt evaluate` measures the generated file alone (its header names the network and data
    # set) and dataset rows by test loss and error, as generate and the dataset report them
    capsys.readouterr()
    classifier = gen_dir / record["policies"][0]["file"]
    assert main(["evaluate", str(classifier), "--json", str(tmp_path / "eval.json")]) == 0
    assert f"test loss {record['policies'][0]['achieved_return']:.4f}" in capsys.readouterr().out
    measured = json.loads((tmp_path / "eval.json").read_text())["classifiers"][0]
    assert measured["test_loss"] == pytest.approx(record["policies"][0]["achieved_return"], abs=1e-5)
    assert main(["evaluate", f"{out / 'dataset'}:0:2", "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["classifiers"]
    dataset = CheckpointDataset(out / "dataset")
    assert [r["test_loss"] for r in rows] == pytest.approx(dataset.data["test_loss"][:2].tolist(), abs=1e-5)
    assert [r["test_error"] for r in rows] == pytest.approx(dataset.data["test_error"][:2].tolist(), abs=1e-6)
    assert [r["label_test_loss"] for r in rows] == dataset.data["test_loss"][:2].tolist()  # each row beside its label
    label = float(dataset.data["test_loss"][1])
    assert f"(label {label:.4f}, {100 * float(dataset.data['test_error'][1]):.2f}%)" in capsys.readouterr().out

    # A task.metric other than the data's is refused, not ignored: the model would learn test loss
    # while its config.yaml said test error, and a sweep would read its prompts in the wrong metric.
    capsys.readouterr()
    assert (
        main(["train", "digits", f"out={tmp_path / 'err'}", f"dataset={out / 'dataset'}", "task.metric=test_error"])
        == 2
    )
    err = capsys.readouterr().err
    assert "holds checkpoints measured by test_loss" in err and "pass task.metric=test_loss" in err, err
    assert not (tmp_path / "err").exists()
    args = ["sweep", "digits", "--model", str(out / "model"), "--out", str(tmp_path / "s"), *QUIET]
    assert main([*args, "task.metric=test_error"]) == 2
    assert "the model was trained on test_loss prompts" in capsys.readouterr().err
    hib = ["train", "digits", f"out={tmp_path / 'err'}", f"dataset={out / 'dataset'}", "task.higher_is_better=true"]
    assert main(hib) == 2
    err = capsys.readouterr().err
    assert "(task.higher_is_better: False -> True); pass task.metric=test_loss task.higher_is_better=false" in err, err
    # a dataset of another metric (dataset= / --dataset) would score the model's outputs in that metric
    from rl_gpt.train.modelfile import ModelFileError, check_compatible, read_model_info

    info, spec = read_model_info(out / "model"), json.loads((out / "dataset" / "spec.json").read_text())
    check_compatible(info, spec)
    capsys.readouterr()
    assert main(["info", str(out / "dataset")]) == 0  # classifiers have no rollouts to copy before or after
    assert "copied before the update" not in capsys.readouterr().out
    spec["metric"]["name"] = "test_error"
    with pytest.raises(ModelFileError, match="trained on test_loss prompts, but the dataset measures test_error"):
        check_compatible(info, spec)


def test_error_targets_are_fractions():
    from rl_gpt.config import ConfigError  # a one-line CLI error, not a traceback
    from rl_gpt.generate.run import check_fraction_targets

    check_fraction_targets("test_error", [0.0, 0.05, 1.0])
    check_fraction_targets("test_loss", [5.0])  # a loss may exceed 1
    with pytest.raises(
        ValueError, match=r"target 5: the model's metric test_error is a fraction .* \(for 5 % pass 0.05\)"
    ):
        check_fraction_targets("test_error", [0.1, 5.0])
    with pytest.raises(ConfigError, match=r"target -0.1: .* fraction from 0 to 1$"):
        check_fraction_targets("test_error", [-0.1])


def test_each_stage_logs_what_it_made_as_a_wandb_artifact_and_names_what_it_used(tmp_path, monkeypatch):
    """collect → dataset artifact → train → model artifact → calibrate, sweep; offline W&B keeps its records
    in a binary file, where each artifact's digest and each run's ``inputs`` (NAME:DIGEST) are found."""
    wandb = pytest.importorskip("wandb")
    from rl_gpt.wandb_run import folder_artifact

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the presets' default: offline
    out = tmp_path / "exp"
    tiny = ["-q", "sweep.calibration_inits=2", "sweep.calibration_prompts=3", "sweep.samples=1"]
    collect = ["collect", "digits", f"out={out}", "runs=3", "workers=1", "task.hyperparams.steps=40", *tiny]
    assert main(collect) == 0
    collected = folder_artifact("dataset", out / "dataset").digest
    assert main([*collect, "train.steps=5"]) == 0  # nothing to collect: the dataset, and its digest, stay
    assert folder_artifact("dataset", out / "dataset").digest == collected
    model_args = ["steps=4", "model=mlp", "train.model_overrides={width: 16, depth: 1}", "batch=8"]
    assert main(["train", "digits", f"out={out}", *model_args, "train.test_fraction=0.34", *tiny]) == 0
    assert main(["sweep", "digits", f"out={out}", "inits=2", "prompts=3", "sweep.recursive=1", *tiny]) == 0
    # W&B's service writes a finished run's records on its own time (a busy CPU saw only the file's header);
    # at a command's exit its teardown waits for them, so the test does the same before reading
    wandb.teardown()

    def records(folder: Path, stage: str) -> bytes:
        run_id = (folder / "wandb" / f"{stage}.run_id").read_text()
        (found,) = folder.glob(f"wandb/offline-run-*/run-{run_id}.wandb")
        return found.read_bytes()

    dataset, model = folder_artifact("dataset", out / "dataset"), folder_artifact("model", out / "model")
    assert dataset.name == "exp-dataset" and model.name == "exp-model"
    assert sorted(model.manifest.entries) == ["config.yaml", "model.json", "model.safetensors"]  # no calibration
    used_dataset, used_model = f"{dataset.name}:{dataset.digest}".encode(), f"{model.name}:{model.digest}".encode()
    assert dataset.digest.encode() in records(out, "collect-digits-dataset")  # collect logged the dataset
    train = records(out / "model", "train-digits")
    assert used_dataset in train and model.digest.encode() in train
    for used in (records(out / "model", "calibrate-digits"), records(out / "sweep", "sweep-digits")):
        assert used_dataset in used and used_model in used


@pytest.mark.parametrize("mode, artifacts", [("online", True), ("offline", True), ("offline", False)])
def test_used_artifacts_are_marked_online_and_named_in_the_config_in_every_mode(tmp_path, mode, artifacts):
    """W&B refuses ``use_artifact`` offline (the lineage is drawn online only); the config's ``inputs`` name
    each input's version in every mode. ``wandb.artifacts=false`` logs and names none."""
    pytest.importorskip("wandb")
    from dataclasses import replace
    from types import SimpleNamespace

    from rl_gpt.config import load_config
    from rl_gpt.wandb_run import folder_artifact, log_output, use_inputs

    folder = tmp_path / "exp" / "model"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text('{"step": 7}')
    (folder / "calibration.json").write_text("{}")  # written later by calibrate: not part of the model
    cfg = load_config("digits")
    cfg = replace(cfg, wandb=replace(cfg.wandb, mode=mode, artifacts=artifacts))
    config, used, logged = {}, [], []
    run = SimpleNamespace(
        config=SimpleNamespace(update=lambda values, allow_val_change: config.update(values)),
        use_artifact=used.append,
        log_artifact=logged.append,
    )
    staging = Path(os.environ["WANDB_DATA_DIR"]) / "artifacts" / "staging"
    use_inputs(cfg, run, {"model": folder, "dataset": tmp_path / "no-such-folder"})
    assert not staging.exists() or not any(staging.iterdir())  # a used artifact leaves no copy behind
    log_output(cfg, run, "model", folder)
    expected = folder_artifact("model", folder)
    assert expected.metadata["step"] == 7 and list(expected.manifest.entries) == ["model.json"]
    if not artifacts:
        assert config == {} and used == [] and logged == []
        return
    assert config == {"inputs": {"model": f"exp-model:{expected.digest}"}}  # a folder without its files: left out
    assert [a.digest for a in used] == ([expected.digest] if mode == "online" else [])
    assert [a.digest for a in logged] == [expected.digest]


def test_artifact_names_are_valid_and_distinct_for_any_folder(tmp_path):
    pytest.importorskip("wandb")
    import wandb

    from rl_gpt.wandb_run import artifact_name

    long = tmp_path / ("x" * 200) / "model"
    names = [artifact_name(tmp_path / "demo" / "model"), artifact_name(tmp_path / "my exp" / "model")]
    names += [artifact_name(tmp_path / "my_exp" / "model"), artifact_name(long)]
    assert names[0] == "demo-model" and len(set(names)) == 4
    assert len(names[3]) <= 128 and names[3] == artifact_name(long)  # shortened, and alike at every stage
    for name in names:
        wandb.Artifact(name, type="model")  # wandb refuses a name it does not allow
