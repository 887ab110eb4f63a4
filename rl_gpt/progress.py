"""Progress bars that stay readable in a job's log file.

On a terminal tqdm redraws a bar in place. Redirected to a file (``nohup``, SLURM, CI) every redraw
is appended instead: a 4,000-step training wrote ~4,000 copies of its bar, about 600 KB of log. So
when the bar's stream is not a terminal it redraws at most every ``LOG_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 30.0  # seconds between redraws when the bar writes to a file

# tqdm's default lock includes a multiprocessing semaphore; a command ended by a second Ctrl-C
# (os._exit) never frees it and Python's resource tracker then warns of a leak. No bar here is
# drawn from another process, so a thread lock is all that is needed.
tqdm.set_lock(threading.RLock())


def _is_interactive(stream: Any) -> bool:
    """A terminal, or a notebook (whose streams are not terminals but redraw widgets in place)."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``, redrawn at most every ``LOG_INTERVAL_S`` seconds when writing to a file.

    An explicit ``mininterval`` wins. Postfix changes should pass ``refresh=False``: a forced redraw
    ignores the interval."""
    stream = kwargs.get("file") or sys.stderr
    if not _is_interactive(stream):
        interval = kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        # tqdm's monitor thread forces a redraw after maxinterval (10 s) without one: not sooner than the interval
        kwargs.setdefault("maxinterval", max(10.0, interval))
    return tqdm(*args, **kwargs)
