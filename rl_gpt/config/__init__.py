"""Typed experiment configuration: dataclass defaults, YAML presets that override, CLI overrides.

One :class:`ExperimentConfig` drives every stage (collect, train, sweep). Its defaults are the
embedded CartPole demo; a file in ``configs/`` overrides only what differs, and ``key=value``
arguments override both. Unknown keys and wrong types are refused before any work starts, with
a message naming the key.

``schema``: the sections' dataclasses, short names and bounds; ``presets``: finding and merging YAML
files; ``checks``: YAML data checked into the dataclasses; ``load``: ``load_config`` and its hints.
"""

from .load import load_config, task_config
from .presets import PRESETS, find_preset, load_yaml_file
from .schema import (
    ALIASES,
    CollectConfig,
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    TaskConfig,
    TrainConfig,
    WandbConfig,
    dump_yaml,
    to_dict,
)

__all__ = [
    "ALIASES",
    "PRESETS",
    "CollectConfig",
    "ConfigError",
    "ExperimentConfig",
    "SweepConfig",
    "TaskConfig",
    "TrainConfig",
    "WandbConfig",
    "dump_yaml",
    "find_preset",
    "load_yaml_file",
    "load_config",
    "task_config",
    "to_dict",
]
