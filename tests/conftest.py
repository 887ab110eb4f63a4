"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rl_gpt.threads import torch_threads


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls: one thread is several times faster than two on a shared 2-core box."""
    with torch_threads(1):
        yield
