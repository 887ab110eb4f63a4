"""The ranker: a metric predictor from behaviour that keeps the candidate nearest a target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl_gpt.evaluate.policy import PolicySpec
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.train.function_loss import FunctionProbe
from rl_gpt.train.modelfile import ModelFileError
from rl_gpt.train.ranker import RANKER_FILE, MetricRanker, load_ranker

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUT = Layout.build(
    {
        "mlp_extractor.policy_net.0.weight": (8, 4),
        "mlp_extractor.policy_net.0.bias": (8,),
        "action_net.weight": (2, 8),
        "action_net.bias": (2,),
    },
    [LayerSpec("mlp_extractor.policy_net.0", None, "h0", "tanh"), LayerSpec("action_net", "h0", None)],
)
SPEC = PolicySpec(algo="ppo", head="categorical", activation="tanh", obs_dim=4, action_dim=1, n_actions=2)


def _ranker(seed: int = 0) -> MetricRanker:
    torch.manual_seed(seed)
    probe = FunctionProbe(LAYOUT, torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), "policy", spec=SPEC)
    return MetricRanker(probe, low=0.0, high=500.0, hidden=32).eval()


def _params(b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, LAYOUT.numel, generator=torch.Generator().manual_seed(seed))


def test_a_permuted_network_gets_the_same_prediction() -> None:
    ranker, params = _ranker(), _params(5, 2)
    perms = LAYOUT.random_permutations(5, torch.Generator().manual_seed(3))
    permuted = params.gather(1, LAYOUT.permutation_index(perms, 5))
    assert not torch.equal(permuted, params)
    # equal up to float rounding: the hidden units are summed in another order
    torch.testing.assert_close(ranker.predict(permuted), ranker.predict(params), rtol=1e-6, atol=1e-4)
    assert ranker.predict(params).std() > 0  # and different networks get different predictions


def test_choose_keeps_the_candidate_predicted_nearest_each_target() -> None:
    ranker = _ranker()
    with torch.no_grad():
        ranker.net[-1].bias.add_(0.5)  # predictions inside the training range
    candidates = _params(3 * 4, 4).reshape(3, 4, -1)
    predicted = ranker.predict(candidates.reshape(12, -1)).reshape(3, 4)
    targets = predicted[:, 2] + 1e-6  # each row's third candidate is nearest
    chosen, chosen_pred = ranker.choose(candidates, targets)
    torch.testing.assert_close(chosen, candidates[:, 2])
    torch.testing.assert_close(chosen_pred, predicted[:, 2])


def test_a_non_finite_candidate_is_chosen_only_when_all_are() -> None:
    ranker = _ranker()
    candidates = _params(2 * 3, 5).reshape(2, 3, -1)
    predicted = ranker.predict(candidates.reshape(6, -1)).reshape(2, 3)
    candidates[0, 1, 0] = float("nan")  # row 0: the candidate nearest the target is broken
    candidates[1, :, 0] = float("inf")  # row 1: all are
    chosen, chosen_pred = ranker.choose(candidates, predicted[:, 1])
    assert torch.isfinite(chosen[0]).all() and torch.isfinite(chosen_pred[0])
    assert not torch.isfinite(chosen[1]).all() and chosen_pred[1].isnan()


def test_the_reported_prediction_stays_within_the_training_range() -> None:
    ranker = _ranker()
    with torch.no_grad():
        ranker.net[-1].bias.fill_(-3.0)  # a regression that overshoots below the lowest training metric
    candidates = _params(2 * 3, 7).reshape(2, 3, -1)
    assert (ranker.predict(candidates.reshape(6, -1)) < 0).all()
    _, chosen_pred = ranker.choose(candidates, torch.tensor([0.0, 250.0]))
    assert (chosen_pred < 0).all()  # raw: what the ranker's error is measured on
    assert torch.equal(ranker.within_range(chosen_pred), torch.zeros(2, dtype=chosen_pred.dtype))  # as shown


def test_save_and_load_reproduce_the_predictions(tmp_path) -> None:
    ranker = _ranker()
    ranker.fit_info = {"train_runs": [0, 2], "rows": 7}
    ranker.save(tmp_path)
    loaded = load_ranker(tmp_path, LAYOUT)
    assert loaded is not None and loaded.fit_info == ranker.fit_info
    params = _params(6, 6)
    torch.testing.assert_close(loaded.predict(params), ranker.predict(params), rtol=1e-6, atol=1e-4)
    assert load_ranker(tmp_path / "elsewhere", LAYOUT) is None  # no ranker: None, not an error
    meta = json.loads((tmp_path / "ranker.json").read_text())
    (tmp_path / "ranker.json").write_text(json.dumps(meta | {"hidden": 100_000}))  # 10^10 weights if built
    with pytest.raises(ModelFileError, match=r"hidden 100000 is not the weights' \d+\); delete"):
        load_ranker(tmp_path, LAYOUT)
    (tmp_path / RANKER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="delete"):
        load_ranker(tmp_path, LAYOUT)


def test_a_ranker_whose_two_files_come_from_different_saves_is_fitted_again(tmp_path) -> None:
    _ranker(0).save(tmp_path)
    old_meta = (tmp_path / "ranker.json").read_text()
    _ranker(1).save(tmp_path)
    (tmp_path / "ranker.json").write_text(old_meta)  # a kill between the two renames of the second save
    with pytest.warns(UserWarning, match="different saves"):
        assert load_ranker(tmp_path, LAYOUT) is None


def test_a_ranker_that_cannot_be_kept_is_still_used(monkeypatch, tmp_path):
    """A read-only model folder and no writable cache: the fitted ranker ranks this command's candidates."""
    import rl_gpt.train.ranker as ranker_module

    class Fitted:
        fit_info = {"rmse_train": 1.0, "rmse_heldout_runs": None, "seconds": 0.0}

        def save(self, model_dir):
            raise OSError(30, "Read-only file system")

    monkeypatch.setattr(ranker_module, "load_ranker", lambda model_dir, layout: None)
    monkeypatch.setattr(ranker_module, "fit_ranker", lambda ds, train_runs, test_runs: Fitted())
    monkeypatch.setattr(ranker_module, "data_fingerprint", lambda ds, train_runs: "f" * 64)
    said = []
    got = ranker_module.ranker_for(tmp_path, None, None, [0], [], said.append)
    assert isinstance(got, Fitted) and "not kept (Read-only file system" in said[-1]


def test_a_read_only_model_keeps_its_ranker_in_the_users_cache(monkeypatch, tmp_path):
    """Fitted once per user, not once per command (63 s on digits each time, a wheel user measured)."""
    import rl_gpt.train.ranker as ranker_module

    fitted = []

    def fit(ds, train_runs, test_runs):
        fitted.append(1)
        ranker = _ranker(0)
        ranker.fit_info = {"train_runs": list(train_runs), "data_sha256": "a" * 64}
        ranker.fit_info |= {"rmse_train": 1.0, "rmse_heldout_runs": None, "seconds": 0.0}
        return ranker

    model = tmp_path / "model"
    model.mkdir()
    real_save = ranker_module.MetricRanker.save

    def save(self, folder):  # the model folder refuses writes, as on read-only storage
        if Path(folder) == model:
            raise OSError(30, "Read-only file system")
        return real_save(self, folder)

    monkeypatch.setattr(ranker_module.MetricRanker, "save", save)
    monkeypatch.setattr(ranker_module, "fit_ranker", fit)
    monkeypatch.setattr(ranker_module, "data_fingerprint", lambda ds, train_runs: "a" * 64)
    said = []
    first = ranker_module.ranker_for(model, None, LAYOUT, [0, 1], [], said.append)
    cache = ranker_module.ranker_cache_dir("a" * 64)
    assert f"kept in {cache}" in said[-1] and (cache / "ranker.safetensors").is_file()
    again = ranker_module.ranker_for(model, None, LAYOUT, [0, 1], [], said.append)
    assert len(fitted) == 1 and torch.equal(again.probe.inputs, first.probe.inputs)
    assert cache.stat().st_mode & 0o777 == 0o700
    ranker_module.ranker_for(model, None, LAYOUT, [0, 2], [], said.append)  # other training runs: fitted anew
    assert len(fitted) == 2
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG specification says
    assert ranker_module.ranker_cache_dir("a" * 64) == Path.home() / ".cache" / "rl_gpt" / "rankers" / ("a" * 32)
