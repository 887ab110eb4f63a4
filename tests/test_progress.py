"""Progress bars: redrawn in place on a terminal, rarely when their stream is a log file."""

from __future__ import annotations

import io
import itertools

import pytest
import tqdm.std

from rl_gpt.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm's clock advances 1 ms per reading: a 2,000-step loop lasts seconds, however fast the machine."""
    ticks = itertools.count()
    monkeypatch.setattr(tqdm.std, "time", lambda: 1_000.0 + next(ticks) * 1e-3)


def _draws(stream: io.StringIO, steps: int = 2_000) -> int:
    """How many times a bar over ``steps`` steps (a postfix set every 50) drew itself."""
    with progress_bar(total=steps, file=stream, miniters=1) as bar:
        for step in range(steps):
            if step % 50 == 0:
                bar.set_postfix(loss=f"{1 / (step + 1):.4f}", refresh=False)
            bar.update(1)
    return stream.getvalue().count("\r")


def test_a_bar_writing_to_a_file_draws_only_its_first_and_last_state(clock: None) -> None:
    log = io.StringIO()
    assert _draws(log) <= 3  # start, end and close
    assert "2000/2000" in log.getvalue()  # the last state is still written


def test_a_bar_on_a_terminal_keeps_redrawing_in_place(clock: None) -> None:
    assert _draws(_Terminal()) > 10


def test_an_explicit_interval_wins() -> None:
    with progress_bar(total=1, file=io.StringIO(), mininterval=0.5) as bar:
        assert bar.mininterval == 0.5
    with progress_bar(total=1, file=io.StringIO()) as bar:
        assert bar.mininterval == LOG_INTERVAL_S


def test_a_bar_writing_to_a_file_still_shows_progress_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(tqdm.std, "time", lambda: 1_000.0 + next(ticks) * 0.1)  # 2,000 steps: minutes of "time"
    draws = _draws(io.StringIO())
    assert 3 < draws < 30  # a redraw every 30 s of them, not one per step
