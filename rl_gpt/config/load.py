"""``load_config``: defaults, then a config file, then ``key=value`` overrides, each checked, with hints
for the mistakes people make (a short name another command has, a mapping replaced by accident)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .checks import build
from .presets import DuplicateKeyError, parse_yaml, read_preset, warn_if_env_outgrows_task
from .schema import ALIASES, WANDB_MODE_ALIASES, ConfigError, ExperimentConfig, TaskConfig


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), command: str | None = None
) -> ExperimentConfig:
    """Defaults, then the YAML file (if any; or its sections as a mapping), then ``key=value``
    overrides; validated throughout."""
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = read_preset(str(source)) if source is not None else {}
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:  # wandb.init's mode argument beats the variable; honour it ourselves, below the command line
        mode = WANDB_MODE_ALIASES.get(env_mode, env_mode)
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not offline, online or disabled; unset it or fix it")
        _set_path(data, ["wandb", "mode"], mode)
    aliases = ALIASES.get(command or "", {})
    preset_task = copy.deepcopy(data.get("task")) if isinstance(data.get("task"), dict) else {}
    overridden: set[str] = set()
    # The default hyperparams and policy_kwargs are PPO's on CartPole: only a PPO policy task starts from them.
    default_task = _final_task_value(data, overrides, aliases, "kind", "rl") == "rl"
    default_task &= _final_task_value(data, overrides, aliases, "algo", "ppo") == "ppo"
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        key = aliases.get(key, key)
        if "." not in key and key not in _TOP_LEVEL:
            raise ConfigError(_unknown_short_name(key, aliases))
        try:
            value = parse_yaml(raw) if raw else ""
        except DuplicateKeyError as exc:  # not text: the mapping it is would keep the last silently
            raise ConfigError(f"{key}={raw}: {exc.problem}") from None
        except yaml.YAMLError:
            value = raw
        quoted = raw.lstrip().startswith(("'", '"', "[", "{"))  # YAML's own way to keep a '#': read as YAML
        if not quoted and (raw.startswith("#") or " #" in raw or "\t#" in raw):  # else a comment: `out=run #2`
            value = raw
        if key in _SECTIONS and value in (None, {}, ""):  # an empty section in a file keeps the base's values
            default = "the built-in CartPole task" if key == "task" else "its built-in defaults"
            raise ConfigError(
                f"{key}={raw} would reset the whole {key} section to {default}; "
                f"set single fields ({key}.FIELD=VALUE) or use another config"
            )
        if default_task:
            _seed_default_mapping(data, key.split("."))
        before = _get_path(data, key.split("."))
        if before is None and (default_task or not key.startswith("task.")):  # a mapping left at its default
            before = _default_mapping(key.split("."))
        _warn_if_mapping_replaced(key, before, value)
        _set_path(data, key.split("."), value)
        overridden.add(key)
    warn_if_env_outgrows_task(preset_task, data.get("task"), overridden)
    if env_mode and "wandb" in overridden and "wandb.mode" not in overridden:
        replaced = data.get("wandb")  # `wandb={project: p}` replaced the mapping WANDB_MODE had set the mode in
        if isinstance(replaced, dict) and "mode" not in replaced:
            replaced["mode"] = mode
    section = data.get("wandb")
    if isinstance(section, dict) and isinstance(section.get("mode"), str) and section["mode"] in WANDB_MODE_ALIASES:
        section["mode"] = WANDB_MODE_ALIASES[section["mode"]]  # wandb's older names, taken as WANDB_MODE takes them
    _refuse_interpolation(data, "")
    cfg = build(ExperimentConfig, data, "")
    if cfg.task.kind == "rl" and cfg.task.network:
        raise ConfigError(
            f"task.network: {cfg.task.network!r} names a classifier, but task.kind is rl (the default); add "
            "task.kind: supervised for a classifier task, or drop task.network"
        )
    _warn_if_sampled_over(cfg, overridden)
    return cfg


def _refuse_interpolation(value: Any, key: str) -> None:
    """A ``${...}`` in a value (OmegaConf's interpolation: ``out: runs/${task.name}``, ``${oc.env:HOME}``) is
    refused: nothing expands it here, and ``out`` would name a folder called ``runs/${task.name}``."""
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_interpolation(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_interpolation(v, f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value:
        raise ConfigError(
            f"{key}: {value!r} holds ${{...}}, which rl_gpt configs do not interpolate (they are plain YAML, not "
            "OmegaConf); write the value out, or let the shell expand a variable on the command line (out=$HOME/x)"
        )


def _warn_if_sampled_over(cfg: ExperimentConfig, overridden: set[str]) -> None:
    """A ``task.hyperparams.X=`` override that ``collect.sample_hyperparams`` draws anew for every run
    (the digits preset's ``lr``) changes nothing: say so instead of ignoring it."""
    given = {k.removeprefix("task.hyperparams.") for k in overridden if k.startswith("task.hyperparams.")}
    if "task.hyperparams" in overridden:
        given |= set(cfg.task.hyperparams)
    drawn = sorted(given & set(cfg.collect.sample_hyperparams))
    if drawn:
        names = ", ".join(f"task.hyperparams.{k}" for k in drawn)
        warnings.warn(
            f"collect.sample_hyperparams draws {', '.join(drawn)} for every run, so {names} is not used; "
            f"set 'collect.sample_hyperparams={{}}' (or drop those keys from it) to train every run with it",
            stacklevel=3,
        )


_TOP_LEVEL = frozenset(f.name for f in dataclasses.fields(ExperimentConfig))
_SECTIONS = frozenset(k for k, v in vars(ExperimentConfig()).items() if dataclasses.is_dataclass(v))


#: Constructor arguments of SB3's PPO and SAC and of the classifiers' training (``task.hyperparams``),
#: named in a hint when given as a short name.
_TRAINING_ARGUMENTS = frozenset(
    [
        "n_steps",
        "batch_size",
        "n_epochs",
        "gamma",
        "gae_lambda",
        "ent_coef",
        "vf_coef",
        "max_grad_norm",
        "learning_rate",
        "clip_range",
        "clip_range_vf",
        "normalize_advantage",
        "target_kl",
        "use_sde",
        "sde_sample_freq",
        "buffer_size",
        "learning_starts",
        "tau",
        "train_freq",
        "gradient_steps",
        "target_update_interval",
        "target_entropy",
        "optimize_memory_usage",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "steps",
    ]
)


def _unknown_short_name(key: str, aliases: Mapping[str, str]) -> str:
    """The message for ``key=value`` whose key is neither a short name nor a section.key."""
    hints = typing.get_type_hints(ExperimentConfig)
    sections = {name: tp for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    dotted = [f"{name}.{f.name}" for name, tp in sections.items() for f in dataclasses.fields(tp)]
    same_leaf = [d for d in dotted if d.endswith(f".{key}")]
    if key in _TRAINING_ARGUMENTS:  # n_steps=64 as rl-baselines3-zoo spells it: a run's hyperparameter
        if key == "learning_rate" and "lr" in aliases:  # train: the generator's, more likely meant
            same_leaf.append(f"lr ({aliases['lr']})")
        same_leaf.append(f"task.hyperparams.{key}")
    if same_leaf:  # e.g. seed= where the command has no short name for it: several sections have one
        return f"unknown config key {key}; did you mean {' or '.join(same_leaf)}?"
    short = [*aliases, *sorted(_TOP_LEVEL)]
    close = difflib.get_close_matches(key, short, n=1) or difflib.get_close_matches(
        key, [d.split(".", 1)[1] for d in dotted], n=1
    )
    if close and close[0] in aliases:
        return f"unknown config key {key}; did you mean {close[0]} ({aliases[close[0]]})?"
    if close and close[0] in _TOP_LEVEL:
        return f"unknown config key {key}; did you mean {close[0]}?"
    if close:
        full = [d for d in dotted if d.endswith(f".{close[0]}")]
        return f"unknown config key {key}; did you mean {' or '.join(full)}?"
    names = ", ".join([*aliases, "out", "dataset"])
    return f"unknown config key {key}; use section.key (e.g. train.steps) or one of: {names}"


def task_config(data: Mapping[str, Any]) -> TaskConfig:
    """A TaskConfig from the ``task`` section a dataset or model stores, checked like a config file's."""
    return build(TaskConfig, data, "task.")


def _final_task_value(data: dict, overrides: Sequence[str], aliases: Mapping[str, str], key: str, default: str) -> Any:
    """``task.KEY`` as the config will end up with it: the last override that sets it, else the file's."""
    value = (data.get("task") or {}).get(key, default) if isinstance(data.get("task"), dict) else default
    for item in overrides:
        name, _, raw = item.partition("=")
        if aliases.get(name, name) == f"task.{key}":
            value = raw.strip()
    return value


def _seed_default_mapping(data: dict, keys: list[str]) -> None:
    """Before ``section.mapping.key=value`` sets one key of a mapping field the config leaves at its
    default, copy the default in: ``task.hyperparams.n_steps=64`` on the embedded CartPole must change
    that one of its tuned hyperparameters, not replace them all with SB3's defaults."""
    cls: Any = ExperimentConfig
    for key in keys[:-1]:
        if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
            return
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key not in fields:
            return  # refused later, with a hint
        tp = typing.get_type_hints(cls)[key]
        if dataclasses.is_dataclass(tp):
            cls, data = tp, data.setdefault(key, {})  # as _set_path would make it
            continue
        factory = fields[key].default_factory
        if typing.get_origin(tp) is dict and key not in data and factory is not dataclasses.MISSING:
            data[key] = factory()  # a fresh copy of the default
        return


def _get_path(data: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def _default_mapping(keys: list[str]) -> dict | None:
    """The default of a mapping field (``task.hyperparams``: PPO's CartPole settings), not of a section:
    a section given in part keeps its other fields' defaults."""
    obj: Any = ExperimentConfig()
    for k in keys:
        obj = getattr(obj, k, None) if dataclasses.is_dataclass(obj) else obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else None


def _warn_if_mapping_replaced(key: str, old: Any, new: Any) -> None:
    """``key={a: 1}`` replaces the whole mapping (``{}`` clears it, on purpose): say which of the keys it
    had are gone, since ``key.a=1`` is what changes one field."""
    if not (isinstance(old, dict) and isinstance(new, dict) and new):
        return
    from_environment = {"mode"} if key == "wandb" else set()  # WANDB_MODE's, set below the command line
    dropped = [k for k in old if k not in new and k not in from_environment]
    if dropped:
        listed = ", ".join(f"{k}: {_scalar_text(old[k])}" for k in dropped)
        warnings.warn(
            f"{key}={{...}} replaces the whole mapping, dropping {listed}; to change single fields write "
            f"{key}.FIELD=VALUE (e.g. {key}.{next(iter(new))}=...)",
            stacklevel=3,
        )


def _scalar_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = data.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {k} is not a section")
        data = nxt
    data[keys[-1]] = value
