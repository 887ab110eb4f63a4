"""Classifier files: a generated network's ``state_dict`` as safetensors, with what it classifies.

The header's metadata names the network and the data set (and the data folder it was measured
with), so a file can be evaluated without the dataset it came from. Files written before that
metadata existed need the network and data set from elsewhere (``rl-gpt evaluate --dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rl_gpt.supervised.models import CLASSIFIERS, classifier_layout

__all__ = ["ClassifierFile", "ClassifierFileError", "classifier_metadata", "read_classifier_file"]

_KEYS = {"network": "rl_gpt.network", "dataset": "rl_gpt.dataset", "data_root": "rl_gpt.data_root"}


class ClassifierFileError(ValueError):
    """A classifier file that cannot be read as the network it should hold; the message says why."""


@dataclass(frozen=True)
class ClassifierFile:
    params: torch.Tensor  # (D,) float32 in the network's layout order
    network: str  # name in rl_gpt.supervised.CLASSIFIERS
    dataset: str  # digits, mnist or cifar10
    data_root: str | None  # where the data set's files were (None for digits, or unknown)


def classifier_metadata(network: str, data_root: str | Path | None) -> dict[str, str]:
    """The safetensors metadata of a ``network`` classifier file (strings only, as the format requires).

    The data set is the network's own; ``data_root`` is stored as an absolute path, so the file is
    measured alike from any working directory."""
    meta = {_KEYS["network"]: network, _KEYS["dataset"]: CLASSIFIERS[network].dataset}
    if data_root is not None:
        meta[_KEYS["data_root"]] = str(Path(data_root).resolve())
    return meta


def _network_of_shapes(state: dict[str, torch.Tensor]) -> str | None:
    """The one task network whose parameter names and shapes ``state`` holds exactly (a state_dict saved
    without rl_gpt's header, e.g. by ``export_safetensors`` or the user's own code), else None."""
    shapes = {name: tuple(value.shape) for name, value in state.items()}
    matches = [
        name
        for name in CLASSIFIERS
        if shapes == {spec.name: tuple(spec.shape) for spec in classifier_layout(name).params}
    ]
    return matches[0] if len(matches) == 1 else None


def read_classifier_file(
    path: str | Path, network: str | None = None, dataset: str | None = None, default_network: str | None = None
) -> ClassifierFile:
    """Load ``path`` (safetensors; nothing is unpickled) as a flat classifier.

    ``network``/``dataset`` override the file's metadata and are required for files without it,
    unless ``default_network`` (with its own data set) stands in for the missing metadata; a network
    is tested only on its own data set.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ClassifierFileError(f"no classifier file {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        import zipfile

        if zipfile.is_zipfile(path):  # an SB3 policy given where a classifier belongs
            raise ClassifierFileError(
                f"{path} is a zip (an SB3 policy?), not a classifier: classifier tasks take a .safetensors state "
                "dict, as rl-gpt generate writes it"
            ) from None
        raise ClassifierFileError(f"{path} is not a readable safetensors file ({exc})") from None
    network = network or meta.get(_KEYS["network"]) or default_network or _network_of_shapes(state)
    dataset = dataset or meta.get(_KEYS["dataset"])
    if dataset is None and network is not None and network == _network_of_shapes(state):  # a plain state_dict
        dataset = CLASSIFIERS[network].dataset
    if dataset is None and network == default_network and network in CLASSIFIERS:
        dataset = CLASSIFIERS[network].dataset
    if network is None or dataset is None:
        raise ClassifierFileError(
            f"{path} does not name the classifier it holds, and its tensors are no task network's (a generator's "
            "model file?); for a classifier, pass --dataset DIR, the dataset it was generated from"
        )
    if network not in CLASSIFIERS:
        raise ClassifierFileError(f"{path}: unknown network {network!r}; rl_gpt knows {sorted(CLASSIFIERS)}")
    if dataset != CLASSIFIERS[network].dataset:
        raise ClassifierFileError(f"{path}: {network} classifies {CLASSIFIERS[network].dataset}, not {dataset}")
    layout = classifier_layout(network)
    extra = sorted(set(state) - set(layout.names))
    if extra:
        raise ClassifierFileError(f"{path} holds tensors {network} does not have: {extra}")
    for spec in layout.params:  # flatten would read a leading extra axis as a batch of networks
        if spec.name in state and tuple(state[spec.name].shape) != tuple(spec.shape):
            raise ClassifierFileError(
                f"{path} does not hold a {network}: {spec.name} has shape {tuple(state[spec.name].shape)}, "
                f"not {tuple(spec.shape)}"
            )
    try:
        flat = layout.flatten({k: v.float() for k, v in state.items()})
    except (KeyError, ValueError) as exc:
        raise ClassifierFileError(f"{path} does not hold a {network}: {exc}") from None
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:  # its test loss would read nan, and an update of it would be nonsense
        raise ClassifierFileError(f"{path}: {', '.join(bad[:3])} hold NaN or infinite weights; use another file")
    return ClassifierFile(flat, network, dataset, meta.get(_KEYS["data_root"]))
