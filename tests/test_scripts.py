"""The experiment scripts in scripts/ still run against the package they measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_test_split_leak_script_scores_the_same_networks_on_both_halves(tmp_path):
    out = tmp_path / "leak"
    cmd = [sys.executable, str(ROOT / "scripts" / "test_split_leak.py"), "--out", str(out), "--quick"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "leak.json").read_text())
    assert result["halves"] == {"A": 180, "B": 180}
    for fold in result["folds"]:
        reports = {h: json.loads(Path(p).read_text()) for h, p in fold["reports"].items()}
        # the same networks from the same input m (init fidelity reads parameters only), on other images
        for key in ("init_fidelity", "init_metric_as_labelled", "calibration"):
            assert reports["A"][key] == reports["B"][key], key
        assert reports["A"]["achieved"] != reports["B"]["achieved"]
    assert set(result["per_init"]) == {"r2", "r2_better_half", "loss_all_prompts", "one_step_loss"}
    assert set(result["unseen_minus_label"]) == {"one_step_loss", "one_step_error", "retrieval_one_step"}


def _script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_the_best_checkpoints_optimism_is_measured_on_images_it_was_not_chosen_on():
    import torch

    bias = _script("best_checkpoint_bias")
    g = torch.Generator().manual_seed(0)
    lucky = (torch.rand(500, 200, generator=g) < 0.1).float()  # 500 equally good checkpoints: 10 % error, by chance
    gap = bias.selection_gap(lucky, choose_size=100, splits=20)
    assert gap["on_the_choosing_images"] < 0.06 and abs(gap["on_the_other_images"] - 0.1) < 0.02
    one_better = torch.full((3, 200), 0.3)
    one_better[1] = 0.05  # the best everywhere: chosen alike on any images, nothing to be lucky about
    gap = bias.selection_gap(one_better, choose_size=100, splits=5)
    assert gap["on_the_choosing_images"] == pytest.approx(0.05) == gap["on_the_other_images"]


# A DiT (attention is one of the paths compared) small enough for a test; one step per block.
TINY_DIT = ["batch=32", "train.model_overrides={width: 32, depth: 1, heads: 2}", "train.test_fraction=0.25"]


def test_the_train_step_benchmark_finds_the_old_and_new_paths_equal(experiment, capsys):
    bench = _script("bench_train_step")
    args = ["cartpole", "--out", str(experiment), "--steps", "1", "--repeats", "2", "--phases", *TINY_DIT]
    assert bench.main(args) == 0
    said = capsys.readouterr().out
    assert "CPU-time ratio new/old" in said and "new phases, ms/step: pairs" in said
    assert "equal: every model, EMA and optimiser tensor and all 3 losses" in said


def test_the_train_step_benchmark_exits_1_when_the_new_path_computes_other_numbers(experiment, monkeypatch, capsys):
    import torch

    bench = _script("bench_train_step")

    def fused(model, cfg):  # faster, and rounds differently: what the benchmark is there to catch
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    monkeypatch.setattr(bench, "make_optimizer", fused)
    assert bench.main(["cartpole", "--out", str(experiment), "--steps", "1", "--repeats", "2", *TINY_DIT]) == 1
    assert "NOT EQUAL after 3 steps" in capsys.readouterr().out
