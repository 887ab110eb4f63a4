"""The metrics ``generate`` is prompted with: read, checked, and warned about outside the training range."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

from rl_gpt.config import ConfigError

__all__ = ["check_fraction_targets", "read_targets", "warn_outside_training_range"]


def read_targets(target: float | Sequence[float]) -> list[float]:
    """One target or several as a list of distinct floats, in the order given; refuses none or a non-finite one.
    A scalar (a Python, numpy or 0-d torch number) is one target; a string is refused, not read character by
    character ("500" would be targets 5 and 0)."""
    if isinstance(target, (str, bytes)):
        raise TypeError(f"target {target!r} is text: pass a number or a sequence of numbers (e.g. 500 or [100, 500])")
    if isinstance(target, numbers.Real) or getattr(target, "ndim", None) == 0:
        target = [target]  # type: ignore[list-item]
    targets = list(dict.fromkeys(float(t) for t in target))
    if not targets:
        raise ValueError("no target given: pass one or more values to --target-return (or --target)")
    if not all(math.isfinite(t) for t in targets):
        raise ValueError(f"targets must be finite numbers, got {', '.join(f'{t:g}' for t in targets)}")
    return targets


def check_fraction_targets(metric: str | None, targets: Sequence[float]) -> None:
    """Refuse test-error targets outside [0, 1]: errors are fractions, and a percentage (5 for 5 %)
    would otherwise be clamped to the range's worst end and give a near-random classifier."""
    if metric != "test_error":
        return
    wrong = [t for t in targets if not 0.0 <= t <= 1.0]
    if wrong:
        example = next((t for t in wrong if 1 < t <= 100), None)
        hint = f" (for {example:g} % pass {example / 100:g})" if example is not None else ""
        shown = ", ".join(f"{t:g}" for t in wrong)
        raise ConfigError(f"target {shown}: the model's metric test_error is a fraction from 0 to 1{hint}")


def warn_outside_training_range(targets: Sequence[float], low: float, high: float, extrapolate: bool) -> None:
    """Warn of targets outside the training runs' metric range [low, high], saying what they are conditioned on."""
    outside = [t for t in targets if not low <= t <= high]
    if outside:
        then = "conditioning on them as given" if extrapolate else "conditioning on the range's nearest end instead"
        listed = ", ".join(f"{t:g}" for t in outside)
        which = f"target {listed} lies" if len(outside) == 1 else f"targets [{listed}] lie"
        warnings.warn(
            f"{which} outside the range of the runs the model trained on "
            f"[{low:.4g}, {high:.4g}] (held-out runs excluded), where the generator extrapolates poorly; {then}",
            stacklevel=4,  # the caller of generate or generate_params
        )
