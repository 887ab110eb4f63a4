"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import QUIET, TINY_MODEL

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


@pytest.fixture(scope="session")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CartPole experiment (4 collected runs, a 30-step model), built once for the whole run and shared
    by every test file that runs the CLI on it: tests read it, and copy what they change.

    Its ranker is fitted here too. Ranked sweeps and generates fit a missing one and store it beside the model,
    so without it the folder would change under the tests, and what a test sees would depend on which ran first
    (``test_generate_params_samples_in_memory_what_generate_writes`` checks that nothing is written)."""
    from rl_gpt.cli import main
    from rl_gpt.dataset import CheckpointDataset
    from rl_gpt.train.modelfile import read_model_info
    from rl_gpt.train.ranker import fit_ranker

    out = tmp_path_factory.mktemp("exp")
    assert (
        main(
            [
                "collect",
                "cartpole",
                f"out={out}",
                "runs=4",
                "timesteps=1024",
                "collect.checkpoint_every=256",
                "task.n_envs=2",
                "workers=1",
                "collect.eval_episodes=2",
                *QUIET,
            ]
        )
        == 0
    )
    assert main(["train", "cartpole", f"out={out}", "steps=30", "train.ckpt_every=10", *TINY_MODEL, *QUIET]) == 0
    meta = read_model_info(out / "model")["meta"]
    fit_ranker(CheckpointDataset(out / "dataset"), meta["train_runs"], meta["test_runs"]).save(out / "model")
    return out
