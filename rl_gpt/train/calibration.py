"""Prompt calibration: the prompt to give the generator so that it achieves what the user asked for.

A generator's achieved metric follows its prompt with a systematic bias (InvertedPendulum: prompt
444 → 349 on average; digits error: 13 % → 20 %). ``rl-gpt calibrate`` measures the achieved
metric over a grid of prompts from the *training* runs' inits, fits a monotone curve
achieved = f(prompt) and stores it next to the model (``calibration.json``); sampling then
conditions on f⁻¹(desired). It corrects the bias shared by all inits, not the spread between
them, and it holds only for the sampler settings it was measured with (guidance, steps, average),
so those are stored and checked.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_gpt.io import atomic_write_json, nulls_as_nan
from rl_gpt.train.modelfile import ModelFileError

__all__ = [
    "CALIBRATION_FILE",
    "PromptCalibration",
    "conditioning_prompts",
    "fit_calibration",
    "load_calibration",
    "model_fingerprint",
    "weights_fingerprint",
]

CALIBRATION_FILE = "calibration.json"


@dataclass
class PromptCalibration:
    """A monotone map from the prompts the generator was given to the metric it achieved."""

    prompts: list[float]  # the grid of prompts the generator was conditioned on
    achieved: list[float]  # mean achieved metric at each, over inits and samples (as measured)
    fitted: list[float]  # the isotonic (non-decreasing) fit of ``achieved`` on ``prompts``
    sampler: dict[str, float]  # guidance, steps, average, rerank: the settings the map holds for
    meta: dict[str, Any] = field(default_factory=dict)  # inits, samples, episodes, runs, seed
    model_sha256: str | None = None  # the weights it was measured for: a retrained model needs a new one

    def matches(self, guidance: float, steps: int, average: int, rerank: int = 1) -> bool:
        """Whether sampling with these settings is what this calibration measured (older files: no reranking)."""
        s = self.sampler
        return (
            float(s["guidance"]) == float(guidance)
            and int(s["steps"]) == int(steps)
            and int(s["average"]) == int(average)
            and int(s.get("rerank", 1)) == int(rerank)
        )

    def measured_for(self, model_dir: str | Path) -> bool:
        """Whether the weights now in ``model_dir`` are the ones this calibration was measured for."""
        weights = Path(model_dir) / "model.safetensors"
        if self.model_sha256 == model_fingerprint(model_dir):
            return True
        # calibrations written before session 27 hashed the whole file, header included
        return self.model_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

    def describe(self) -> str:
        s = self.sampler
        return (
            f"guidance {s['guidance']:g}, {int(s['steps'])} steps, average {int(s['average'])}, "
            f"rerank {int(s.get('rerank', 1))}"
        )

    def conditioning(self, desired: torch.Tensor) -> torch.Tensor:
        """The prompts to condition on so that the achieved metric is ``desired`` (same shape).

        Inverts the fitted curve by linear interpolation; where it is flat, the middle of the flat
        stretch is taken. A desired value at or beyond the highest (lowest) level maps to the
        outermost prompt of that stretch, so the extreme prompts stay extreme and nothing is pushed
        outside the trained range.
        """
        x = np.asarray(self.prompts, dtype=np.float64)
        y = np.asarray(self.fitted, dtype=np.float64)
        levels, which = np.unique(y, return_inverse=True)
        if len(levels) == 1:  # the generator ignored its prompt: nothing to invert
            return desired.clone()
        xs = np.array([x[which == i].mean() for i in range(len(levels))])
        xs[0], xs[-1] = x[which == 0].min(), x[which == len(levels) - 1].max()
        out = np.interp(desired.detach().cpu().double().numpy(), levels, xs)
        return torch.as_tensor(out, dtype=desired.dtype, device=desired.device)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        atomic_write_json(path, asdict(self))
        return path


def fit_calibration(
    prompts: torch.Tensor, achieved: torch.Tensor, sampler: dict[str, float], meta: dict[str, Any] | None = None
) -> PromptCalibration:
    """Fit the map from a grid of ``prompts`` (P,) and the metrics they achieved (K, P[, S]).

    Failed (NaN) samples are left out of the means; a prompt with none left is dropped.
    """
    x = prompts.detach().cpu().double()
    a = achieved.detach().cpu().double().reshape(achieved.shape[0], len(x), -1)
    mean = a.nanmean(dim=(0, 2))
    keep = torch.isfinite(mean)
    if int(keep.sum()) < 2:
        raise ValueError("calibration needs at least two prompts with a finite achieved metric")
    from sklearn.isotonic import IsotonicRegression  # only fitting needs scikit-learn

    x, mean = x[keep].numpy(), mean[keep].numpy()
    fitted = IsotonicRegression(increasing=True).fit(x, mean).predict(x)
    meta = dict(meta or {})
    pooled = torch.isfinite(a) & keep.view(1, -1, 1)
    rho, p_value = _rises(
        prompts.detach().cpu().double().view(1, -1, 1).expand_as(a)[pooled].numpy(), a[pooled].numpy()
    )
    meta |= {"spearman_rho": rho, "spearman_p": p_value}
    if p_value is not None and not p_value < RISE_P_VALUE:  # a staircase of noise (or NaN: a constant grid)
        fitted = np.full_like(fitted, float(np.mean(mean)))
    return PromptCalibration(x.tolist(), mean.tolist(), fitted.tolist(), dict(sampler), meta)


#: A calibration is applied only if the achieved metric rises with the prompt at this one-sided
#: significance (Spearman, over every finite sample): a generator that ignores its prompt still gives
#: an isotonic fit with steps, made of noise. Every init is prompted alike, so what an init shares
#: across its samples cannot fake a rise.
RISE_P_VALUE = 0.01
# Fewer samples than this are not tested (rho and p recorded as None) and the fit is applied: a tiny
# calibration (the tests', 2 inits x 3 prompts) has too little to tell noise from a rise.
_FEWEST_TO_TEST = 8


def _rises(prompts: np.ndarray, achieved: np.ndarray) -> tuple[float | None, float | None]:
    """Spearman's rho of prompt and achieved metric and its one-sided p-value; (None, None) when untested."""
    if len(prompts) < _FEWEST_TO_TEST:
        return None, None
    if np.ptp(achieved) == 0 or np.ptp(prompts) == 0:  # no rank order on one side: no rise to find
        return float("nan"), 1.0
    from scipy.stats import spearmanr

    result = spearmanr(prompts, achieved, alternative="greater")
    return float(result[0]), float(result[1])


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of the model's weights (names, dtypes, shapes, values; not the file's header, whose save
    id changes when the same weights are saved again): a calibration holds for these weights only."""
    from safetensors.torch import load_file

    return weights_fingerprint(load_file(str(Path(model_dir) / "model.safetensors")))


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`model_fingerprint` of weights in memory (a loaded model's ``state_dict()``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_calibration(model_dir: str | Path) -> PromptCalibration | None:
    """The model's ``calibration.json``, or None where it has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        cal = PromptCalibration(**nulls_as_nan(json.loads(path.read_text(encoding="utf-8"))))
        _check(cal)
        return cal
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise ModelFileError(
            f"{path} is not a prompt calibration ({err}); delete it or run `rl-gpt calibrate` again"
        ) from err


def _check(cal: PromptCalibration) -> None:
    """Raise ValueError unless ``cal`` is a curve that can be inverted and says what it holds for."""
    prompts, achieved, fitted = (np.asarray(v, dtype=np.float64) for v in (cal.prompts, cal.achieved, cal.fitted))
    if not (prompts.ndim == 1 and len(prompts) >= 2 and prompts.shape == achieved.shape == fitted.shape):
        raise ValueError("prompts, achieved and fitted must be lists of equal length, at least 2")
    if not (np.isfinite(prompts).all() and np.isfinite(fitted).all()) or (np.diff(fitted) < 0).any():
        raise ValueError("fitted must be finite and never decreasing")
    if not {"guidance", "steps", "average"} <= set(cal.sampler):
        raise ValueError("sampler must name guidance, steps and average")
    if cal.model_sha256 is not None and not isinstance(cal.model_sha256, str):
        raise ValueError("model_sha256 must be a string")


def conditioning_prompts(
    model_dir: str | Path,
    desired: torch.Tensor,
    guidance: float,
    steps: int,
    average: int,
    use: bool = True,
    bounds: tuple[float, float] | None = None,
    rerank: int = 1,
) -> tuple[torch.Tensor, PromptCalibration | None]:
    """The prompts to condition on for ``desired`` metrics, and the calibration applied (None: as given).

    A calibration measured for other weights (a retrained model) or with other sampler settings is
    not applied, with a warning saying how to refit it. ``bounds`` (the training data's metric
    range) clamps what the generator is conditioned on: it never saw a metric outside them, and
    asked for one it extrapolates badly (CartPole prompted 0, below the lowest return in its data,
    ~9, gave 118-154 on average; docs/results.md).
    """
    if bounds is not None:
        desired = desired.clamp(min(bounds), max(bounds))
    cond, cal = _calibrated(model_dir, desired, guidance, steps, average, rerank, use)
    if bounds is not None:
        cond = cond.clamp(min(bounds), max(bounds))
    return cond, cal


def _calibrated(
    model_dir: str | Path, desired: torch.Tensor, guidance: float, steps: int, average: int, rerank: int, use: bool
) -> tuple[torch.Tensor, PromptCalibration | None]:
    cal = load_calibration(model_dir) if use else None
    if cal is None:
        return desired, None
    if not cal.measured_for(model_dir):
        warnings.warn(
            f"{Path(model_dir) / 'calibration.json'} was not measured for these weights (the model was trained "
            "again since, or the file names none): prompts are used as given; run `rl-gpt calibrate` to calibrate them",
            stacklevel=2,
        )
        return desired, None
    if not cal.matches(guidance, steps, average, rerank):
        warnings.warn(
            f"{Path(model_dir) / 'calibration.json'} was measured with {cal.describe()}, not guidance "
            f"{guidance:g}, {steps} steps, average {average}, rerank {rerank}: prompts are used as given; sample "
            "with its settings (generate --guidance/--steps/--average/--rerank, sweep guidance= sweep.steps= "
            "average= rerank=) or run `rl-gpt calibrate` with these",
            stacklevel=2,
        )
        return desired, None
    if len(set(cal.fitted)) == 1:  # flat (no rise with the prompt): it would change no prompt, so none is applied
        return desired, None
    low, high = min(cal.prompts), max(cal.prompts)
    slack = 0.05 * (high - low)
    if float(desired.min()) < low - slack or float(desired.max()) > high + slack:
        a, b = float(desired.min()), float(desired.max())
        asked = f"{a:.4g}" if a == b else f"{a:.4g} to {b:.4g}"
        warnings.warn(
            f"{Path(model_dir) / 'calibration.json'} was measured over prompts [{low:.4g}, {high:.4g}], which do not "
            f"cover {asked}: all prompts are used uncalibrated. Within the training runs' range, `rl-gpt calibrate "
            "'task.metric_range=[LOW, HIGH]'` can measure a wider one; beyond it no calibration exists",
            stacklevel=2,
        )
        return desired, None
    return cal.conditioning(desired), cal
