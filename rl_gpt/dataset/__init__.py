"""The checkpoint dataset: writer (atomic run append, resume), reader and pair sampling."""

from rl_gpt.dataset.pairs import Normalizer, PairSampler, split_runs
from rl_gpt.dataset.store import (
    FORMAT,
    CheckpointDataset,
    DatasetError,
    DatasetWriter,
    collected_otherwise,
    read_spec,
    task_record,
)

__all__ = [
    "FORMAT",
    "CheckpointDataset",
    "DatasetError",
    "DatasetWriter",
    "Normalizer",
    "PairSampler",
    "collected_otherwise",
    "read_spec",
    "split_runs",
    "task_record",
]
