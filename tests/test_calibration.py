"""Prompt calibration: fitting the achieved-versus-prompted curve and inverting it."""

from __future__ import annotations

import json

import pytest
import torch

from rl_gpt.config import ConfigError
from rl_gpt.train.calibration import PromptCalibration, fit_calibration, load_calibration
from rl_gpt.train.modelfile import ModelFileError
from rl_gpt.train.probe import prompt_range

SAMPLER = {"guidance": 2.0, "steps": 20, "average": 1}


def _linear_bias() -> PromptCalibration:
    prompts = torch.linspace(0, 1, 11)
    achieved = (0.2 + 0.6 * prompts)[None, :, None].expand(3, 11, 2)  # every init undershoots the ends
    return fit_calibration(prompts, achieved, SAMPLER)


def test_a_linear_bias_is_inverted_exactly() -> None:
    cal = _linear_bias()
    desired = torch.tensor([0.2, 0.5, 0.65, 0.8])
    torch.testing.assert_close(cal.conditioning(desired), torch.tensor([0.0, 0.5, 0.75, 1.0]))


def test_desired_values_beyond_the_achievable_map_to_the_prompt_that_came_closest() -> None:
    cal = _linear_bias()
    out = cal.conditioning(torch.tensor([-1.0, 0.1, 0.95, 3.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_a_flattened_end_keeps_the_extreme_prompt_extreme() -> None:
    # CartPole-like: prompt 450 achieved 480, prompt 500 only 470; the fit pools both at 475
    prompts = torch.tensor([0.0, 250.0, 450.0, 500.0])
    cal = fit_calibration(prompts, torch.tensor([[[10.0], [240.0], [480.0], [470.0]]]), SAMPLER)
    assert cal.fitted[-2:] == [475.0, 475.0]
    torch.testing.assert_close(cal.conditioning(torch.tensor([500.0, 475.0, 5.0])), torch.tensor([500.0, 500.0, 0.0]))


def test_a_noisy_curve_is_fitted_monotone_and_its_inverse_is_monotone() -> None:
    g = torch.Generator().manual_seed(0)
    prompts = torch.linspace(0, 500, 20)
    achieved = prompts[None, :, None] * 0.9 + 40 * torch.randn(2, 20, 1, generator=g)
    cal = fit_calibration(prompts, achieved, SAMPLER)
    fitted = torch.tensor(cal.fitted)
    assert (fitted[1:] >= fitted[:-1]).all()
    assert torch.tensor(cal.achieved).diff().min() < 0  # the raw means were not monotone
    out = cal.conditioning(torch.linspace(0, 500, 50))
    assert (out[1:] >= out[:-1]).all() and out.min() >= 0 and out.max() <= 500


def test_failed_samples_are_left_out_and_a_prompt_without_any_is_dropped() -> None:
    prompts = torch.tensor([0.0, 1.0, 2.0, 3.0])
    achieved = torch.tensor([[[0.0, float("nan")], [1.0, 1.0], [float("nan"), float("nan")], [3.0, 3.0]]])
    cal = fit_calibration(prompts, achieved, SAMPLER)
    assert cal.prompts == [0.0, 1.0, 3.0] and cal.achieved == [0.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="two prompts"):
        fit_calibration(prompts, torch.full((1, 4, 1), float("nan")), SAMPLER)


def test_a_generator_that_ignores_its_prompt_is_left_as_given() -> None:
    cal = fit_calibration(torch.linspace(0, 1, 5), torch.full((2, 5, 1), 0.3), SAMPLER)
    desired = torch.tensor([0.1, 0.9])
    torch.testing.assert_close(cal.conditioning(desired), desired)


def test_a_staircase_of_noise_is_not_inverted() -> None:
    """A generator that ignores its prompt still gives an isotonic fit with steps; inverting them would
    move every prompt at random (the statistics review's tiny digits run: prompts -> 0.375 / 2.334)."""
    prompts = torch.linspace(0, 1, 20)
    g = torch.Generator().manual_seed(1)
    noise = 2.31 + 0.01 * torch.randn(8, 20, 1, generator=g)  # no trend, only noise
    cal = fit_calibration(prompts, noise, SAMPLER)
    assert len(set(cal.fitted)) == 1 and cal.meta["spearman_p"] >= 0.01
    torch.testing.assert_close(cal.conditioning(torch.tensor([0.1, 0.9])), torch.tensor([0.1, 0.9]))
    rising = prompts[None, :, None] * 0.5 + noise
    cal = fit_calibration(prompts, rising, SAMPLER)
    assert len(set(cal.fitted)) > 10 and cal.meta["spearman_rho"] > 0.9 and cal.meta["spearman_p"] < 1e-6
    few = fit_calibration(prompts[:3], rising[:2, :3], SAMPLER)  # too few samples to test: applied, untested
    assert few.meta["spearman_rho"] is None and few.meta["spearman_p"] is None and len(set(few.fitted)) == 3
    constant_grid = fit_calibration(torch.full((20,), 0.5), rising, SAMPLER)  # both ends clamped alike: p is NaN
    assert len(set(constant_grid.fitted)) == 1


def test_it_holds_only_for_the_sampler_it_was_measured_with() -> None:
    cal = _linear_bias()
    assert cal.matches(2.0, 20, 1)
    assert not cal.matches(1.0, 20, 1) and not cal.matches(2.0, 10, 1) and not cal.matches(2.0, 20, 8)


def test_it_holds_for_the_same_weights_saved_again_and_for_older_files(tmp_path) -> None:
    import hashlib

    from rl_gpt.io import atomic_save_pair
    from rl_gpt.train.calibration import model_fingerprint

    weights = {"w": torch.arange(6.0).reshape(2, 3), "scale": torch.tensor(2.0)}
    atomic_save_pair(weights, tmp_path / "model.safetensors", tmp_path / "model.json", {})
    first, first_bytes = model_fingerprint(tmp_path), (tmp_path / "model.safetensors").read_bytes()
    atomic_save_pair(weights, tmp_path / "model.safetensors", tmp_path / "model.json", {})  # a new save id
    assert (tmp_path / "model.safetensors").read_bytes() != first_bytes and model_fingerprint(tmp_path) == first
    cal = _linear_bias()
    cal.model_sha256 = first
    assert cal.measured_for(tmp_path)
    cal.model_sha256 = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()  # older files
    assert cal.measured_for(tmp_path)
    atomic_save_pair(weights | {"w": weights["w"] + 1}, tmp_path / "model.safetensors", tmp_path / "model.json", {})
    assert model_fingerprint(tmp_path) != first and not cal.measured_for(tmp_path)


def test_a_calibrated_prompt_stays_inside_the_training_datas_range(tmp_path) -> None:
    from rl_gpt.io import atomic_save_pair
    from rl_gpt.train.calibration import conditioning_prompts, model_fingerprint

    atomic_save_pair({"w": torch.ones(3)}, tmp_path / "model.safetensors", tmp_path / "model.json", {})
    # measured over a metric_range wider than the data's [0, 450]: every prompt achieved half of itself
    prompts = torch.linspace(0, 500, 11)
    cal = fit_calibration(prompts, (0.5 * prompts)[None, :, None], SAMPLER)
    cal.model_sha256 = model_fingerprint(tmp_path)
    cal.save(tmp_path)
    desired = torch.tensor([100.0, 240.0])
    cond, used = conditioning_prompts(tmp_path, desired, 2.0, 20, 1, bounds=(0.0, 450.0))
    assert used is not None
    torch.testing.assert_close(cond, torch.tensor([200.0, 450.0]))  # 480 is past what the data holds
    cond, used = conditioning_prompts(tmp_path, desired, 2.0, 20, 1)
    torch.testing.assert_close(cond, torch.tensor([200.0, 480.0]))


def test_the_file_round_trips_and_a_malformed_one_is_a_one_line_error(tmp_path) -> None:
    assert load_calibration(tmp_path) is None
    cal = _linear_bias()
    cal.save(tmp_path)
    assert load_calibration(tmp_path) == cal
    good = json.loads((tmp_path / "calibration.json").read_text())
    for bad in (
        {"prompts": [1, 2]},  # fields missing
        good | {"sampler": {}},
        good | {"prompts": "ab"},
        good | {"fitted": good["fitted"][:-1]},
        good | {"fitted": good["fitted"][::-1]},  # decreasing: not a fit this code wrote
        good | {"fitted": [None, *good["fitted"][1:]]},
        good | {"model_sha256": 5},
    ):
        (tmp_path / "calibration.json").write_text(json.dumps(bad))
        with pytest.raises(ModelFileError, match="rl-gpt calibrate") as err:
            load_calibration(tmp_path)
        assert "\n" not in str(err.value)


def test_a_prompt_range_far_past_the_datas_worst_end_is_refused() -> None:
    # The mnist preset's loss range kept after task.metric=test_error: errors lie in [0.065, 0.99].
    spec = {"task": {"metric_range": [0.22, 2.35]}, "metric": {"name": "test_error", "higher_is_better": False}}
    expected = r"\[0.22, 2.35\] reaches far above the worst test_error .* \(0.99; the data span \[0.065, 0.99\]\); "
    expected += r"set task.metric_range=\[0.065, 0.99\]"
    with pytest.raises(ConfigError, match=expected):
        prompt_range(spec, 0.065, 0.99)
    assert prompt_range(spec, 0.2, 2.4) == (0.22, 2.35)
    assert prompt_range({"task": {}}, 0.2, 2.4) == (0.2, 2.4)  # no range set: the data's
    assert prompt_range(spec, 0.2, 2.4, "data") == (0.2, 2.4)  # asked for over the spec's range
    assert prompt_range(spec, 0.065, 0.99, [0.05, 1.2]) == (0.05, 1.2)  # a little past the data: allowed
    # Returns: the environment's whole range is allowed, e.g. CartPole's [0, 500] on a short
    # collection whose returns lie in [20, 40].
    cartpole = {"task": {"metric_range": [0, 500]}, "metric": {"name": "return", "higher_is_better": True}}
    assert prompt_range(cartpole, 20.0, 40.0) == (0.0, 500.0)


def test_a_prompt_range_that_misses_the_data_altogether_is_refused() -> None:
    # The pendulum preset's range kept after task.env_id=Hopper-v5: every prompt would clamp to one end.
    spec = {"task": {"metric_range": [-1500, -190]}, "metric": {"name": "return", "higher_is_better": True}}
    expected = r"\[-1500, -190\] lies wholly outside the training data's return \[5.46, 199\] .*"
    with pytest.raises(ConfigError, match=expected + "set task.metric_range=data"):
        prompt_range(spec, 5.46, 199.0)
    with pytest.raises(ConfigError, match="lies wholly outside"):
        prompt_range(spec, -3000.0, -2000.0)  # below the range as well as above it
    assert prompt_range(spec, 5.46, 199.0, "data") == (5.46, 199.0)
    assert prompt_range(spec, -200.0, 199.0) == (-1500.0, -190.0)  # a touch of overlap is a range for this task
    assert prompt_range(spec, 5.46, 199.0, clamped=False) == (-1500.0, -190.0)  # extrapolation, asked for


def test_the_datas_range_can_be_asked_for_by_name() -> None:
    from rl_gpt.config import load_config

    assert load_config("cartpole", ["task.metric_range=data"]).task.metric_range == "data"
    with pytest.raises(ConfigError, match="or `data` for the range the training data spans"):
        load_config("cartpole", ["task.metric_range=[500, 0]"])
    with pytest.raises(ConfigError, match=r"task.metric_range: 'date' does not fit list\[float\] \| 'data' \| null"):
        load_config("cartpole", ["task.metric_range=date"])
