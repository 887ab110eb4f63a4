"""`rl-gpt compare`: paired differences between sweep reports over the same inits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rl_gpt.cli import main
from rl_gpt.evaluate.alignment import alignment_r2
from rl_gpt.sweep.compare import ReportError, bias_share, compare_reports

PROMPTS = torch.linspace(100.0, 500.0, 5)


def _write(path: Path, achieved: torch.Tensor, init_seed: int = 1000, higher: bool = True) -> Path:
    """A minimal report.json, with R² per init computed as the sweep computes it."""
    path.mkdir(parents=True)
    report = {
        "task": "cartpole",
        "metric": {"name": "return", "higher_is_better": higher},
        "config": {"inits": achieved.shape[0], "init_seed": init_seed},
        "prompts": PROMPTS.tolist(),
        "achieved": achieved.tolist(),
        "r2_per_init": alignment_r2(PROMPTS, torch.nan_to_num(achieved, nan=float(PROMPTS.min()))).tolist(),
    }
    (path / "report.json").write_text(json.dumps(report))
    return path


def _noisy(k: int, scale: float, seed: int, bias: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return PROMPTS.view(1, -1, 1) + bias + scale * torch.randn(k, len(PROMPTS), 2, generator=g)


def test_a_better_sweep_on_the_same_inits_is_significant_and_a_copy_is_not(tmp_path: Path) -> None:
    noise = _noisy(32, 60.0, 0)
    base = _write(tmp_path / "base", noise)
    better = _write(tmp_path / "better", PROMPTS.view(1, -1, 1) + 0.5 * (noise - PROMPTS.view(1, -1, 1)))
    same = _write(tmp_path / "same", noise)
    rows = compare_reports([base, better, same])
    assert rows[0].r2_delta is None
    assert rows[1].r2_delta > 0 and rows[1].r2_delta_ci95[0] > 0  # every init improves
    assert rows[1].r2 == pytest.approx(rows[0].r2 + rows[1].r2_delta)
    assert rows[2].r2_delta == 0 and rows[2].r2_delta_ci95 == (0.0, 0.0)
    best = noise[:, -1].mean(-1)  # one-step: the highest prompt for a return
    assert rows[0].one_step == pytest.approx(float(best.mean()))


def test_reports_measured_with_other_settings_say_so_beside_the_deltas(tmp_path: Path) -> None:
    from rl_gpt.sweep.compare import format_comparison

    noise = _noisy(16, 60.0, 0)
    plain, ranked = _write(tmp_path / "plain", noise), _write(tmp_path / "ranked", noise)
    report = json.loads((ranked / "report.json").read_text())
    report["rerank"] = {"candidates": 4}
    report["calibration"] = {"applied": True}
    (ranked / "report.json").write_text(json.dumps(report))
    table = format_comparison(compare_reports([plain, ranked]))
    assert "measured differently" in table
    assert "calibrated False, rerank 1" in table and "calibrated True, rerank 4" in table  # 1: no ranking
    assert "average" not in table  # settings they share are not listed
    assert "measured differently" not in format_comparison(compare_reports([plain, plain]))


def test_the_same_model_swept_before_and_after_more_training_is_named_another_models_not(tmp_path: Path) -> None:
    from rl_gpt.sweep.compare import format_comparison

    noise = _noisy(16, 60.0, 0)
    saves = {"early": ("/x/exp/model", 300, "a" * 32), "late": ("/x/exp/model", 500, "b" * 32)}
    saves["other"] = ("/x/variant/model", 500, "c" * 32)
    for name, (model, step, save_id) in saves.items():
        path = _write(tmp_path / name, noise)
        report = json.loads((path / "report.json").read_text())
        report |= {"model": model, "model_step": step, "model_save_id": save_id}
        (path / "report.json").write_text(json.dumps(report))
    table = format_comparison(compare_reports([tmp_path / "early", tmp_path / "late"]))
    assert "model weights step 300 (save aaaaaaaa)" in table and "model weights step 500 (save bbbbbbbb)" in table
    assert "measured differently" not in format_comparison(compare_reports([tmp_path / "late", tmp_path / "other"]))
    three = format_comparison(compare_reports([tmp_path / "early", tmp_path / "late", tmp_path / "other"]))
    assert "model weights step 300 (save aaaaaaaa)" in three  # one folder's two saves, among other models
    old = _write(tmp_path / "old", noise)  # written before reports recorded the save: nothing known differs
    assert "measured differently" not in format_comparison(compare_reports([old, tmp_path / "late"]))


def test_bias_share_separates_a_shared_offset_from_spread(tmp_path: Path) -> None:
    offset = _write(tmp_path / "offset", PROMPTS.view(1, -1, 1).expand(8, -1, 2) - 40.0)
    assert bias_share(json.loads((offset / "report.json").read_text())) == pytest.approx(1.0)
    spread = torch.cat([_noisy(4, 0.0, 0, bias=30.0), _noisy(4, 0.0, 0, bias=-30.0)])  # means exact
    spread_dir = _write(tmp_path / "spread", spread)
    assert bias_share(json.loads((spread_dir / "report.json").read_text())) == pytest.approx(0.0)


def test_failed_samples_count_as_the_worst_prompt(tmp_path: Path) -> None:
    exact = PROMPTS.view(1, -1, 1).expand(4, -1, 2).clone()
    broken = exact.clone()
    broken[0, -1, 0] = float("nan")  # one sample at the best prompt (500) failed
    rows = compare_reports([_write(tmp_path / "exact", exact), _write(tmp_path / "nan", broken)])
    assert rows[1].r2 < 1.0 and rows[1].bias_share > 0
    # the failed sample counts as the worst prompt (100): init 0's one-step mean is (100 + 500) / 2
    assert rows[1].one_step == pytest.approx((300 + 3 * 500) / 4)
    assert rows[1].one_step_delta == pytest.approx(-50.0)
    assert all(math.isfinite(c) for c in rows[1].one_step_delta_ci95)


def test_a_lower_is_better_sweep_pairs_its_lowest_prompt_and_counts_failures_as_the_highest(tmp_path: Path) -> None:
    # test error prompted from 100 to 500 (as if in thousandths): the one-step prompt is the lowest
    exact = PROMPTS.view(1, -1, 1).expand(4, -1, 2).clone()
    broken = exact.clone()
    broken[0, 0, 0] = float("nan")  # one sample at the best prompt (100) failed: it counts as 500
    rows = compare_reports([_write(tmp_path / "a", exact, higher=False), _write(tmp_path / "b", broken, higher=False)])
    assert rows[0].one_step == pytest.approx(100.0) and not rows[0].higher_is_better
    assert rows[1].one_step == pytest.approx((300 + 3 * 100) / 4)
    assert rows[1].one_step_delta == pytest.approx(50.0)  # worse, for an error


def test_the_plot_given_instead_of_its_report_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "sweep.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # the plot beside the report, given by mistake
    assert main(["compare", str(tmp_path / "sweep.png")]) == 2
    assert "not a sweep report (not text); give a report.json" in capsys.readouterr().err


def test_reports_on_other_inits_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _noisy(8, 10.0, 0))
    b = _write(tmp_path / "b", _noisy(8, 10.0, 1), init_seed=2000)
    in_order = r"a/report.json has sweep.init_seed 1000, .*b/report.json has 2000.*same sweep.init_seed"
    with pytest.raises(ReportError, match=in_order):
        compare_reports([a, b])
    c = _write(tmp_path / "c", _noisy(8, 10.0, 0), higher=False)
    with pytest.raises(ReportError, match="direction"):
        compare_reports([a, c])


def test_reports_over_other_prompt_values_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _noisy(8, 10.0, 0))
    b = _write(tmp_path / "b", _noisy(8, 10.0, 0))
    report = json.loads((b / "report.json").read_text())
    report["prompts"] = torch.linspace(0.0, 400.0, 5).tolist()  # as many prompts, another task.metric_range
    (b / "report.json").write_text(json.dumps(report))
    with pytest.raises(ReportError, match="prompt values.*task.metric_range"):
        compare_reports([a, b])


def test_alignment_r2_of_known_answers() -> None:
    prompts = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert alignment_r2(prompts, prompts[None]).tolist() == [1.0]
    ignored = torch.full((1, 4), 1.5)  # always the prompts' mean: no better than ignoring the prompt
    assert alignment_r2(prompts, ignored).tolist() == [0.0]
    achieved = torch.stack([prompts + 1.0, 2 * prompts])  # (K=2, P): off by one; twice the prompt
    torch.testing.assert_close(
        alignment_r2(prompts, achieved), torch.tensor([1 - 4 / 5, 1 - 14 / 5], dtype=torch.float64)
    )
    samples = torch.stack([prompts, prompts + 2.0], dim=-1)[None]  # (1, P, S=2): the samples pooled
    torch.testing.assert_close(alignment_r2(prompts, samples), torch.tensor([1 - 16 / 10], dtype=torch.float64))


def test_the_interval_covers_the_mean_95_percent_of_the_time_on_few_inits() -> None:
    """Sweeps have 16-64 inits: a percentile bootstrap covered ~89 % at 16; the t interval ~95 %."""
    from rl_gpt.evaluate.alignment import mean_ci95

    g = torch.Generator().manual_seed(0)
    covered = sum(low <= 0.0 <= high for low, high in (mean_ci95(torch.randn(16, generator=g)) for _ in range(2000)))
    assert 0.935 < covered / 2000 < 0.965
    values = torch.randn(400, generator=g)
    low, high = mean_ci95(values)
    assert (high - low) / 2 == pytest.approx(1.966 * float(values.std()) / 400**0.5, rel=1e-3)
    assert all(math.isnan(v) for v in mean_ci95(values[:1]))
    assert mean_ci95(torch.tensor([1.0, float("nan"), 3.0])) == mean_ci95(torch.tensor([1.0, 3.0]))  # failed: left out


def test_held_out_sweeps_of_other_datasets_are_not_paired_by_run_number(tmp_path: Path) -> None:
    reports = []
    for name, digest in (("x", "aa"), ("y", "bb"), ("z", "aa")):
        path = _write(tmp_path / name, _noisy(8, 10.0, 0))
        report = json.loads((path / "report.json").read_text())
        report["init_ids"], report["init_sha256"] = {"runs": [2, 5]}, digest  # the same run numbers
        report["config"]["init_source"] = "heldout"
        (path / "report.json").write_text(json.dumps(report))
        reports.append(path)
    with pytest.raises(ReportError, match="start from other init networks"):
        compare_reports(reports[:2])
    assert len(compare_reports([reports[0], reports[2]])) == 2  # the same networks: paired


def test_cli_prints_the_table_writes_json_and_rejects_bad_files(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path / "a", _noisy(8, 10.0, 0))
    b = _write(tmp_path / "b", _noisy(8, 20.0, 1))
    assert main(["compare", str(a), str(b / "report.json"), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert str(b) in out and "paired" in out
    rows = json.loads((tmp_path / "cmp.json").read_text())
    assert len(rows) == 2 and rows[1]["r2_delta"] < 0 and rows[0]["r2_delta"] is None
    assert rows[0]["metric"] == "return" and rows[0]["inits"] == 8 and rows[0]["prompts"] == 5
    assert "return (higher is better), 8 inits x 5 prompts" in out and "coarse" in out

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    assert main(["compare", str(tmp_path / "bad")]) == 2
    assert main(["compare", str(tmp_path / "missing")]) == 2
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "report.json").write_text(json.dumps({"prompts": [1, 2]}))
    assert main(["compare", str(tmp_path / "partial")]) == 2
    (tmp_path / "scalar").mkdir()
    (tmp_path / "scalar" / "report.json").write_text("null")
    assert main(["compare", str(tmp_path / "scalar")]) == 2
    shape = json.loads((a / "report.json").read_text())
    shape["metric"] = {}
    (tmp_path / "nometric").mkdir()
    (tmp_path / "nometric" / "report.json").write_text(json.dumps(shape))
    assert main(["compare", str(tmp_path / "nometric")]) == 2
    assert main(["compare", str(a), "--json", str(tmp_path)]) == 2  # a directory: refused before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("rl-gpt compare: error:") for line in err)


@pytest.mark.parametrize(
    ("field", "value"), [("baselines", "x"), ("rerank", [[1]]), ("prompts", 0), ("config.inits", float("-inf"))]
)
def test_fields_of_the_wrong_kind_are_one_error_line_for_info_and_compare(tmp_path: Path, capsys, field, value):
    """Found by mutating every field of a real report: info and compare raised 55 kinds of traceback."""
    good = _write(tmp_path / "good", _noisy(4, 10.0, 0))
    report = json.loads((good / "report.json").read_text())
    *parents, last = field.split(".")
    node = report
    for key in parents:
        node = node[key]
    node[last] = value
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps(report))
    for command in (["info", str(tmp_path / "bad")], ["compare", str(good), str(tmp_path / "bad")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rl-gpt {command[0]}: error:") and "\n" not in err and "sweep report" in err


def test_the_r2_interval_is_t_over_the_reports_inits_and_one_init_has_none(tmp_path: Path) -> None:
    from rl_gpt.evaluate.alignment import mean_ci95

    path = _write(tmp_path / "own", _noisy(8, 10.0, 0))
    report = json.loads((path / "report.json").read_text())
    report["prompt_alignment_r2_ci95"] = [0.125, 0.25]  # a sweep before session 32 recorded a bootstrap's
    (path / "report.json").write_text(json.dumps(report))
    # computed as the deltas beside it are, and as sweeps record it now
    assert compare_reports([path])[0].r2_ci95 == pytest.approx(mean_ci95(torch.tensor(report["r2_per_init"])))
    one, other = _write(tmp_path / "one", _noisy(1, 10.0, 0)), _write(tmp_path / "other", _noisy(1, 20.0, 1))
    rows = compare_reports([one, other])
    assert rows[0].r2_ci95 is None and rows[1].r2_delta_ci95 is None and rows[1].r2_delta is not None


def test_compare_pairs_r2_over_the_better_half_of_the_prompts(tmp_path: Path) -> None:
    """A change that only helps the best prompts (300-500 here) shows in the better half's delta."""
    base = _noisy(24, 40.0, 5)
    better = base.clone()
    better[:, 2:] = PROMPTS[2:].view(1, -1, 1) + 0.25 * (base[:, 2:] - PROMPTS[2:].view(1, -1, 1))
    rows = compare_reports([_write(tmp_path / "a", base), _write(tmp_path / "b", better)])
    half = alignment_r2(PROMPTS[2:], better[:, 2:]) - alignment_r2(PROMPTS[2:], base[:, 2:])
    assert rows[1].r2_better_half_delta == pytest.approx(float(half.mean()))
    assert rows[1].r2_better_half_delta_ci95[0] > 0  # paired: clearly better there
    assert rows[0].r2_better_half == pytest.approx(float(alignment_r2(PROMPTS[2:], base[:, 2:]).mean()))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
