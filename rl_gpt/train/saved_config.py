"""The config to sweep, calibrate or sample a model with: the one saved beside it, read as this user's.

Torch-free until it falls back to ``model.json`` (importing :mod:`rl_gpt.train.modelfile` loads torch), so
``rl-gpt sweep --model DIR`` says a typo in its overrides at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl_gpt.config import ExperimentConfig, load_config, load_yaml_file

__all__ = ["load_model_config", "logging_as_asked", "sampled_as_saved"]

# The commands that log to W&B, as the note names what they log; generate logs nothing.
_LOGGED = {"sweep": "sweep", "calibrate": "calibration"}


def load_model_config(
    model_dir: str | Path, overrides: Sequence[str] = (), command: str | None = None
) -> ExperimentConfig:
    """The config saved with the model in ``model_dir`` (its task's sweep settings, not the embedded
    CartPole's), with ``overrides`` on top: its ``config.yaml``, else the copy in its ``model.json`` (a
    folder copied without the YAML), else the embedded default.

    Read as :func:`sampled_as_saved` and :func:`logging_as_asked` say: an old model samples as its sweeps
    and calibration were measured (``sweep.rerank: 1``), and the folder's maker does not choose that this
    user's results go to a W&B server or team. ``command`` (``sweep``, ``calibrate``, ...) selects the
    short names of :func:`rl_gpt.config.load_config`, and for a command that logs, a note on stderr where
    online logging was dropped. The config's ``out`` (so ``cfg.model_dir``) is where the model was trained,
    maybe elsewhere for a copied folder: pass ``model_dir`` itself to ``sweep`` / ``calibrate``."""
    return load_config(_saved_config(model_dir, overrides, command), overrides, command=command)


def _saved_config(model_dir: str | Path, overrides: Sequence[str], command: str | None) -> str | dict[str, Any] | None:
    saved = Path(model_dir) / "config.yaml"
    if saved.is_file():
        stored = load_yaml_file(saved)
        if not isinstance(stored, dict):
            return str(saved)  # load_config says what is wrong with it
        return logging_as_asked(sampled_as_saved(stored), model_dir, overrides, command)
    try:
        from rl_gpt.train.modelfile import read_model_info

        stored = read_model_info(model_dir)["meta"]["config"]
        stored = logging_as_asked(sampled_as_saved(stored), model_dir, overrides, command)
        load_config(stored)  # written by an older version with keys that are gone: use the default
        return stored
    except (OSError, ValueError, KeyError, TypeError):  # no model, or an unreadable copy: the default
        return None


def logging_as_asked(
    config: dict[str, Any], model_dir: str | Path, overrides: Sequence[str] = (), command: str | None = None
) -> dict[str, Any]:
    """A model's saved config without its W&B ``mode: online`` and ``entity``: whoever made the folder
    (maybe someone else) does not decide that this command's results go to a server, or to whose team.
    Logging stays offline unless this command asks (``wandb.mode=online`` in ``overrides``, ``WANDB_MODE``).
    A saved ``project: rl_gpt``, the default written out before it became ``WANDB_PROJECT``'s, is dropped
    too. Where online logging is dropped for a command that logs, a one-line note on stderr says so."""
    saved = config.get("wandb")
    if isinstance(saved, dict) and saved.get("project") == "rl_gpt":  # the default until session 33 wrote it out:
        saved = {k: v for k, v in saved.items() if k != "project"}  # WANDB_PROJECT may name the project
        config = {**config, "wandb": saved}
    if not isinstance(saved, dict) or (saved.get("mode") != "online" and saved.get("entity") is None):
        return config
    kept = {k: v for k, v in saved.items() if k not in ("mode", "entity") or (k == "mode" and v != "online")}
    asked = os.environ.get("WANDB_MODE") or any(o.startswith(("wandb.mode=", "wandb=")) for o in overrides)
    logged = _LOGGED.get(command or "")
    if saved.get("mode") == "online" and not asked and logged:
        print(
            f"{model_dir} was trained with wandb.mode=online; this {logged} logs offline unless asked "
            "(wandb.mode=online, and wandb.entity=... for a team)",
            file=sys.stderr,
        )
    return {**config, "wandb": kept}


def sampled_as_saved(config: dict[str, Any]) -> dict[str, Any]:
    """A model's saved config, with ``sweep.rerank: 1`` where it predates ranking (session 19): its
    sweeps and its calibration.json were measured without it."""
    sweep = config.get("sweep")
    if isinstance(sweep, dict) and "rerank" not in sweep:
        config = {**config, "sweep": {**sweep, "rerank": 1}}
    return config
