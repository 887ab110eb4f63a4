"""Evaluation seeds per purpose, so that evaluations made for different purposes share no start states.

On the Gymnasium fallback (tasks without a pure-torch port in ``envs/``) episode ``e`` starts at
``reset(seed=seed + e)``, so two evaluations whose seeds differ by less than their episode count
share most of their start states: a sweep at ``seed + 2`` and a calibration at ``seed + 8``, 64
episodes each, shared 58 until session 35. Each purpose now starts at ``seed + offset × STRIDE``,
further apart than any episode count. The pure-torch ports draw every seed's starts from its own
generator, so there it changes which starts are drawn, not how many are shared. The training labels
keep ``collect.eval_seed`` (10,000 by default), far from these.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["STRIDE", "Purpose", "evaluation_seed"]

STRIDE = 1_000_000  # more episodes than any evaluation runs


class Purpose(IntEnum):
    """What an evaluation is for; its value is the seed's offset in strides."""

    SWEEP = 2  # the sweep's networks, its inits and baselines; `generate`'s outputs, measured alike
    RECURSIVE = 4  # recursive prompting's steps
    CALIBRATION = 8  # the calibration's networks, from training runs' inits
    TRAINING_PROBE = 16  # training's alignment probes and alignment.json


def evaluation_seed(seed: int, purpose: Purpose) -> int:
    """The evaluation seed of ``purpose`` for the user's ``seed`` (``sweep.seed``, ``generate --seed``)."""
    return seed + int(purpose) * STRIDE
