"""What a sweep logs to W&B: names that say what each number is."""

from __future__ import annotations

import math

from rl_gpt.sweep.run import _one_step_logged


def test_a_classifier_sweep_logs_its_metrics_and_references_by_name() -> None:
    report = {
        "metric": {"name": "test_loss"},
        "one_step": {
            "mean_return": 0.31,
            "solved_fraction": math.nan,  # no threshold for a loss
            "classifier": {
                "test_loss": 0.31,
                "test_error": 0.098,
                "dataset_best": {"test_loss": 0.11, "test_error": 0.022},
                "heldout_final": {"test_loss": 0.2, "test_error": 0.05},
                "heldout_runs": {"test_loss": 102, "test_error": 102},  # counts, not losses
            },
        },
    }
    assert _one_step_logged(report) == {
        "one_step_test_loss": 0.31,
        "one_step_test_error": 0.098,
        "dataset_best_test_loss": 0.11,
        "dataset_best_test_error": 0.022,
        "heldout_final_test_loss": 0.2,
        "heldout_final_test_error": 0.05,
    }


def test_a_policy_sweep_logs_its_return_and_solved_fraction() -> None:
    report = {"metric": {"name": "return"}, "one_step": {"mean_return": 500.0, "solved_fraction": 1.0}}
    assert _one_step_logged(report) == {"one_step_return": 500.0, "solved_fraction": 1.0}
    report["one_step"]["solved_fraction"] = None  # read back from strict JSON
    assert _one_step_logged(report) == {"one_step_return": 500.0}
