"""The pair sampler: which checkpoints training sees as targets θ'."""

import pytest
import torch

from rl_gpt.dataset import CheckpointDataset, DatasetWriter
from rl_gpt.dataset.pairs import PairSampler, split_runs
from rl_gpt.layout import LayerSpec, Layout

LAYOUT = Layout.build({"l.weight": (3, 2), "l.bias": (3,)}, [LayerSpec("l", None, None)])
SPEC = {
    "task": {"name": "toy"},
    "metric": {"name": "test_error", "higher_is_better": False},
    "layout": LAYOUT.to_dict(),
    "policy": {"head": "classifier"},
}
# A classifier's test error along one run: a few checkpoints on the way down, then most of them
# crowd the best end.
ERRORS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.08, 0.06, 0.05, 0.04, 0.035, 0.03, 0.028, 0.025, 0.022]


def _dataset(tmp_path, runs: int = 4) -> CheckpointDataset:
    w = DatasetWriter(tmp_path / "ds", SPEC)
    n = len(ERRORS)
    for run in range(runs):
        rows = {
            "params": torch.randn(n, LAYOUT.numel),
            "metric": torch.tensor(ERRORS, dtype=torch.float32),
            "step": torch.arange(n) * 10,
            "valid": torch.ones(n, dtype=torch.bool),
        }
        w.add_run(run, rows, {"seed": run})
    w.consolidate()
    return CheckpointDataset(tmp_path / "ds")


def _targets(sampler: PairSampler, ds: CheckpointDataset) -> torch.Tensor:
    source, target = sampler.sample_positions(20_000)
    assert (sampler.run_pos[source] == sampler.run_pos[target]).all()  # θ and θ' come from one run
    return ds.data["metric"][sampler.rows[target]]


def test_targets_are_balanced_over_metric_bins(tmp_path):
    ds = _dataset(tmp_path)
    metric = _targets(PairSampler(ds, [0, 1, 2, 3], bins=10, seed=0), ds)
    # Bins of 0.088 over [0.022, 0.9]: the ten best checkpoints share the first bin, one of nine filled
    # ones, so the three below 3 % get 3/10 of a ninth of the draws and the worst one a whole ninth.
    assert float((metric < 0.029).float().mean()) == pytest.approx(3 / 10 / 9, abs=0.01)
    assert float((metric > 0.85).float().mean()) == pytest.approx(1 / 9, abs=0.01)


def test_one_bin_samples_every_checkpoint_alike(tmp_path):
    ds = _dataset(tmp_path)
    metric = _targets(PairSampler(ds, [0, 1, 2, 3], bins=1, seed=0), ds)
    assert float((metric < 0.029).float().mean()) == pytest.approx(3 / 18, abs=0.01)


def test_init_draws_are_each_runs_first_valid_checkpoint(tmp_path):
    ds = _dataset(tmp_path)
    valid = ds.data["valid"]
    valid[ds.run_slices()[3].start] = False  # run 3's step 0 is unusable: its init is step 10
    ds._valid = None
    sampler = PairSampler(ds, [1, 3], init_fraction=1.0, seed=0)
    source, target = sampler.sample_positions(2_000)
    rows, runs = sampler.rows[source], ds.data["run"][sampler.rows[target]]
    first = {1: ds.run_slices()[1].start, 3: ds.run_slices()[3].start + 1}
    assert set(runs.tolist()) == {1, 3}
    assert rows.tolist() == [first[r] for r in runs.tolist()]
    assert sampler.init_rows().tolist() == [first[1], first[3]]


def test_rows_that_are_not_valid_are_never_drawn(tmp_path):
    ds = _dataset(tmp_path)
    ds.data["valid"][::3] = False
    ds._valid = None
    sampler = PairSampler(ds, [0, 1, 2, 3], init_fraction=0.5, seed=0)
    source, target = sampler.sample_positions(5_000)
    drawn = torch.cat([sampler.rows[source], sampler.rows[target]])
    assert ds.data["valid"][drawn].all()
    assert len(sampler) == 4 * len(ERRORS) - int((~ds.data["valid"]).sum())


def test_the_train_test_split_is_by_run_and_set_by_its_seed():
    runs = list(range(20))
    splits = {seed: split_runs(runs, 0.25, seed) for seed in range(4)}
    for train, test in splits.values():
        assert len(test) == 5 and sorted(train + test) == runs
    assert split_runs(runs, 0.25, 2) == splits[2]  # the same seed, the same split
    assert len({tuple(test) for _, test in splits.values()}) > 1  # another seed holds out other runs
    assert split_runs(runs, 0.0, 1) == (runs, [])


def test_the_split_always_keeps_a_training_run():
    train, test = split_runs([4, 7, 9], 0.9)
    assert len(train) == 1 and len(test) == 2
    assert split_runs([5], 0.5) == ([5], [])


def test_the_sampler_indexes_runs_in_the_order_given_and_leaves_out_runs_without_a_valid_row(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    valid = {0: [1, 1, 0, 1], 1: [0, 0, 0], 2: [0, 1, 1], 3: [1, 1]}
    for run, marks in valid.items():
        n = len(marks)
        w.add_run(
            run,
            {
                "params": torch.randn(n, LAYOUT.numel),
                "metric": torch.rand(n),
                "step": torch.arange(n),
                "valid": torch.tensor(marks, dtype=torch.bool),
            },
            {},
        )
    w.consolidate()
    s = PairSampler(CheckpointDataset(tmp_path / "ds"), [3, 1, 0, 2])  # rows 0-3, 4-6, 7-9, 10-11
    assert s.rows.tolist() == [10, 11, 0, 1, 3, 8, 9]
    assert s.run_ids.tolist() == [3, 0, 2]  # run 1 has no valid checkpoint
    assert s.run_pos.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert s.run_start.tolist() == [0, 2, 5] and s.run_count.tolist() == [2, 3, 2]
    assert s.run_first_row.tolist() == [10, 0, 8]


def test_the_pair_sampler_is_part_of_the_dataset_packages_api():
    """The package says it holds the pair sampling and the README uses ``rl_gpt.dataset.PairSampler``."""
    import rl_gpt.dataset
    from rl_gpt.dataset import pairs

    for name in ("PairSampler", "Normalizer", "split_runs"):
        assert name in rl_gpt.dataset.__all__ and getattr(rl_gpt.dataset, name) is getattr(pairs, name)


def test_the_normaliser_maps_the_training_metric_range_onto_minus_one_to_one() -> None:
    """The generator's prompt and input m live in [-1, 1] over the training runs' metric range (NaN labels
    left out), and a prompt converted there and back is the prompt."""
    from rl_gpt.dataset.pairs import Normalizer

    layout = Layout.build({"l.weight": (3, 2), "l.bias": (3,)}, [LayerSpec("l", None, None)])
    params = torch.randn(8, layout.numel, generator=torch.Generator().manual_seed(0))
    metric = torch.tensor([20.0, 500.0, float("nan"), 100.0, 20.0, 260.0, 400.0, 30.0])
    norm = Normalizer.fit(params, metric, layout, params[1:] - params[:-1])
    assert (norm.metric_low, norm.metric_high) == (20.0, 500.0)
    m = torch.tensor([20.0, 260.0, 500.0, 620.0])
    assert norm.metric(m).tolist() == pytest.approx([-1.0, 0.0, 1.0, 1.5])
    assert norm.unmetric(norm.metric(m)).tolist() == pytest.approx(m.tolist())
