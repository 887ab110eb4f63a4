"""Treat a polite stop (SIGTERM) like Ctrl-C, so long jobs save before they exit.

Schedulers (SLURM, Kubernetes, systemd) and a plain ``kill`` stop a job with SIGTERM, and a job
started in the background of a non-interactive shell (``nohup cmd &``) ignores SIGINT altogether.
Training saves a resumable checkpoint on ``KeyboardInterrupt`` and collection consolidates what it
stored; raising :class:`Terminated` (a ``KeyboardInterrupt``) for SIGTERM gives them the same chance.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Terminated", "interrupts_deferred", "said_what_was_kept", "sigterm_as_interrupt", "was_said"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_as_interrupt`."""


def said_what_was_kept(stop: BaseException) -> None:
    """Mark a stop (Ctrl-C, SIGTERM) whose handler has said what was kept and how to go on, so that the
    command line does not add its own, more general line."""
    stop.rl_gpt_said = True  # type: ignore[attr-defined]


def was_said(stop: BaseException) -> bool:
    """Whether a handler has said what this stop kept (:func:`said_what_was_kept`), or this stop came
    while one that was said was being handled: a second Ctrl-C held by :func:`interrupts_deferred`
    is raised anew as the block ends, with the first as its ``__context__``."""
    seen: set[int] = set()
    link: BaseException | None = stop
    while link is not None and id(link) not in seen:
        if getattr(link, "rl_gpt_said", False):
            return True
        seen.add(id(link))
        link = link.__context__
    return False


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after.

    Signal handlers can only be set from the main thread; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred(notice: str | None = None, quiet_s: float = 1.0) -> Iterator[None]:
    """Within the block a Ctrl-C (SIGINT) or SIGTERM waits: the first one that came is sent again
    to the previous handlers when the block ends.

    For the work a first stop starts (saving what is done, saying so), which a second one must not
    cut short: a key pressed twice, `kill PID` twice, or `timeout`, which signals its child and then
    the child's whole process group, so the child may get two. The Python-level handlers are swapped
    rather than the signals blocked: a blocked mask holds for one thread only, and any other thread
    (a progress bar's monitor) would still take the signal for the main thread. Main thread only;
    elsewhere the block runs unchanged.

    ``notice``: said once on stderr when a signal is held more than ``quiet_s`` after the block began,
    so a user pressing Ctrl-C again during a long save learns why nothing happens; a signal that comes
    with the first (``timeout``'s second) is held silently.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    began, said = time.monotonic(), []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if notice is not None and not said and time.monotonic() - began > quiet_s:
            said.append(True)
            os.write(2, f"\n{notice}\n".encode())  # not print(): the main thread may be inside a write to stderr

    previous: dict[int, Any] = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        # Both handlers go back together: a signal between the two would otherwise run a restored
        # handler while the other is still ours, and a later stop would be held with nobody to send it on.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, set(previous))
        try:
            for sig, handler in previous.items():  # None: a handler set outside Python, which cannot be restored
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if received:
            signal.raise_signal(received[0])  # Python's SIGINT handler raises KeyboardInterrupt here
