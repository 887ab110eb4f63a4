"""Command-line arguments shared by the tests that run the real CLI on a tiny CartPole experiment
(the ``experiment`` fixture in ``conftest.py``; ``test_train_cli.py``, ``test_sweep_cli.py`` and the others)."""

from __future__ import annotations

import sys

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


class OpenWandbRun:
    """A W&B run left open: finishing it says W&B's closing line, so a test sees where that line falls."""

    def finish(self, exit_code: int = 0) -> None:
        print("wandb: You can sync this run", file=sys.stderr)


def ctrl_c_with_a_wandb_run_open(*args: object, **kwargs: object) -> None:
    """Stands in for a stage's W&B logging: a run opened (as ``start_run`` records it), then a Ctrl-C."""
    import rl_gpt.wandb_run

    rl_gpt.wandb_run._started.append(OpenWandbRun())
    raise KeyboardInterrupt
