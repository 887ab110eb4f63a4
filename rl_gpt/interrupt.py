"""Treat a polite stop (SIGTERM) like Ctrl-C, so long jobs save before they exit.

Schedulers (SLURM, Kubernetes, systemd) and a plain ``kill`` stop a job with SIGTERM, and a job
started in the background of a non-interactive shell (``nohup cmd &``) ignores SIGINT altogether.
Training saves a resumable checkpoint on ``KeyboardInterrupt`` and collection consolidates what it
stored; raising :class:`Terminated` (a ``KeyboardInterrupt``) for SIGTERM gives them the same chance.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Terminated", "sigint_deferred", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_as_interrupt`."""


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
def sigint_deferred() -> Iterator[None]:
    """Within the block a Ctrl-C (SIGINT) waits: the previous handler gets it when the block ends.

    For the work a first Ctrl-C starts (saving what is done, saying so), which a second one must not
    cut short: a key pressed twice, or `timeout -s INT`, which signals its child and then the child's
    whole process group, so the child may get two. The Python-level handler is swapped rather than
    the signal blocked: a blocked mask holds for one thread only, and any other thread (a progress
    bar's monitor) would still take the signal for the main thread. Main thread only; elsewhere the
    block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous: Any = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt here
