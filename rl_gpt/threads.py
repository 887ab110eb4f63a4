"""Temporarily set torch's intra-op thread count (restored on exit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave the setting alone).

    Small batched ops gain nothing from threads, and on a busy 2-core box spinning threads made
    them 10-100x slower; callers that know their work is small ask for one.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
