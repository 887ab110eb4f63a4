"""The small classifiers whose checkpoints make up the supervised data sets, and their layouts.

Sizes and details follow G.pt's data generation (wpeebles/G.pt, ``data_gen/train_mnist.py`` and
``data_gen/train_cifar10.py``): the MNIST MLP is 784→10→10 with ReLU; the CIFAR-10 CNN is a
stride-2 3×3 conv (16 channels, no bias), a 3×3 conv (32 channels, no bias), ReLU after each, global
average pooling and a 32→10 linear head. The digits MLP is the MNIST one on 64-dim inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rl_gpt.layout import LayerSpec, Layout

__all__ = [
    "CLASSIFIERS",
    "ClassifierSpec",
    "ConvClassifier",
    "MLPClassifier",
    "build_classifier",
    "classifier_classes",
    "classifier_layout",
]

NUM_CLASSES = 10


class MLPClassifier(nn.Module):
    """One hidden ReLU layer: ``fc1`` (in→hidden), ``fc2`` (hidden→classes)."""

    def __init__(self, in_features: int, hidden: int = 10, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, in): accepts images too
        return self.fc2(F.relu(self.fc1(x)))  # (N, classes)


class ConvClassifier(nn.Module):
    """G.pt's CIFAR-10 ConvNet: two bias-free 3×3 convs, global average pooling, linear head."""

    def __init__(self, widths: tuple[int, int] = (16, 32), classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(widths[0], widths[1], kernel_size=3, stride=1, padding=1, bias=False)
        self.fc = nn.Linear(widths[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 32, 32)
        x = F.relu(self.conv1(x))  # (N, 16, 16, 16)
        x = F.relu(self.conv2(x))  # (N, 32, 16, 16)
        x = x.mean(dim=(2, 3))  # (N, 32): global average pooling keeps channels permutable
        return self.fc(x)  # (N, classes)


@dataclass(frozen=True)
class ClassifierSpec:
    """A task network: how to build it, the data set it reads and its affine layer chain."""

    make: Callable[[], nn.Module]
    dataset: str  # name accepted by ``data.load_dataset``
    input_shape: tuple[int, ...]  # one example's shape as the loader returns it
    layers: tuple[LayerSpec, ...]  # hidden groups h0, h1, ... are the permutable units / channels
    #: The forward pass in words, what the layer chain does not say (strides, padding, pooling): a
    #: dataset's spec.json records it as ``architecture``, for readers who rebuild the network without rl_gpt.
    forward: str = ""


_MLP_LAYERS = (LayerSpec("fc1", None, "h0", "relu"), LayerSpec("fc2", "h0", None))
_MLP_FORWARD = "logits = fc2(relu(fc1(x.flatten(1)))); fc1 and fc2 are torch.nn.Linear (y = x @ weight.T + bias)"

CLASSIFIERS: dict[str, ClassifierSpec] = {
    "mnist_mlp": ClassifierSpec(lambda: MLPClassifier(28 * 28), "mnist", (28 * 28,), _MLP_LAYERS, _MLP_FORWARD),
    "digits_mlp": ClassifierSpec(lambda: MLPClassifier(8 * 8), "digits", (8 * 8,), _MLP_LAYERS, _MLP_FORWARD),
    "cifar_cnn": ClassifierSpec(
        ConvClassifier,
        "cifar10",
        (3, 32, 32),
        (LayerSpec("conv1", None, "h0", "relu"), LayerSpec("conv2", "h0", "h1", "relu"), LayerSpec("fc", "h1", None)),
        "x (N, 3, 32, 32) -> conv1 (torch.nn.Conv2d, 3x3, stride 2, padding 1, no bias) -> relu -> conv2 (3x3, "
        "stride 1, padding 1, no bias) -> relu -> mean over height and width -> fc (torch.nn.Linear): logits",
    ),
}


def _spec(name: str) -> ClassifierSpec:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[name]


def build_classifier(name: str) -> nn.Module:
    """A freshly initialised classifier (PyTorch's default init, drawn from the global RNG)."""
    return _spec(name).make()


def classifier_layout(name: str) -> Layout:
    """The layout of ``name``'s ``state_dict``, with its hidden units / channels as permutable groups."""
    spec = _spec(name)
    with torch.device("meta"):  # shapes only: no memory, no RNG draws
        model = spec.make()
    return Layout.build(model.state_dict(), spec.layers)


def classifier_classes(name: str) -> int:
    """How many classes ``name`` predicts: its output layer's out features (the data set's labels must fit)."""
    head = next(layer for layer in _spec(name).layers if layer.out_group is None)
    shapes = {p.name: p.shape for p in classifier_layout(name).params}
    return shapes[f"{head.prefix}.weight"][0]
