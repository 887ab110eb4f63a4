"""Checkpoint collection: SB3 runs (and supervised runs) executed locally or on Ray."""

from rl_gpt.collect.executor import collect, dataset_spec

__all__ = ["collect", "dataset_spec"]
