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

__all__ = ["Terminated", "sigterm_as_interrupt"]


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
