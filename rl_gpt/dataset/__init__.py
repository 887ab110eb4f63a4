"""The checkpoint dataset: writer (atomic run append, resume), reader and pair sampling."""

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
    "collected_otherwise",
    "read_spec",
    "task_record",
]
