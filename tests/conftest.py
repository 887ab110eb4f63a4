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


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches rl_gpt writes for read-only model folders (rankers) go to a temporary folder, not ~/.cache;
    so do W&B's own files of offline runs (its logs, and the staging copies of logged tables, which it
    otherwise leaves read-only in ~/.local/share/wandb after every run of the suite)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for variable, folder in (("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        monkeypatch.setenv(variable, str(cache / folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(cache / "wandb-config"))
