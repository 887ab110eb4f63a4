"""Command-line arguments shared by the tests that run the real CLI on a tiny CartPole experiment
(the ``experiment`` fixture in ``conftest.py``; ``test_train_cli.py``, ``test_sweep_cli.py`` and the others)."""

from __future__ import annotations

QUIET = ["wandb.mode=disabled", "-q"]
TINY_MODEL = [
    "model=mlp",
    "train.model_overrides={width: 32, depth: 1}",
    "batch=32",
    "train.probe_every_s=0",
    "train.log_every=5",
    "train.test_fraction=0.25",
    "train.calibrate=false",  # the tests that calibrate ask for it
]
