"""Crash-safe outputs: whole files or none, readable by others as open() would make them."""

from __future__ import annotations

import json
import math
import os
import stat
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_gpt.cli import main
from rl_gpt.io import (
    FILE_MODE,
    atomic_save_pair,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    pair_matches,
    remove_path,
    write_then_rename,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_mode_of_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    assert 0o666 & ~mask == FILE_MODE
    atomic_write_json(tmp_path / "spec.json", {"a": 1})
    atomic_save_safetensors({"w": torch.ones(3)}, tmp_path / "model.safetensors")
    assert _mode(tmp_path / "spec.json") == FILE_MODE
    assert _mode(tmp_path / "model.safetensors") == FILE_MODE
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "spec.json"]  # no temporaries


def test_writes_never_go_through_a_link_left_at_a_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine")
    victim.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    for name in (".sweep.png.tmp.png", ".policy_000.tmp.zip", ".policy_000.zip.tmp.zip"):  # the old fixed names
        (out / name).symlink_to(victim)
    write_then_rename(out / "sweep.png", lambda tmp: tmp.write_bytes(b"png"))
    write_then_rename(out / "policy_000.zip", lambda tmp: tmp.write_bytes(b"zip"))
    assert victim.read_text() == "mine" and _mode(victim) == 0o600
    assert (out / "sweep.png").read_bytes() == b"png" and not (out / "sweep.png").is_symlink()
    assert (out / "policy_000.zip").read_bytes() == b"zip"


def test_remove_path_removes_a_link_and_never_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "f").write_text("x")
    for link in (tmp_path / "to_dir", tmp_path / "to_file"):
        link.symlink_to(target if link.name == "to_dir" else target / "f")
        remove_path(link)
        assert not link.is_symlink()
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    remove_path(tmp_path / "dir")
    remove_path(tmp_path / "nothing_there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"] and (target / "f").read_text() == "x"


def test_a_safetensors_write_error_is_an_oserror_as_for_other_files(tmp_path: Path, monkeypatch) -> None:
    """safetensors raises its own error for a full disk or a denied write; callers that fall back on
    OSError (the ranker's cache for a model folder the user cannot write) must see one."""
    import safetensors.torch
    from safetensors import SafetensorError

    def denied(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(OSError, match=r"could not write .*m.safetensors: .*Permission denied"):
        atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "r.json", {"bad": object()})
    assert (tmp_path / "r.json").read_text().strip().startswith('{\n  "old": true')
    with pytest.raises((TypeError, ValueError)):
        atomic_save_safetensors({"w": "not a tensor"}, tmp_path / "m.safetensors")  # type: ignore[dict-item]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_write_that_fails_after_opening_leaves_the_old_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "new \ud800")  # fails while the file is being written
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_written_into_a_missing_folder_names_that_folder_not_a_temporary(tmp_path: Path) -> None:
    from rl_gpt.io import atomic_save_safetensors

    target = tmp_path / "nowhere" / "c.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere does not exist") as caught:
        atomic_save_safetensors({"w": torch.zeros(2)}, target)  # was "No such file: .../.c.safetensors.x1y2.tmp..."
    assert ".tmp" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_undefined_numbers_are_null_in_tuples_too(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"ci95": (float("nan"), 1.0), "runs": [(2, float("inf"))]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"ci95": [None, 1.0], "runs": [[2, None]]}


def test_a_pair_whose_weights_cannot_be_read_does_not_match_its_json(tmp_path: Path) -> None:
    weights, meta = tmp_path / "model.safetensors", tmp_path / "model.json"
    atomic_save_pair({"w": torch.ones(3)}, weights, meta, {"step": 1})
    info = json.loads(meta.read_text())
    assert pair_matches(weights, info)
    assert not pair_matches(weights, {"step": 1})  # a JSON written before save ids, beside new weights
    weights.write_bytes(weights.read_bytes()[:20])  # cut short
    assert not pair_matches(weights, info)
    weights.unlink()
    assert not pair_matches(weights, info)
    assert pair_matches(weights, {"step": 1})  # no id on either side: the reader says it is unreadable


def test_top_level_help_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "compare" in out and "generate" in out
    assert "presets" in out and "digits_full" in out  # what a config argument may name


def test_generate_takes_target_as_the_name_for_any_metric() -> None:
    from rl_gpt.cli_parser import build_parser

    for flag in ("--target", "--target-return"):
        args = build_parser().parse_args(["generate", "--model", "m", flag, "0.2", "0.5", "--out", "o"])
        assert args.target_return == [0.2, 0.5]


def test_version_says_which_rl_gpt_runs(capsys) -> None:
    import rl_gpt

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"rl-gpt {rl_gpt.__version__} (")


def test_help_and_version_answer_without_loading_torch() -> None:
    """`rl-gpt --help` and `--version` took ~3 s: the parser imported the supervised package for two names."""
    import subprocess
    import sys

    from rl_gpt.cli_data import _FETCHABLE
    from rl_gpt.supervised.fetch import SOURCES

    assert set(_FETCHABLE) == set(SOURCES)
    code = "import sys; from rl_gpt.cli_parser import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_warnings_print_as_one_line_naming_the_command():
    import warnings

    from rl_gpt.cli import _one_line_warnings

    previous = _one_line_warnings("generate")
    try:
        text = warnings.formatwarning(UserWarning("target 5000 lies outside"), UserWarning, "cli.py", 74, "x = 1")
    finally:
        warnings.formatwarning = previous
    assert text == "rl-gpt generate: warning: target 5000 lies outside\n"
    import torch  # a library's warning says which library it is (torchrl 0.6 warns on every command)

    library = str(Path(torch.__file__).parent / "nn" / "modules" / "module.py")
    previous = _one_line_warnings("train")
    try:
        text = warnings.formatwarning(UserWarning("Failed to import\n  details"), UserWarning, library, 7, None)
    finally:
        warnings.formatwarning = previous
    assert text == "rl-gpt train: warning from torch: Failed to import\n"


def test_outputs_are_refused_in_a_dataset_or_model_folder(tmp_path):
    from rl_gpt.io import ensure_report_dir

    for marker in ("spec.json", "model.json"):
        folder = tmp_path / marker.split(".")[0]
        folder.mkdir()
        (folder / marker).write_text("{}")
        with pytest.raises(PermissionError, match="write the outputs to another folder"):
            ensure_report_dir(folder)
    assert ensure_report_dir(tmp_path / "reports") == tmp_path / "reports"


def test_a_folder_being_written_is_refused_to_a_second_writer(tmp_path: Path) -> None:
    from rl_gpt.io import FolderInUseError, exclusive_folder

    first, busy = exclusive_folder(tmp_path, "train"), r"being written by another process \(an `rl-gpt train`"
    with first, pytest.raises(FolderInUseError, match=busy), exclusive_folder(tmp_path, "train"):
        pass
    with exclusive_folder(tmp_path, "train"):  # released on exit, exception or not
        pass
    assert list(tmp_path.iterdir()) == []  # no lock file is left behind


def test_the_lock_clears_what_a_killed_writer_left_and_nothing_else(tmp_path: Path) -> None:
    from rl_gpt.io import STALE_AFTER_S, exclusive_folder

    left = [".alignment.json.k2j4x9.tmp", ".model.safetensors.tmp.safetensors", ".write-test-abc"]
    kept = ["notes.tmp", ".hidden", "model.json", ".calibration.json.fresh.tmp"]  # the last: being written now
    for name in left + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.json.abc.tmp").write_text("x")  # subfolders are their owners' business
    old = time.time() - 2 * STALE_AFTER_S
    for name in [*left, "notes.tmp", ".hidden", "model.json", "sub/.x.json.abc.tmp"]:
        os.utime(tmp_path / name, (old, old))
    with exclusive_folder(tmp_path, "train"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "sub"])
    assert (tmp_path / "sub" / ".x.json.abc.tmp").exists()


def test_a_killed_writers_lock_is_gone_with_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from rl_gpt.io import exclusive_folder

    hold = f"from rl_gpt.io import exclusive_folder\nwith exclusive_folder({str(tmp_path)!r}, 'collect'):\n"
    hold += "    print('held', flush=True)\n    import time; time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from rl_gpt.io import FolderInUseError

        with pytest.raises(FolderInUseError), exclusive_folder(tmp_path, "collect"):
            pass
    finally:
        proc.kill()  # kill -9: nothing of the holder runs
        proc.wait()
    with exclusive_folder(tmp_path, "collect"):
        pass


def test_a_filesystem_without_folder_locks_warns_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    import errno
    import fcntl

    from rl_gpt.io import exclusive_folder

    def unsupported(fd: int, op: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))  # as NFS answers flock on a read-only descriptor

    monkeypatch.setattr(fcntl, "flock", unsupported)
    unlocked = pytest.warns(UserWarning, match="is not locked against a second `rl-gpt train`")
    with unlocked, exclusive_folder(tmp_path, "train") as held:
        assert held == tmp_path


def test_a_second_ctrl_c_waits_until_the_deferred_block_ends():
    import signal

    from rl_gpt.interrupt import interrupts_deferred

    # A background job starts with SIGINT ignored; a terminal's session has Python's default handler.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        reached_end = False
        with pytest.raises(KeyboardInterrupt), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside: held back
            time.sleep(0.05)  # Python runs handlers between bytecodes: give it the chance to misbehave
            reached_end = True
        assert reached_end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        with interrupts_deferred():  # nothing received: nothing raised
            pass
        from rl_gpt.interrupt import Terminated, sigterm_as_interrupt

        reached_end = False
        with sigterm_as_interrupt(), pytest.raises(Terminated), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` twice, or `timeout`'s second signal
            os.kill(os.getpid(), signal.SIGINT)  # the first one to come is the one sent on
            time.sleep(0.05)
            reached_end = True
        assert reached_end
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_ctrl_c_held_during_a_long_save_says_why_once(capfd):
    import signal

    from rl_gpt.interrupt import interrupts_deferred

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interrupts_deferred("still saving", quiet_s=0.0):
            for _ in range(3):  # a user pressing again and again: said once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.02)
        assert capfd.readouterr().err.count("still saving") == 1
        with pytest.raises(KeyboardInterrupt), interrupts_deferred("still saving", quiet_s=60.0):
            os.kill(os.getpid(), signal.SIGINT)  # with the first, as `timeout` sends it: nothing to say
            time.sleep(0.02)
        assert "still saving" not in capfd.readouterr().err
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_ctrl_c_while_the_command_imports_is_one_line(monkeypatch, capsys):
    import sys
    import types

    class Importing(types.ModuleType):
        def __getattr__(self, name):  # the Ctrl-C arrives while the module's names are read
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "rl_gpt.interrupt", Importing("rl_gpt.interrupt"))
    assert main(["info", "."]) == 130
    assert capsys.readouterr().err.strip() == "rl-gpt info: interrupted before it began; nothing was written"


def test_a_second_ctrl_c_while_the_command_exits_ends_it_quietly():
    """After a handled Ctrl-C, `timeout -s INT` (child, then its whole group) or a key pressed twice
    sends another while the interpreter shuts down; it must not print a traceback."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import atexit, os, signal, time
        import rl_gpt.cli as cli

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even from a background job

        def interrupted_command():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                return 130

        cli.main = interrupted_command
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))  # the second one
        cli.console_main()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and done.stderr == "", done.stderr


def test_prompts_outside_the_training_range_are_greyed_once_in_the_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_gpt.io import shade_outside

    fig, ax = plt.subplots()
    try:
        shade_outside(ax, [-10.0, 0.0, 5.0, 20.0], (0.0, 10.0))  # both ends reach outside
        assert len(ax.patches) == 2
        assert [h.get_label() for h in ax.get_legend_handles_labels()[0]].count(
            "outside the training range (conditioned on its end)"
        ) == 1
        shade_outside(ax, [1.0, 2.0], (0.0, 10.0))  # all inside; None: --extrapolate, nothing conditioned otherwise
        shade_outside(ax, [-5.0, 2.0], None)
        assert len(ax.patches) == 2
    finally:
        plt.close(fig)


def test_the_targets_plot_joins_targets_in_ascending_order(tmp_path, monkeypatch):
    import rl_gpt.generate.plot as plot

    drawn = {}
    monkeypatch.setattr(plot, "atomic_save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    summary = {"target_return": [500.0, 0.0, 250.0], "start_return": 9.5, "task": "cartpole", "start": "init"}
    summary |= {"calibrated": False, "training_range": [10.0, 500.0]}
    achieved = torch.tensor([[480.0, 490.0], [9.0, 10.0], [240.0, 260.0]])  # (T, N), in the typed order
    plot.plot_targets(summary, achieved, tmp_path / "generated.png")
    ax = drawn["fig"].axes[0]
    mean = next(line for line in ax.get_lines() if line.get_label() == "mean of 2")
    assert mean.get_xdata().tolist() == [0.0, 250.0, 500.0] and mean.get_ydata().tolist() == [9.5, 250.0, 485.0]
    assert "start (9.5)" in [t.get_text() for t in ax.get_legend().get_texts()]
    drawn.clear()
    plot.plot_targets(summary | {"extrapolate": True}, achieved, tmp_path / "generated.png")
    edges = [line for line in drawn["fig"].axes[0].get_lines() if line.get_linestyle() == "-."]
    assert sorted(line.get_xdata()[0] for line in edges) == [10.0, 500.0]  # where the data ends, not shaded


@pytest.mark.parametrize(
    ("extra", "xlabel", "ylabel", "sampler"),
    [
        (
            {"metric": "test_loss", "average": 8, "rerank": 1, "episodes": None},
            "target test loss",
            "achieved test loss",
            ", each the mean of 8 draws",
        ),
        (
            {"metric": "return", "average": 1, "rerank": 4, "episodes": 16},
            "target return",
            "achieved return (mean of 16 episodes)",
            ", best of 4 by the ranker",
        ),
    ],
)
def test_the_targets_plot_names_its_metric_and_sampler_as_the_sweep_plot_does(
    tmp_path, monkeypatch, extra, xlabel, ylabel, sampler
):
    import rl_gpt.generate.plot as plot

    drawn = {}
    monkeypatch.setattr(plot, "atomic_save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    summary = {"target_return": [0.5, 1.0], "start_return": 2.3, "task": "digits", "start": "init"}
    summary |= {"calibrated": True, "training_range": [0.1, 2.4]} | extra
    plot.plot_targets(summary, torch.tensor([[0.6, 0.7], [1.0, 1.1]]), tmp_path / "generated.png")
    ax = drawn["fig"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, ylabel)
    assert ax.get_title().replace("\n", " ") == f"digits from init{sampler}, prompts calibrated"


def _tiny_sweep_report() -> dict:
    """A sweep report with what plot_sweep reads: 3 inits, 2 prompts, 1 sample each."""
    flat = {"achieved_mean": [1.0, 2.0], "prompt_alignment_r2": 0.5}
    return {
        "task": "cartpole",
        "metric": {"name": "return", "higher_is_better": True},
        "prompts": [10.0, 500.0],
        "achieved": [[[10.0], [480.0]]] * 3,  # (inits, prompts, samples)
        "prompt_alignment_r2": 0.9,
        "baselines": {name: flat for name in ("retrieval", "noise", "identity")},
        "inits": 3,
        "init_metric": [9.0, 10.0, 11.0],
        "one_step": {"prompt": 500.0, "mean_return": 480.0},
        "config": {"init_source": "unseen"},
        "init_ids": {"seeds": [1_000_000, 1_000_001, 1_000_002]},
    }


def _drawn_sweep(tmp_path, monkeypatch, report: dict):
    """The figure plot_sweep draws for ``report``, not saved."""
    import rl_gpt.sweep.plot as plot

    drawn = {}
    monkeypatch.setattr(plot, "atomic_save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    plot.plot_sweep(report, tmp_path / "sweep.png")
    return drawn["fig"]


@pytest.mark.parametrize(
    ("init_ids", "source", "label", "ticks"),
    [
        ({"seeds": [1_000_000, 1_000_001, 1_000_002]}, "unseen", "unseen random init: seed 1000000 + x", None),
        ({"runs": [3, 7, 9]}, "heldout", "(dataset run)", ["3", "7", "9"]),
    ],
)
def test_the_sweep_plot_names_its_inits_as_the_report_does(tmp_path, monkeypatch, init_ids, source, label, ticks):
    report = _tiny_sweep_report() | {"config": {"init_source": source}, "init_ids": init_ids}
    ax = _drawn_sweep(tmp_path, monkeypatch, report).axes[1]
    assert label in ax.get_xlabel()
    if ticks:
        assert [t.get_text() for t in ax.get_xticklabels()] == ticks


def test_a_classifier_sweep_plot_marks_where_held_out_training_ends_and_the_best_checkpoint(tmp_path, monkeypatch):
    """The one-step panel draws the references the table prints under it, at the values report.json holds."""
    report = _tiny_sweep_report() | {"task": "digits", "metric": {"name": "test_loss", "higher_is_better": False}}
    report |= {"prompts": [0.125, 2.25], "achieved": [[[0.3], [2.2]]] * 3, "init_metric": [2.3, 2.3, 2.3]}
    clf = {"dataset_best": {"test_loss": 0.108, "test_error": 0.022}, "heldout_final": {"test_loss": 0.2}}
    report["one_step"] = {"prompt": 0.125, "mean_return": 0.3, "classifier": clf | {"heldout_runs": {"test_loss": 102}}}
    ax = _drawn_sweep(tmp_path, monkeypatch, report).axes[1]
    levels = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert levels == {
        "held-out runs' final checkpoint, median of 102 (0.200)": 0.2,
        "dataset's best checkpoint, chosen on these test images (0.108)": 0.108,
    }
    assert set(levels) <= {t.get_text() for t in ax.get_legend().get_texts()}
    rl = _drawn_sweep(tmp_path, monkeypatch, _tiny_sweep_report()).axes[1]
    assert rl.get_lines() == []  # an RL report records neither


@pytest.mark.parametrize(
    ("metric", "config", "overall", "one_step", "ylabel"),
    [
        (
            {"name": "return", "higher_is_better": True},
            {"episodes": 64},
            "cartpole: 3 unseen random inits x 2 samples",
            "one generated update at prompt 500: mean 480",
            "return (mean of 64 episodes), higher is better",
        ),
        (
            {"name": "test_loss", "higher_is_better": False},
            {"average": 8},
            "cartpole: 3 unseen random inits x 2 samples, each the mean of 8 draws",
            "one generated update at prompt 500: mean 480",
            "test loss, lower is better",
        ),
    ],
)
def test_the_sweep_plot_says_what_it_measured(tmp_path, monkeypatch, metric, config, overall, one_step, ylabel):
    """How many networks each point is over, the one-step mean the table prints, and which way is better."""
    report = _tiny_sweep_report() | {
        "metric": metric,
        "config": config,
        "achieved": [[[10.0, 12.0], [470.0, 490.0]]] * 3,
    }
    left, right = _drawn_sweep(tmp_path, monkeypatch, report).axes
    assert left.get_title().replace("\n", " ") == overall
    assert right.get_title() == one_step
    assert right.get_ylabel() == ylabel
    report["achieved"] = [[[10.0, 12.0], [470.0, math.nan]]] * 3  # one sample of each init failed
    report["one_step"] |= {"failed_fraction": 0.5, "mean_return": 245.0}  # scored at the worst prompt
    report["failed_fraction"] = 0.25
    left, right = _drawn_sweep(tmp_path, monkeypatch, report).axes
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert "generator (R² 0.900; 25.0% failed, not drawn)" in legend
    assert right.get_title().splitlines() == [
        "one generated update at prompt 500: mean 245",
        "50% failed (no finite metric; counted at the worst prompt, not drawn)",
    ]


def test_the_sweep_plot_writes_r2_as_the_table_does(tmp_path, monkeypatch):
    """Three decimals: at two, CartPole's generator (0.933) and noise (0.929) read as a tie the table does not show."""
    from rl_gpt.sweep.table import format_table

    report = _tiny_sweep_report() | {"prompt_alignment_r2": 0.9334, "env_id": "CartPole-v1", "recursive": {}}
    one_step = {"mean_return": 480.0, "solved_fraction": 1.0}
    report["baselines"] = {
        name: {"achieved_mean": [1.0, 2.0], "prompt_alignment_r2": r2, "one_step": one_step}
        for name, r2 in (("retrieval", 0.9921), ("noise", 0.9294), ("identity", -1.834))
    }
    report["one_step"] |= one_step
    report["recursive"]["mean_return"] = [10.0, 480.0]
    legend = [t.get_text() for t in _drawn_sweep(tmp_path, monkeypatch, report).axes[0].get_legend().get_texts()]
    table = format_table(report)
    for name, r2 in (("generator", "0.933"), ("retrieval", "0.992"), ("noise", "0.929"), ("identity", "-1.834")):
        assert f"{name} (R² {r2})" in legend
        assert any(line.startswith(name) and f" {r2} " in line for line in table.splitlines())


@pytest.mark.parametrize(
    ("task", "metric", "config", "header", "one_step"),
    [
        (
            "digits",
            {"name": "test_loss", "higher_is_better": False},
            {"samples": 2, "average": 8},
            "digits (digits), 3 unseen random inits x 2 samples, each generated network the mean of 8 draws",
            "one-step: mean test loss (lower is better) at the best prompt, 0.500",
        ),
        (
            "cartpole",
            {"name": "return", "higher_is_better": True},
            {},  # a report without its config: nothing said of samples or means
            "cartpole (cartpole), 3 unseen random inits",
            "one-step: mean return (higher is better) at the best prompt, 500.0",
        ),
    ],
)
def test_the_table_names_what_each_row_is_over_and_which_way_is_better(task, metric, config, header, one_step):
    """Without its one-step line the table never says whether that column is a loss, an error or a return."""
    from rl_gpt.sweep.table import format_table

    report = _tiny_sweep_report() | {"task": task, "env_id": task, "metric": metric, "config": config}
    if task == "digits":
        report["prompts"] = [0.5, 2.25]
    report["one_step"] = {"prompt": report["prompts"][-1 if task == "cartpole" else 0], "mean_return": 0.3}
    report["one_step"]["solved_fraction"] = math.nan
    baseline = {"prompt_alignment_r2": 0.5, "one_step": report["one_step"]}
    report["baselines"] = {name: baseline for name in ("retrieval", "noise", "identity")}
    report["recursive"] = {"mean_return": [2.3, 0.3]}
    lines = format_table(report).splitlines()
    assert lines[0] == header
    assert one_step in lines


@pytest.mark.parametrize(
    ("metric", "sampler", "title", "ylabel"),
    [
        (
            "return",
            {"average": 1, "rerank": 4},
            "prompt calibration: 32 training runs' inits x 2 samples, best of 4 by the ranker",
            "achieved return (mean of 64 episodes)",
        ),
        (
            "test_loss",
            {"average": 8, "rerank": 1},
            "prompt calibration: 32 training runs' inits x 2 samples, each the mean of 8 draws",
            "achieved test loss",
        ),
    ],
)
def test_the_calibration_plot_names_the_sampler_it_was_measured_with(
    tmp_path, monkeypatch, metric, sampler, title, ylabel
):
    import rl_gpt.sweep.plot as plot
    from rl_gpt.train.calibration import PromptCalibration

    drawn = {}
    monkeypatch.setattr(plot, "atomic_save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    meta = {"inits": 32, "samples": 2, "episodes": 64}
    cal = PromptCalibration([1.0, 2.0], [1.5, 2.0], [1.5, 2.0], {"guidance": 2.0, "steps": 20} | sampler, meta)
    plot.plot_calibration(cal, metric, tmp_path / "calibration.png")
    ax = drawn["fig"].axes[0]
    assert ax.get_title().replace("\n", " ") == title
    assert ax.get_ylabel() == ylabel


def test_a_training_plot_that_cannot_be_drawn_is_a_warning(tmp_path, monkeypatch):
    import rl_gpt.train.plot as plot

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    history = [
        {"step": 5, "loss": 0.5, "mse_x0": 0.2, "lr": 1e-3},
        {"step": 10, "loss": 0.4, "mse_x0": 0.1, "lr": 1e-3},
    ]
    assert plot.plot_training(history, tmp_path / "training.png", "t") == tmp_path / "training.png"
    monkeypatch.setattr(plot, "_plot_training", full_disk)
    with pytest.warns(
        UserWarning, match=r"training.png not drawn .*No space left on device\); the training state is saved"
    ):
        assert plot.plot_training(history, tmp_path / "training.png", "t") is None


def test_info_on_a_folder_of_experiments_lists_them(tmp_path, capsys) -> None:
    markers = ("a/dataset/spec.json", "b/dataset/spec.json", "b/model/model.json", "b/sweep/report.json")
    for marker in (*markers, "c/spec.json"):
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_text("{}")
    (tmp_path / "notes").mkdir()  # not an experiment: left out
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path} holds 3 experiments; `rl-gpt info {tmp_path}/NAME` describes one" in out
    listed = [line.split() for line in out.splitlines()[1:]]
    assert listed == [["a", "dataset"], ["b", "dataset,", "model,", "1", "sweep"], ["c", "a", "dataset"]]


def test_a_second_ctrl_c_during_a_said_save_is_not_said_again():
    import signal

    from rl_gpt.interrupt import interrupts_deferred, said_what_was_kept, was_said

    # The second stop, held while the first was saved and said, is raised anew as the block ends:
    # the command line must not add its generic line under the stage's own (#1257d03's double message).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as second:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as stop:
                with interrupts_deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)
                    said_what_was_kept(stop)
                raise
        assert second.value.__context__ is not None and was_said(second.value)
        assert not was_said(KeyboardInterrupt())
    finally:
        signal.signal(signal.SIGINT, outer)
