"""`rl-gpt sweep` and `rl-gpt calibrate` on the tiny CartPole ``experiment`` (conftest.py), through the real
CLI: the report and plot, the baselines' pool and the novelty audit, calibration, and reranking candidates."""

from __future__ import annotations

import json
import math
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import QUIET, ctrl_c_with_a_wandb_run_open
from tensordict import TensorDict

from rl_gpt.cli import main
from rl_gpt.evaluate.alignment import alignment_r2
from rl_gpt.sweep.table import format_table
from rl_gpt.train.modelfile import load_generator, read_model_info


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

    def measured(ds, params, episodes, seed, *args, stats_rows=None, **kwargs):
        result = evaluate_flat(ds, params, episodes, seed, *args, stats_rows=stats_rows, **kwargs)
        evaluated.append((params, stats_rows, seed, result.mean))
        return result

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
    own = [(p, rows) for p, rows, _, _ in evaluated if rows is not None]
    assert len(own) == 2 and all(torch.equal(p, ds.data["params"][rows]) for p, rows in own[:1])
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    # in order: the inits (identity), the generated networks, the retrieved checkpoints, the noisy ones; every one
    # rolled out from the same start states (sweep.seed's SWEEP seed), as the README says
    assert [seed for *_, seed, _ in evaluated] == [report["scoring"]["evaluation_seed"]] * 4
    init_metric, _, retrieved, _ = (mean for *_, mean in evaluated)
    prompts = torch.tensor(report["prompts"])
    # retrieval: for each prompt, the pool's checkpoint whose label is nearest it
    labels = ds.data["metric"][pool].float()
    nearest = pool[(labels[None] - prompts[:, None]).abs().argmin(1)]
    assert torch.equal(own[0][1], nearest)
    best = int(prompts.argmax())  # returns: the highest prompt is the best
    assert torch.equal(seen["retrieved"][0], ds.data["params"][nearest[best]].float())  # novelty's, at the best prompt
    # the rows are what those networks achieved: identity is the inits' own return, measured as everything else
    assert report["init_metric"] == pytest.approx(init_metric.tolist())
    identity = alignment_r2(prompts, init_metric[:, None].expand(-1, len(prompts)))
    assert report["baselines"]["identity"]["r2_per_init"] == pytest.approx(identity.tolist())
    retrieval = alignment_r2(prompts, retrieved[None].expand(2, -1))
    assert report["baselines"]["retrieval"]["r2_per_init"] == pytest.approx(retrieval.tolist())
    assert report["novelty"]["nn_dist_heldout"] > 0  # the held-out run's final checkpoint is not in the pool
    assert report["novelty"]["retrieval"] == 0  # a training checkpoint is its own nearest: the whole pool is searched
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_capability"]  # what sampled and rolled out


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


def test_an_interrupted_sweep_says_so_and_leaves_no_empty_folder(experiment, tmp_path, monkeypatch, capsys):
    import rl_gpt.sweep.run

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rl_gpt.sweep.run, "sample_candidates", ctrl_c)
    out = tmp_path / "sweep"
    args = ["sweep", "cartpole", f"out={experiment}", "--out", str(out), "inits=2", "prompts=2", "episodes=2"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: a sweep writes report.json only when it ends" in err
    assert "rl-gpt sweep: interrupted" not in err  # said once, by the stage that knows what it kept
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr("rl_gpt.sweep.plot.plot_sweep", ctrl_c)  # after report.json is written
    assert main(args) == 130
    assert f"interrupted after {out / 'report.json'} was written" in capsys.readouterr().err
    assert (out / "report.json").is_file()


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
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the preset's offline: the stand-in run takes it all
    used = {}
    recorder = types.SimpleNamespace(
        log=logged.append, finish=lambda: None, config=types.SimpleNamespace(update=lambda v, **k: used.update(v))
    )
    monkeypatch.setattr("rl_gpt.wandb_run.start_run", lambda *a, **k: opened.append((a, k)) or recorder)
    with pytest.warns(UserWarning, match="changes no prompt"):
        assert main([*args, "sweep.calibration_prompts=3", "samples=1", "episodes=2", "-q"]) == 0
    (_, stage, directory, config), kwargs = opened[0]
    assert stage == "calibrate" and Path(directory) == model and kwargs["experiment"] == tmp_path.name
    assert config["sweep"]["guidance"] == 2.0 and config["sweep"]["inits"] == 2 and config["model"]["step"] > 0
    assert config["task"]["name"] == "cartpole" and "wandb" not in config
    summary = logged[0]
    assert summary["calibration/applied"] is False and summary["calibration/failed_fraction"] == 0.0
    assert set(used["inputs"]) == {"dataset", "model"}  # what it measured, named by artifact version
    assert "calibration" in summary  # its plot


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
    assert main([*args, "wandb.mode=disabled", "sweep.init_seed=0"]) == 2
    assert "replaces" not in capsys.readouterr().out  # a sweep refused before it starts replaces nothing
    # a copy of the experiment checks its own model; the original, trained on since, is flagged
    shutil.copytree(tmp_path / "copy", tmp_path / "moved")
    info = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps(info | {"rl_gpt.save_id": "f" * 32}))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "copy" / "sweep")]) == 0
    assert f"{model.resolve()} has been saved again since" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "moved" / "sweep")]) == 0
    assert "saved again" not in capsys.readouterr().out


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
    for name in ("ranker.safetensors", "ranker.json"):  # fitted there by the experiment fixture
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
    for name in ("ranker.safetensors", "ranker.json"):  # fitted by the experiment fixture: here, by the sweep
        (model / name).unlink()
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


def test_a_calibration_holds_for_the_weights_it_measured_not_those_saved_meanwhile(experiment, tmp_path, monkeypatch):
    """`rl-gpt calibrate` beside a training that saves new weights while it measures: the calibration
    holds for the weights it loaded, so the newly saved ones are not taken as calibrated."""
    from safetensors.torch import load_file

    import rl_gpt.sweep.calibrate as calibrate
    from rl_gpt.io import SAVE_ID, atomic_save_pair
    from rl_gpt.train.calibration import load_calibration

    model = tmp_path / "model"
    shutil.copytree(experiment / "model", model)
    real = calibrate.evaluate_flat

    def training_saves_meanwhile(*args, **kwargs):
        weights = {k: v * 1.01 for k, v in load_file(str(model / "model.safetensors")).items()}
        meta = {k: v for k, v in read_model_info(model).items() if k != SAVE_ID}
        atomic_save_pair(weights, model / "model.safetensors", model / "model.json", meta)
        return real(*args, **kwargs)

    monkeypatch.setattr(calibrate, "evaluate_flat", training_saves_meanwhile)
    args = ["calibrate", "cartpole", f"out={experiment}", "--model", str(model), "sweep.calibration_inits=2"]
    assert main([*args, "sweep.calibration_prompts=3", "samples=1", "episodes=2", *QUIET]) == 0
    assert not load_calibration(model).measured_for(model)


def test_ctrl_c_while_a_sweep_is_logged_to_wandb_ends_with_the_sweeps_line(experiment, tmp_path, monkeypatch, capsys):
    """Found by interrupting `rl-gpt sweep digits` in its W&B logging: W&B's closing lines came under
    'interrupted after report.json was written', as the last lines of the command."""
    monkeypatch.setattr("rl_gpt.sweep.run.log_sweep", ctrl_c_with_a_wandb_run_open)
    out = tmp_path / "sweep"
    args = ["sweep", "cartpole", f"out={experiment}", "--out", str(out), "inits=2", "prompts=2", "episodes=2"]
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"interrupted after {out / 'report.json'} was written"), err


@pytest.mark.parametrize("runs", [1, 2])
def test_the_novelty_audit_of_a_model_trained_on_one_or_two_runs_ends_with_its_report(experiment, runs):
    """A user's first try: 2 runs collected, both training runs, none held out. The audit's two stand-ins
    emptied the pool ("cannot reshape array of size 0") and the sweep ended without report.json."""
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.sweep.audit import novelty_audit

    ds = CheckpointDataset(experiment / "dataset")
    train_runs = read_model_info(experiment / "model")["meta"]["train_runs"][:runs]
    slices = ds.run_slices()
    pool = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in train_runs])
    inits = ds.data["params"][torch.tensor([slices[r].start for r in train_runs])].float()
    methods = {"generator": (inits, ds.data["metric"][pool[: len(inits)]])}
    out = novelty_audit(ds, methods, inits, pool, train_runs, [])
    if runs == 1:
        assert "collect more runs" in out["novelty_skipped"]
    else:
        assert math.isfinite(out["novelty"]["generator"]) and out["novelty"]["nn_dist_heldout"] > 0
