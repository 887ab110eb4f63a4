"""What a sweep logs to W&B: names that say what each number is."""

from __future__ import annotations

import math

import pytest
import torch

from rl_gpt.dataset import CheckpointDataset, DatasetWriter
from rl_gpt.evaluate.alignment import alignment_r2, count_failed_as
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.sweep.summary import summarize as _summary
from rl_gpt.sweep.summary import training_equivalent as _training_equivalent
from rl_gpt.sweep.wandb_log import one_step_logged as _one_step_logged


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


def test_a_lower_is_better_summary_counts_a_failed_sample_as_the_worst_prompt() -> None:
    prompts = torch.tensor([0.1, 0.2, 0.3, 0.4])  # test errors: 0.1 is the best prompt
    achieved = prompts.repeat(3, 1)[..., None].clone()  # (K, P, S): every init on target
    achieved[1, 0, 0] = math.nan  # init 1's network for the best prompt failed
    achieved[2, 0, 0] = 0.12
    summary = _summary(prompts, achieved, best=0, threshold=0.15, higher=False)
    as_worst = achieved.nan_to_num(nan=0.4)
    assert summary["r2_per_init"] == pytest.approx(alignment_r2(prompts, as_worst).tolist())
    assert summary["r2_per_init"][0] == pytest.approx(1.0) and summary["r2_per_init"][1] < 0.5
    assert summary["one_step"]["prompt"] == pytest.approx(0.1)
    # a failure counts as the worst prompt here too, as `rl-gpt compare` counts it: (0.1 + 0.4 + 0.12) / 3
    assert summary["one_step"]["mean_return"] == pytest.approx(0.62 / 3)
    assert summary["one_step"]["solved_fraction"] == pytest.approx(2 / 3)  # at or below 0.15; a failure is not
    assert summary["one_step"]["failed_fraction"] == pytest.approx(1 / 3)
    assert summary["failed_fraction"] == pytest.approx(1 / 12)
    from rl_gpt.sweep.compare import _one_step_per_init

    report = {"prompts": prompts.tolist(), "achieved": achieved.tolist(), "metric": {"higher_is_better": False}}
    assert float(_one_step_per_init(report).mean()) == pytest.approx(summary["one_step"]["mean_return"])
    nothing = _summary(prompts, torch.full_like(achieved, math.nan), best=0, threshold=0.15, higher=False)
    assert nothing["failed_fraction"] == 1.0 and all(math.isnan(v) for v in nothing["prompt_alignment_r2_ci95"])
    # the recursive curve scores each generated step's failures the same way (it had averaged the rest)
    scored, failed = count_failed_as(0.4, torch.tensor([0.1, math.nan, math.inf, 0.3]))
    assert scored.tolist() == pytest.approx([0.1, 0.4, 0.4, 0.3]) and failed.tolist() == [False, True, True, False]


def test_a_higher_is_better_summary_counts_a_failed_sample_as_the_lowest_prompt() -> None:
    prompts = torch.tensor([100.0, 300.0, 500.0])
    achieved = torch.tensor([[[100.0], [300.0], [500.0]], [[100.0], [300.0], [math.nan]]])
    summary = _summary(prompts, achieved, best=2, threshold=475.0, higher=True)
    assert summary["r2_per_init"] == pytest.approx(alignment_r2(prompts, achieved.nan_to_num(nan=100.0)).tolist())
    assert summary["one_step"]["solved_fraction"] == pytest.approx(0.5)


def test_a_failure_at_the_worst_prompt_is_no_hit() -> None:
    """Scored as the worst prompt, a failure there had been a perfect hit (session 35's audit): it is now
    scored at the grid's other end, the largest miss a sample in range can make."""
    prompts = torch.tensor([100.0, 200.0, 300.0, 400.0, 500.0])
    achieved = prompts.repeat(2, 1)[..., None].clone()  # both inits on target
    achieved[1, 0, 0] = math.nan  # init 1 failed at the worst prompt (100)
    achieved[1, 3, 0] = math.inf  # and at 400, nearer the best end: scored at the low end
    summary = _summary(prompts, achieved, best=4, threshold=475.0, higher=True)
    expected = achieved.clone()
    expected[1, 0, 0], expected[1, 3, 0] = 500.0, 100.0
    assert summary["r2_per_init"] == pytest.approx(alignment_r2(prompts, expected).tolist())
    assert summary["r2_per_init"][0] == pytest.approx(1.0) and summary["r2_per_init"][1] < 0
    from rl_gpt.sweep.compare import bias_share

    report = {"prompts": prompts.tolist(), "achieved": achieved.tolist(), "metric": {"higher_is_better": True}}
    scored = report | {"achieved": expected.tolist()}
    assert bias_share(report) == pytest.approx(bias_share(scored))  # compare scores them alike (inf had been 3e38)


def test_r2_over_the_better_half_sees_a_generator_that_stalls_at_the_best_prompts() -> None:
    prompts = torch.linspace(0.2, 2.2, 6)  # losses: the better half is 0.2, 0.6, 1.0
    achieved = prompts.clone().repeat(4, 1)[..., None]
    achieved[:, :3] = 0.6  # every init stalls at 0.6 for the three best prompts
    summary = _summary(prompts, achieved, best=0, threshold=None, higher=False)
    assert summary["better_half_prompts"] == 3
    assert summary["prompt_alignment_r2"] > 0.85  # the whole range hides it
    assert summary["prompt_alignment_r2_better_half"] == pytest.approx(
        float(alignment_r2(prompts[:3], achieved[:, :3]).mean())
    )
    assert summary["prompt_alignment_r2_better_half"] == pytest.approx(0.0)  # as good as ignoring the prompt


def _runs(tmp_path, curves: list[list[float]], higher: bool) -> CheckpointDataset:
    layout = Layout.build({"l.weight": (3, 2), "l.bias": (3,)}, [LayerSpec("l", None, None)])
    metric = {"name": "return" if higher else "test_error", "higher_is_better": higher}
    w = DatasetWriter(tmp_path / "ds", {"task": {"name": "toy"}, "metric": metric, "layout": layout.to_dict()})
    for run, curve in enumerate(curves):
        n = len(curve)
        w.add_run(
            run,
            {"params": torch.zeros(n, layout.numel), "metric": torch.tensor(curve), "step": torch.arange(n) * 100},
            {},
        )
    w.consolidate()
    return CheckpointDataset(tmp_path / "ds")


def test_training_equivalent_is_the_median_step_that_first_reached_the_value(tmp_path) -> None:
    errors = _runs(tmp_path / "e", [[0.9, 0.5, 0.2, 0.1], [0.9, 0.2, 0.1, 0.05], [0.8, 0.6, 0.4, 0.3]], higher=False)
    assert _training_equivalent(errors, [0, 1, 2], 0.25, higher=False) == 200.0  # runs at 200, 100, never
    assert _training_equivalent(errors, [0, 1, 2], 0.01, higher=False) is None  # no run got that low
    returns = _runs(tmp_path / "r", [[10, 50, 200], [10, 300, 500], [20, 30, 40]], higher=True)
    assert _training_equivalent(returns, [0, 1, 2], 150.0, higher=True) == 200.0  # runs at 200, 100, never


def test_a_sweep_logs_its_headline_numbers_and_keeps_its_report_when_wandb_fails(tmp_path, monkeypatch, capsys):
    from rl_gpt.config import ConfigError, load_config
    from rl_gpt.sweep.wandb_log import log_sweep as _log_wandb
    from rl_gpt.sweep.wandb_log import sweep_summary

    report = {
        "metric": {"name": "test_loss"},
        "prompt_alignment_r2": 0.98,
        "prompt_alignment_r2_ci95": [0.97, 0.99],
        "failed_fraction": 0.0,
        "one_step": {"mean_return": 0.29, "solved_fraction": None},
        "baselines": {"retrieval": {"prompt_alignment_r2": 1.0}, "identity": {"prompt_alignment_r2": -2.2}},
        "novelty": {"generator": 1.2, "retrieval": 0.0, "nn_dist_heldout": 3.0},
        "behavioural_novelty": {"generator": {"fraction": 0.07}, "identity": {"fraction": 0.8}},
        "init_fidelity": {"generator": 0.96, "real_training": None},
        "recursive": {"mean_return": [2.3, 0.29, float("nan")]},
    }
    logged = sweep_summary(report)
    assert logged["prompt_alignment_r2_ci95_low"] == 0.97 and logged["retrieval/prompt_alignment_r2"] == 1.0
    assert logged["novelty/generator"] == 1.2 and logged["behavioural_novelty/generator"] == 0.07
    assert logged["init_fidelity/generator"] == 0.96 and "init_fidelity/real_training" not in logged  # no None
    assert logged["recursive/step_1"] == 0.29 and "recursive/step_2" not in logged  # no NaN
    assert all(isinstance(v, float) for v in logged.values())

    def unreachable(*args, **kwargs):
        raise ConfigError("W&B: Failed to get resume status")

    monkeypatch.setattr("rl_gpt.wandb_run.start_run", unreachable)
    report |= {"config": {}, "model": str(tmp_path / "model"), "model_step": 10, "model_save_id": "x"}
    _log_wandb(load_config("digits"), report, tmp_path, {}, tmp_path)  # said, not raised: the report is saved
    assert "W&B logging failed (W&B: Failed to get resume status); the sweep is saved in" in capsys.readouterr().err

    class Broken:  # a run that opens, then fails to log (the server gone mid-way)
        finished: list[int] = []

        def log(self, data):
            raise OSError("connection reset")

        def finish(self, exit_code: int = 0) -> None:  # closed at once, not at the interpreter's exit
            self.finished.append(exit_code)

    from PIL import Image

    import rl_gpt.wandb_run

    Image.new("RGB", (4, 4)).save(tmp_path / "sweep.png")  # the sweep's plot, which the run logs
    asked = {}

    def opened(*args, **kwargs):
        asked.update(kwargs)
        rl_gpt.wandb_run._started.append(Broken())
        return rl_gpt.wandb_run._started[-1]

    monkeypatch.setattr("rl_gpt.wandb_run.start_run", opened)
    _log_wandb(load_config("digits"), report, tmp_path, {}, tmp_path)
    assert "W&B logging failed (connection reset)" in capsys.readouterr().err
    assert Broken.finished == [1] and rl_gpt.wandb_run._started == []
    assert asked["experiment"] == tmp_path.name  # the model's experiment, not a saved config's `out`


@pytest.mark.parametrize(("higher", "worst"), [(True, 100.0), (False, 500.0)])
def test_the_worst_prompt_is_the_grids_low_return_or_high_loss(higher: bool, worst: float) -> None:
    """Recursive prompting scores a failed network as the worst prompt: a return's lowest, a loss's highest."""
    from rl_gpt.evaluate.alignment import worst_prompt

    assert worst_prompt(torch.tensor([300.0, 100.0, 500.0]), higher) == worst


def test_the_r2_interval_is_students_t_with_k_minus_1_degrees_of_freedom() -> None:
    from rl_gpt.evaluate.alignment import mean_ci95

    # mean 2, std 1, k = 3: t(0.975, 2) = 4.302653 (tables), so the half-width is 4.302653 / sqrt(3)
    low, high = mean_ci95(torch.tensor([1.0, 2.0, 3.0, math.nan]))  # the NaN is left out
    assert (low, high) == pytest.approx((2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5), abs=1e-5)
    assert all(math.isnan(v) for v in mean_ci95(torch.tensor([1.0])))  # one value has no spread


@pytest.mark.parametrize("higher", [True, False])
def test_a_network_exactly_at_the_threshold_is_solved(higher: bool) -> None:
    """ "Solved" is at or past the threshold (CartPole-v1: 475, reached exactly by many checkpoints)."""
    prompts = torch.tensor([100.0, 475.0]) if higher else torch.tensor([0.1, 0.9])
    best = 1 if higher else 0
    threshold = float(prompts[best])
    achieved = prompts.repeat(2, 1)[..., None].clone()  # (K, P, S): on target, i.e. exactly at the threshold
    assert _summary(prompts, achieved, best, threshold, higher)["one_step"]["solved_fraction"] == 1.0


def test_a_failure_in_the_better_half_is_scored_there_as_everywhere() -> None:
    prompts = torch.tensor([100.0, 200.0, 300.0, 400.0])  # the better half: 300, 400
    achieved = prompts.repeat(2, 1)[..., None].clone()
    achieved[1, 2, 0] = math.nan  # scored at 100, the far end from 300
    summary = _summary(prompts, achieved, best=3, threshold=None, higher=True)
    expected = achieved.nan_to_num(nan=100.0)
    assert summary["prompt_alignment_r2_better_half"] == pytest.approx(
        float(alignment_r2(prompts[2:], expected[:, 2:]).mean())
    )
    assert math.isfinite(summary["prompt_alignment_r2_better_half"])


def test_a_better_half_of_one_prompt_has_no_r2() -> None:
    """R² over a single prompt divides by a zero spread: undefined, not a large negative number."""
    prompts = torch.tensor([0.2, 1.0])
    summary = _summary(prompts, prompts.repeat(3, 1)[..., None], best=0, threshold=None, higher=False)
    assert summary["better_half_prompts"] == 1 and math.isnan(summary["prompt_alignment_r2_better_half"])


def test_training_equivalent_counts_reaching_the_value_exactly_and_takes_the_upper_median(tmp_path) -> None:
    returns = _runs(tmp_path, [[10, 150, 200], [10, 20, 150], [150, 160, 170], [10, 20, 30]], higher=True)
    # first reached exactly 150 at steps 100, 200, 0, never: the upper median of four is the third, 200
    assert _training_equivalent(returns, [0, 1, 2, 3], 150.0, higher=True) == 200.0
    # half of the runs never got there: the upper median is "never"
    assert _training_equivalent(returns, [2, 3], 150.0, higher=True) is None


def test_the_training_curve_is_the_mean_per_checkpoint_over_runs(tmp_path) -> None:
    from rl_gpt.sweep.summary import training_curve

    ds = _runs(tmp_path, [[10, 50, 200, 300], [30, 70, 100]], higher=True)
    curve = training_curve(ds, [0, 1], ds.run_slices())
    assert curve == {"step": [0.0, 100.0, 200.0], "mean_return": [20.0, 60.0, 150.0]}  # the shorter run's length


def test_classifier_references_are_the_datasets_lowest_and_the_held_out_runs_last_usable(tmp_path, monkeypatch) -> None:
    import rl_gpt.sweep.summary as summary

    layout = Layout.build({"l.weight": (3, 2), "l.bias": (3,)}, [LayerSpec("l", None, None)])
    meta = {"task": {"name": "toy"}, "metric": {"name": "test_loss", "higher_is_better": False}}
    w = DatasetWriter(tmp_path / "ds", meta | {"layout": layout.to_dict()})
    losses = [[2.3, 0.5, 0.3], [2.3, 0.4, math.nan], [2.2, 0.2, 0.6]]  # run 1 diverged at its last checkpoint
    for run, curve in enumerate(losses):
        loss = torch.tensor(curve)
        w.add_run(
            run,
            {
                "params": torch.zeros(3, layout.numel),
                "metric": loss,
                "step": torch.arange(3) * 100,
                "test_loss": loss,
                "test_error": loss / 10,
            },
            {},
        )
    w.consolidate()
    ds = CheckpointDataset(tmp_path / "ds")
    measured = {"test_loss": torch.tensor([0.3, math.nan]), "test_error": torch.tensor([0.1, math.nan])}
    monkeypatch.setattr(summary, "supervised_metric", lambda spec, params: measured)
    got = summary.classifier_metrics(ds, torch.zeros(2, layout.numel), heldout_runs=[0, 1])
    assert got["dataset_best"] == pytest.approx({"test_loss": 0.2, "test_error": 0.02})  # the lowest of every run
    # the held-out runs end at 0.3 and (before diverging) 0.4: their median is the middle two's mean
    assert got["heldout_final"] == pytest.approx({"test_loss": 0.35, "test_error": 0.035})
    assert got["heldout_runs"] == {"test_loss": 2, "test_error": 2}
    assert got["test_loss"] == pytest.approx(0.3) and got["failed_fraction"] == 0.5


def test_compare_reads_the_better_half_of_a_lower_is_better_report_as_the_sweep_does() -> None:
    from rl_gpt.sweep.compare import _better_half_per_init

    prompts = torch.linspace(0.2, 2.2, 6)  # losses: the better half is the lowest three
    achieved = prompts.clone().repeat(4, 1)[..., None]
    achieved[:, :3] = 0.6  # stalls at the best prompts
    achieved[1, 4, 0] = 1.5  # and a miss in the worse half, which the better half must not see
    summary = _summary(prompts, achieved, best=0, threshold=None, higher=False)
    report = {"prompts": prompts.tolist(), "achieved": achieved.tolist(), "metric": {"higher_is_better": False}}
    per_init = _better_half_per_init(report)
    assert per_init.tolist() == pytest.approx(alignment_r2(prompts[:3], achieved[:, :3]).tolist())
    assert float(per_init.mean()) == pytest.approx(summary["prompt_alignment_r2_better_half"])
