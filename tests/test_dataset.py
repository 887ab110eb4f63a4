"""The on-disk checkpoint dataset: atomic appends, consolidation, resume and the open format."""

import json
import shutil
import warnings

import pytest
import torch
from tensordict import TensorDict

from rl_gpt.dataset import CheckpointDataset, DatasetError, DatasetWriter, task_record
from rl_gpt.layout import LayerSpec, Layout

LAYOUT = Layout.build({"l.weight": (3, 2), "l.bias": (3,)}, [LayerSpec("l", None, None)])
SPEC = {
    "task": {"name": "toy"},
    "metric": {"name": "return", "higher_is_better": True},
    "layout": LAYOUT.to_dict(),
    "policy": {"head": "gaussian"},
}


def _rows(run: int, n: int = 4) -> dict:
    return {
        "params": torch.full((n, LAYOUT.numel), float(run)),
        "metric": torch.arange(n, dtype=torch.float32) + run,
        "step": torch.arange(n) * 10,
        "valid": torch.ones(n, dtype=torch.bool),
    }


def test_append_consolidate_and_read_without_rl_gpt(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    for run in (2, 0, 1):  # finish out of order, as parallel workers do
        w.add_run(run, _rows(run), {"seed": run})
    assert w.completed_runs() == {0, 1, 2}
    assert w.consolidate() == 12
    # the open format: plain tensordict, no rl_gpt import needed
    td = TensorDict.load_memmap(tmp_path / "ds" / "data", allow_pickle=False)
    assert td["params"].shape == (12, LAYOUT.numel) and td["params"].dtype == torch.float32
    assert td["run"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert td["step"].dtype == torch.int64
    spec = json.loads((tmp_path / "ds" / "spec.json").read_text())
    assert spec["layout"]["params"][0]["name"] == "l.weight"
    ds = CheckpointDataset(tmp_path / "ds")
    assert len(ds) == 12 and ds.run_slices()[1] == slice(4, 8)
    assert set(ds.runs_meta) == {"0", "1", "2"}


def test_a_full_disk_is_an_error_before_the_memmaps_are_written_not_a_bus_error(tmp_path, monkeypatch):
    """A memmap is a sparse file: written through its mapping into a full disk, the process dies of SIGBUS
    (a collection into a full tmpfs did). Its blocks are allocated first, so a full disk is an OSError that
    names the file, and what was half-written is removed at once."""
    import errno

    import rl_gpt.io

    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {"seed": 0})

    def full(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rl_gpt.io, "_reserve_blocks", full)
    with pytest.raises(OSError, match=r"No space left on device.*\.memmap"):
        w.add_run(1, _rows(1), {"seed": 1})
    assert sorted(p.name for p in (tmp_path / "ds" / "runs").iterdir()) == ["run_00000"]
    with pytest.raises(OSError, match="No space left on device"):
        w.consolidate()
    assert not (tmp_path / "ds" / ".tmp-data").exists() and not (tmp_path / "ds" / "data").exists()
    monkeypatch.undo()  # space freed: the same calls go on
    w.add_run(1, _rows(1), {"seed": 1})
    assert w.consolidate() == 8 and CheckpointDataset(tmp_path / "ds").data["run"].tolist() == [0] * 4 + [1] * 4


def test_links_left_at_the_writers_temporary_names_are_removed_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    w = DatasetWriter(tmp_path / "ds", SPEC)
    (tmp_path / "ds" / "runs" / ".tmp-run_00000").symlink_to(victim)  # placed by whoever shares the folder
    (tmp_path / "ds" / ".tmp-data").symlink_to(victim)
    w.add_run(0, _rows(0), {"seed": 0})
    assert w.consolidate() == 4
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"
    assert len(CheckpointDataset(tmp_path / "ds")) == 4


def test_append_after_consolidation_and_resume(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    w.consolidate()
    # a new writer (a resumed collection) sees run 0 as done and merges new runs after it
    w2 = DatasetWriter(tmp_path / "ds", SPEC)
    assert w2.completed_runs() == {0}
    w2.add_run(1, _rows(1), {})
    # a run killed mid-write leaves only a temporary directory, which is ignored and cleaned
    (tmp_path / "ds" / "runs" / ".tmp-run_00002").mkdir()
    assert w2.completed_runs() == {0, 1}
    w2.consolidate()
    ds = CheckpointDataset(tmp_path / "ds")
    assert torch.unique(ds.data["run"]).tolist() == [0, 1]
    assert DatasetWriter(tmp_path / "ds", SPEC).completed_runs() == {0, 1}
    assert not (tmp_path / "ds" / "runs" / ".tmp-run_00002").exists()


def test_a_run_merged_after_higher_numbered_ones_is_stored_in_run_order(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    for run in (0, 2):  # run 1 was still running when these were merged (a `data merge`, then a resume)
        w.add_run(run, _rows(run), {"seed": run})
    w.consolidate()
    w.add_run(1, _rows(1), {"seed": 1})
    assert w.consolidate() == 12
    td = TensorDict.load_memmap(tmp_path / "ds" / "data", allow_pickle=False)
    assert td["run"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert td["params"][:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4  # each row with its own run


def test_recover_from_crash_between_renames(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    w.consolidate()
    (tmp_path / "ds" / "data").rename(tmp_path / "ds" / "data.old")
    assert len(CheckpointDataset(tmp_path / "ds")) == 4
    # A reader reads data.old where it is: renaming it back could undo a running merge's first rename,
    # and fails on read-only storage. The next writer puts it back.
    assert not (tmp_path / "ds" / "data").exists()
    DatasetWriter(tmp_path / "ds", SPEC)
    assert (tmp_path / "ds" / "data").exists() and not (tmp_path / "ds" / "data.old").exists()


def test_a_damaged_runs_json_warns_on_read_and_stops_a_merge_before_it_writes(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    w.consolidate()
    (tmp_path / "ds" / "runs.json").write_text('{"0": {"seed": 0}')  # cut short
    with pytest.warns(UserWarning, match="runs.json is not a JSON object of runs"):
        ds = CheckpointDataset(tmp_path / "ds")
    assert len(ds) == 4 and ds.runs_meta == {}  # the checkpoints stay usable
    w.add_run(1, _rows(1), {})
    with pytest.raises(DatasetError, match="restore it, or delete it"):
        w.consolidate()  # would otherwise overwrite it, losing run 0's metadata
    assert (tmp_path / "ds" / "runs.json").read_text() == '{"0": {"seed": 0}'


def _stored(root, spec):
    """A dataset folder holding one run written under ``spec``."""
    writer = DatasetWriter(root, spec)
    writer.add_run(0, _rows(0), {})
    return writer


def test_refuses_a_different_task_in_the_same_directory(tmp_path):
    _stored(tmp_path / "ds", SPEC)
    other = dict(SPEC, task={**SPEC["task"], "name": "other"})
    with pytest.raises(DatasetError, match=r"different task \(task.name: '\w+' -> 'other'\)") as refused:
        DatasetWriter(tmp_path / "ds", other)
    assert str(refused.value).endswith(f"; to add runs to it, give its values: task.name={SPEC['task']['name']}")
    nested = dict(SPEC, task={**SPEC["task"], "hyperparams": {"lr": 0.2}, "normalize": True})
    with pytest.raises(DatasetError, match=r"give its values: task.hyperparams=null task.normalize=null$"):
        DatasetWriter(tmp_path / "ds", nested)  # keys the stored task lacks: null gives them back


def test_a_spec_without_runs_is_replaced(tmp_path):
    DatasetWriter(tmp_path / "ds", SPEC)  # e.g. a collection refused after writing its spec
    other = dict(SPEC, task={**SPEC["task"], "name": "other"})
    assert DatasetWriter(tmp_path / "ds", other).spec["task"]["name"] == "other"
    (tmp_path / "ds" / "runs" / ".tmp-run_00000").mkdir()  # another collection writing its first run
    with pytest.raises(DatasetError, match="different task"):
        DatasetWriter(tmp_path / "ds", SPEC)


def test_a_spec_over_consolidated_data_alone_is_kept(tmp_path):
    _stored(tmp_path / "ds", SPEC).consolidate()
    assert not any((tmp_path / "ds" / "runs").glob("run_*"))  # the runs now live in data/ only
    with pytest.raises(DatasetError, match="different task"):
        DatasetWriter(tmp_path / "ds", dict(SPEC, task={**SPEC["task"], "name": "other"}))


def test_a_folder_whose_spec_json_is_not_ours_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "spec.json").write_text('{"someone": "else"}')
    with pytest.raises(DatasetError, match="not an rl_gpt checkpoint dataset spec"):
        DatasetWriter(tmp_path / "ds", SPEC)


def test_a_layout_difference_reads_in_one_short_line(tmp_path):
    _stored(tmp_path / "ds", SPEC)
    other = Layout.build({"m.weight": (7, 3), "m.bias": (7,)}, [LayerSpec("m", None, None)]).to_dict()
    with pytest.raises(DatasetError, match="different layout") as info:
        DatasetWriter(tmp_path / "ds", dict(SPEC, layout=other))
    assert len(str(info.value)) < 500 and "\n" not in str(info.value)


def test_task_records_leave_out_the_other_kinds_fields():
    rl = {"name": "cartpole", "kind": "rl", "algo": "ppo", "network": "", "data_root": None}
    supervised = {"name": "digits", "kind": "supervised", "algo": "ppo", "n_envs": 8, "network": "digits_mlp"}
    assert task_record(rl) == {"name": "cartpole", "kind": "rl", "algo": "ppo"}
    assert task_record(supervised) == {"name": "digits", "kind": "supervised", "network": "digits_mlp"}


def test_an_rl_dataset_written_with_the_supervised_fields_extends_and_is_rewritten(tmp_path):
    old_task = {"name": "toy", "kind": "rl", "algo": "ppo", "network": "", "data_root": None}
    _stored(tmp_path / "ds", dict(SPEC, task=old_task))
    DatasetWriter(tmp_path / "ds", dict(SPEC, task=task_record(old_task)))
    assert json.loads((tmp_path / "ds" / "spec.json").read_text())["task"] == {
        "name": "toy",
        "kind": "rl",
        "algo": "ppo",
    }
    with pytest.raises(DatasetError, match="different task"):  # what the record keeps is still compared
        DatasetWriter(tmp_path / "ds", dict(SPEC, task={**task_record(old_task), "algo": "sac"}))


def test_more_runs_must_be_collected_like_the_stored_ones(tmp_path):
    _stored(tmp_path / "ds", dict(SPEC, collect={"runs": 2, "timesteps": 2048, "workers": 1}))
    more = dict(SPEC, collect={"runs": 8, "timesteps": 2048, "workers": 2})  # more runs, elsewhere: fine
    DatasetWriter(tmp_path / "ds", more)
    longer = dict(SPEC, collect={"runs": 8, "timesteps": 4096, "workers": 2})
    with pytest.raises(DatasetError, match="collected with collect.timesteps=2048"):
        DatasetWriter(tmp_path / "ds", longer)


def test_an_unfolded_dataset_names_the_option_that_extends_it(tmp_path):
    _stored(tmp_path / "ds", dict(SPEC, policy={"head": "gaussian", "normalize_obs": True}))
    folded = dict(SPEC, policy={"head": "gaussian", "normalize_obs": False})
    with pytest.raises(DatasetError, match="different policy.*collect.fold_normalisation=false"):
        DatasetWriter(tmp_path / "ds", folded)


def test_invalid_rows_are_masked(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    rows = _rows(0)
    rows["valid"][1] = False
    rows["metric"][2] = float("nan")
    w.add_run(0, rows, {})
    w.consolidate()
    assert CheckpointDataset(tmp_path / "ds").valid_mask().tolist() == [True, False, False, True]


def test_rows_marked_valid_with_nan_weights_are_left_out_with_a_warning(tmp_path):
    rows = _rows(0, n=6)
    rows["params"][2, 1] = float("nan")  # another tool's dataset: broken weights, yet marked valid
    rows["params"][4, 0] = float("inf")
    rows["valid"][4] = False  # already left out: not counted in the warning
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, rows, {})
    w.consolidate()
    ds = CheckpointDataset(tmp_path / "ds")
    with pytest.warns(UserWarning, match=r"1 row\(s\) marked valid hold NaN or infinite weights \(rows 2\)"):
        assert ds.valid_mask().tolist() == [True, True, False, True, False, True]


def test_only_the_first_process_of_a_torchrun_job_warns_of_broken_rows(tmp_path, monkeypatch):
    rows = _rows(0)
    rows["params"][1, 0] = float("nan")
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, rows, {})
    w.consolidate()
    monkeypatch.setenv("RANK", "1")  # rank 1 finds the same rows and leaves the saying to rank 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointDataset(tmp_path / "ds").valid_mask().tolist() == [True, False, True, True]


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a checkpoint dataset"):
        CheckpointDataset(tmp_path)


def test_crash_after_consolidation_rename_does_not_duplicate(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    w.consolidate()
    # a crash between replacing data/ and deleting runs/run_00000 leaves the run in both places
    w.add_run(0, _rows(0), {})
    with pytest.raises(DatasetError, match="runs not yet merged into data"):
        CheckpointDataset(tmp_path / "ds")
    assert w.consolidate() == 4
    assert len(CheckpointDataset(tmp_path / "ds")) == 4


def test_an_experiment_folder_given_for_its_dataset_or_model_is_named(tmp_path):
    from rl_gpt.train.modelfile import ModelFileError, read_model_info

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "spec.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    with pytest.raises(DatasetError, match=f"its dataset is {tmp_path / 'dataset'}"):
        CheckpointDataset(tmp_path)
    with pytest.raises(ModelFileError, match=f"its model is {tmp_path / 'model'}"):
        read_model_info(tmp_path)
    with pytest.raises(DatasetError, match="holds a generator model"):  # its model folder: named as one
        CheckpointDataset(tmp_path / "model")
    with pytest.raises(DatasetError, match="no spec.json"):  # any other folder: as before
        CheckpointDataset(tmp_path / "dataset" / "elsewhere")


def test_data_merge_makes_a_stopped_collections_runs_readable(tmp_path, capsys):
    from rl_gpt.cli import main

    spec = dict(SPEC, collect={"runs": 5})
    w = DatasetWriter(tmp_path / "exp" / "dataset", spec)
    w.add_run(0, _rows(0), {"seed": 0})
    w.consolidate()
    w.add_run(2, _rows(2), {"seed": 2})  # what a collection killed with kill -9 leaves: runs not merged
    w.add_run(1, _rows(1), {"seed": 1})
    (tmp_path / "exp" / "dataset" / "runs" / ".tmp-run_00003").mkdir()  # and a run killed mid-write
    with pytest.raises(DatasetError, match="run `rl-gpt data merge"):
        CheckpointDataset(tmp_path / "exp" / "dataset")

    assert main(["data", "merge", str(tmp_path / "exp")]) == 0  # an experiment folder names its dataset
    out = capsys.readouterr().out
    assert "merged 2 run(s)" in out and "12 checkpoints of 3 runs" in out and "collects 2 more" in out
    ds = CheckpointDataset(tmp_path / "exp" / "dataset")
    assert ds.data["run"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert set(ds.runs_meta) == {"0", "1", "2"}
    assert not list((tmp_path / "exp" / "dataset" / "runs").iterdir())
    # a resumed collection goes on from there
    assert DatasetWriter(tmp_path / "exp" / "dataset", spec).completed_runs() == {0, 1, 2}

    assert main(["data", "merge", str(tmp_path / "exp" / "dataset")]) == 0  # twice: nothing to do, nothing lost
    assert "had no runs to merge: it holds 12 checkpoints of 3 runs" in capsys.readouterr().out
    assert len(CheckpointDataset(tmp_path / "exp" / "dataset")) == 12


def test_data_merge_refuses_a_folder_a_collection_is_writing(tmp_path, capsys):
    from rl_gpt.cli import main
    from rl_gpt.io import exclusive_folder

    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    with exclusive_folder(tmp_path / "ds", "collect"):
        assert main(["data", "merge", str(tmp_path / "ds")]) == 2
    assert "is being written by another process" in capsys.readouterr().err
    assert (tmp_path / "ds" / "runs" / "run_00000").is_dir() and not (tmp_path / "ds" / "data").exists()
    assert main(["data", "merge", str(tmp_path)]) == 2
    assert "not a checkpoint dataset" in capsys.readouterr().err


def test_a_truncated_column_is_refused_and_left_as_it_is(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0), {})
    w.consolidate()
    column = tmp_path / "ds" / "data" / "params.memmap"
    size = column.stat().st_size
    with column.open("r+b") as f:
        f.truncate(size // 2)  # a disk that filled, a partial copy
    with pytest.raises(DatasetError, match=f"holds {size // 2} of its {size} bytes: the dataset is damaged"):
        CheckpointDataset(tmp_path / "ds")
    assert column.stat().st_size == size // 2  # opening it would have padded it with zeros, on disk
    column.unlink()
    with pytest.raises(DatasetError, match="params.memmap is missing"):
        CheckpointDataset(tmp_path / "ds")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"task": ', "is not valid JSON"),
        ("[1, 2]", "is not an rl_gpt checkpoint dataset spec"),
        (json.dumps({**SPEC, "format": {"name": "rl_gpt.checkpoints"}, "layout": None}), "lacks layout"),
    ],
)
def test_a_damaged_spec_is_a_one_line_error(tmp_path, text, needle):
    DatasetWriter(tmp_path / "ds", SPEC).add_run(0, _rows(0), {})
    (tmp_path / "ds" / "spec.json").write_text(text)
    with pytest.raises(DatasetError, match=needle):
        CheckpointDataset(tmp_path / "ds")


def _consolidated(tmp_path, runs=(0, 1)):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    for run in runs:
        w.add_run(run, _rows(run), {})
    w.consolidate()
    return tmp_path / "ds"


def test_changing_rows_in_memory_leaves_the_files_alone(tmp_path):
    root = _consolidated(tmp_path)
    column = root / "data" / "params.memmap"
    before = column.read_bytes()
    row = CheckpointDataset(root).data["params"][0]
    row -= 1000  # a notebook normalising a row in place
    assert float(row[0]) == -1000.0
    assert column.read_bytes() == before
    assert float(CheckpointDataset(root).data["params"][0, 0]) == 0.0


def test_a_pickled_field_is_refused_before_anything_is_unpickled(tmp_path):
    from tensordict import NonTensorData

    root = _consolidated(tmp_path)
    data = root / "data"
    TensorDict({"note": NonTensorData(b"x", batch_size=[8])}, batch_size=[8]).memmap(tmp_path / "extra")
    (tmp_path / "extra" / "note").rename(data / "note")
    pickled = data / "note" / "other.pickle"
    assert pickled.exists()
    pickled.write_bytes(b"not a pickle: reading it would raise")
    meta = json.loads((data / "meta.json").read_text())
    meta["note"] = {"type": "NonTensorData"}
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="field 'note' is not a tensor column .NonTensorData.; rl_gpt reads"):
        CheckpointDataset(root)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"_type": "<class 'mymodule.Evil'>"}, "not a plain TensorDict"),
        ({"shape": [8, 2]}, r"shape \[8, 2\] is not \[rows\]"),
        ({"../params": {"shape": [8], "dtype": "torch.float32"}}, "field '../params' is not a tensor column"),
        ({"metric": {"shape": [7], "dtype": "torch.float32"}}, "field 'metric' is not a tensor column"),
        ({"metric": {"shape": [8], "dtype": "torch.complex64"}}, "field 'metric' is not a tensor column"),
        ({"metric": {"shape": [8], "dtype": "torch.float32", "is_nested": True}}, "field 'metric' is not a tensor"),
    ],
)
def test_a_meta_json_that_is_no_table_of_tensor_columns_is_refused(tmp_path, change, needle):
    root = _consolidated(tmp_path)
    meta_path = root / "data" / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | change))
    with pytest.raises(DatasetError, match=needle):
        CheckpointDataset(root)


def _rewritten(root, order):
    """data/ written again by another tool, its rows in ``order``."""
    td = TensorDict.load_memmap(root / "data", allow_pickle=False)
    shuffled = td[torch.as_tensor(order)].clone()
    shutil.rmtree(root / "data")
    shuffled.memmap(root / "data")


def test_rows_of_a_run_that_are_not_together_are_refused(tmp_path):
    root = _consolidated(tmp_path)
    _rewritten(root, [0, 1, 4, 5, 2, 3, 6, 7])  # run 0, run 1, run 0 again, run 1 again
    with pytest.raises(DatasetError, match=r"the rows of run 0 are not one block.*sorted by \(run, step\)"):
        CheckpointDataset(root)


def test_rows_of_a_run_out_of_step_order_are_refused(tmp_path):
    root = _consolidated(tmp_path)
    _rewritten(root, [1, 0, 2, 3, 4, 5, 6, 7])
    with pytest.raises(DatasetError, match="row 1 of run 0 is at step 0, after step 10"):
        CheckpointDataset(root)
    other = _consolidated(tmp_path / "b")
    _rewritten(other, [4, 5, 6, 7, 0, 1, 2, 3])  # runs in another order is fine: each is one block
    assert CheckpointDataset(other).run_slices() == {1: slice(0, 4), 0: slice(4, 8)}


def test_an_empty_column_reads_as_empty(tmp_path):
    root = _consolidated(tmp_path)
    td = TensorDict.load_memmap(root / "data", allow_pickle=False).clone()
    td["extra"] = torch.zeros(8, 0)  # tensordict writes no file for it
    shutil.rmtree(root / "data")
    td.memmap(root / "data")
    assert CheckpointDataset(root).data["extra"].shape == (8, 0)


def test_weights_are_checked_row_by_row_even_where_a_finite_rows_sum_overflows():
    from rl_gpt.dataset import store

    params = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    params[3, 2] = float("nan")
    params[10, 6] = float("inf")
    params[11, 0], params[11, 1] = float("inf"), float("-inf")  # a sum of NaN
    params[20] = 3e38  # every weight finite, the sum infinite
    params[49, 0] = float("-inf")
    expected = torch.isfinite(params).all(-1)
    assert expected[20] and not expected[[3, 10, 11, 49]].any()
    assert store._finite_rows(params).tolist() == expected.tolist()
    assert store._finite_rows(params[:0]).shape == (0,)  # a dataset without rows: none to check


def test_a_dataset_without_rows_is_described(tmp_path):
    from rl_gpt.dataset.info import describe

    w = DatasetWriter(tmp_path / "ds", SPEC)
    w.add_run(0, _rows(0, n=0), {"seed": 0})
    w.consolidate()
    said = describe(tmp_path / "ds")
    assert "checkpoints  0 (0 invalid" in said and "no valid checkpoints" in said
    assert "copied before the update" not in said  # not an SB3 collection: nothing to say of its timing


def test_run_slices_are_read_once_and_handed_out_as_copies(tmp_path, monkeypatch):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    for run in (0, 2, 5):
        w.add_run(run, _rows(run, n=run + 2), {})
    w.consolidate()
    ds = CheckpointDataset(tmp_path / "ds")
    looks = []
    unique_consecutive = torch.unique_consecutive
    monkeypatch.setattr(torch, "unique_consecutive", lambda *a, **k: looks.append(1) or unique_consecutive(*a, **k))
    slices = ds.run_slices()
    assert slices == {0: slice(0, 2), 2: slice(2, 6), 5: slice(6, 13)}
    slices.pop(0)
    assert 0 in ds.run_slices() and len(looks) == 1  # a sampler and a sweep ask several times: one scan of the runs


def test_a_merge_refuses_data_whose_run_is_stored_in_two_places(tmp_path):
    w = DatasetWriter(tmp_path / "ds", SPEC)
    for run in (0, 1):
        w.add_run(run, _rows(run), {})
    w.consolidate()
    data = tmp_path / "ds" / "data"
    td = TensorDict.load_memmap(data)
    td["run"][:] = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])  # another tool's rows, not grouped by run
    w.add_run(2, _rows(2), {})
    with pytest.raises(DatasetError, match=r"run 0's rows are stored twice or apart \(data\); rows must be grouped"):
        w.consolidate()


def test_a_model_folder_given_as_a_dataset_is_named_as_a_model(tmp_path):
    """`rl-gpt evaluate runs/x/model` must not tell the researcher to run `rl-gpt collect`."""
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(DatasetError, match="holds a generator model, not a checkpoint dataset") as refused:
        CheckpointDataset(tmp_path)
    assert "rl-gpt collect" not in str(refused.value)
    with pytest.raises(DatasetError, match=r"no spec\.json\); run `rl-gpt collect` first"):  # an empty folder
        CheckpointDataset(tmp_path / "elsewhere")
