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
