"""Evaluate many classifier checkpoints at once, straight from flat parameter rows.

All B models run on each chunk of examples: MLPs together, as batched matmuls walking the layout's
layer chain; other networks (the CNN) through ``torch.func.functional_call``. On a GPU that runs
under ``vmap``, which turns a batch of conv weights into one grouped convolution; on the CPU it
loops over the models, because torch's CPU grouped convolution is slower than plain ones: 15.7
against 9.3 s for 8 CIFAR CNNs on 10,000 images (scripts/bench_classifier_eval.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from rl_gpt.layout import Layout
from rl_gpt.supervised.models import CLASSIFIERS, build_classifier, classifier_layout

__all__ = [
    "activation_numel",
    "class_probabilities",
    "classifier_logits",
    "cross_entropy",
    "evaluate_classifiers",
    "loops_over_models",
]

_ACTIVATIONS = {None: lambda h: h, "relu": F.relu, "tanh": torch.tanh}
# Auto example chunk: keep B × chunk × (largest per-example activation) under this many elements.
_ELEMENT_BUDGET = 1 << 25
# Examples per plain convolution when the CPU loops over models: larger chunks fall out of cache
# (CIFAR CNN, one thread: 0.8 s per 10K test images at 500, 1.8 s at 2,000).
_CPU_LOOP_CHUNK = 512


def _is_mlp(layout: Layout) -> bool:
    """A chain of linear layers whose parameters are exactly the layout's: evaluable from the layout alone."""
    names = set()
    for i, layer in enumerate(layout.layers):
        weight = f"{layer.prefix}.weight"
        if len(layout[weight].shape) != 2 or (i > 0 and layer.in_group != layout.layers[i - 1].out_group):
            return False
        names |= {weight} | ({f"{layer.prefix}.bias"} & set(layout.names))
    return bool(layout.layers) and names == set(layout.names)


def _mlp_logits(layout: Layout, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x.flatten(1)  # (n, in): shared by all models
    for i, layer in enumerate(layout.layers):
        w = state[f"{layer.prefix}.weight"]  # (B, out, in)
        # First layer: one GEMM of the shared inputs against all models' weights; then batched matmuls.
        h = torch.einsum("ni,boi->bno" if i == 0 else "bni,boi->bno", h, w)  # (B, n, out)
        bias = state.get(f"{layer.prefix}.bias")
        if bias is not None:
            h = h + bias.unsqueeze(1)  # (B, 1, out)
        h = _ACTIVATIONS[layer.activation](h)
    return h  # (B, n, classes)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy: logits (..., classes), integer labels (...) -> (...).

    ``F.cross_entropy`` computes the same, but its CPU log-softmax over 10 classes runs ~4x slower
    than this logsumexp form, and it is most of a step when hundreds of tiny classifiers train at once.
    """
    return torch.logsumexp(logits, -1) - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``logits.softmax(-1)`` in the same logsumexp form: torch's CPU softmax over 10 classes is ~4x
    slower, and the function-space loss takes it twice per training step on 32K rows."""
    return (logits - torch.logsumexp(logits, -1, keepdim=True)).exp()


def _check(params: torch.Tensor, layout: Layout, name: str) -> None:
    if layout != classifier_layout(name):
        raise ValueError(f"layout does not match classifier {name!r}; build it with classifier_layout({name!r})")
    if params.dim() != 2 or params.shape[1] != layout.numel:
        raise ValueError(f"params must be (B, {layout.numel}) for {name!r}, got {tuple(params.shape)}")


def _batched_forward(params: torch.Tensor, layout: Layout, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (n, *input) -> logits (B, n, classes) of all B models in ``params``."""
    state = layout.unflatten(params)  # {name: (B, *shape)}
    if _is_mlp(layout):
        return lambda x: _mlp_logits(layout, state, x)
    with torch.random.fork_rng(devices=[]):  # its weights are replaced: leave the caller's RNG alone
        model = build_classifier(name).to(device=params.device, dtype=params.dtype).eval()
    if loops_over_models(layout, params.device):
        models = [{key: value[b] for key, value in state.items()} for b in range(params.shape[0])]

        def loop(x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 4:  # images: mkldnn's preferred layout, 0.94 -> 0.70 s per model on 10K CIFAR images
                x = x.contiguous(memory_format=torch.channels_last)
            return torch.stack([functional_call(model, p, (x,)) for p in models])

        return loop
    return lambda x: vmap(lambda p: functional_call(model, p, (x,)))(state)


def loops_over_models(layout: Layout, device: str | torch.device) -> bool:
    """Whether B models of ``layout`` on ``device`` run one after another rather than under ``vmap``:
    convolutional networks on the CPU, where a vmapped (grouped) convolution is the slower path."""
    return torch.device(device).type == "cpu" and not _is_mlp(layout)


def classifier_logits(params: torch.Tensor, layout: Layout, name: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of B models on the same inputs: params (B, D), x (n, *input) -> (B, n, classes)."""
    _check(params, layout, name)
    return _batched_forward(params, layout, name)(x.to(device=params.device, dtype=params.dtype))


@cache
def activation_numel(name: str) -> int:
    """Largest per-example activation of one model, from a shape-only (meta) forward pass."""
    spec = CLASSIFIERS[name]
    sizes: list[int] = []
    with torch.device("meta"):
        model = spec.make()
        for m in model.modules():
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        model(torch.empty(1, *spec.input_shape))
    return max(sizes)


@torch.inference_mode()
def evaluate_classifiers(
    params: torch.Tensor,
    layout: Layout,
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and top-1 error (a fraction) of each of B models on (x, y).

    params (B, D) in ``layout`` order; x (N, *input); y (N,) int labels. ``batch_size`` is examples
    per chunk (all B models see each chunk together); by default it is chosen to bound memory.
    Returns ``(loss (B,), error (B,))`` in params' dtype, on params' device.
    """
    _check(params, layout, name)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {x.shape[0]} and {y.shape[0]}")
    n_models, n_examples = params.shape[0], x.shape[0]
    if batch_size is None:
        if loops_over_models(layout, params.device):  # one model's activations are alive at a time
            batch_size = min(_CPU_LOOP_CHUNK, max(1, _ELEMENT_BUDGET // activation_numel(name)))
        else:
            batch_size = max(1, _ELEMENT_BUDGET // (n_models * activation_numel(name)))
    forward = _batched_forward(params, layout, name)
    loss_sum = torch.zeros(n_models, dtype=torch.float64, device=params.device)
    wrong = torch.zeros(n_models, dtype=torch.int64, device=params.device)
    for start in range(0, n_examples, batch_size):
        yb = y[start : start + batch_size].to(params.device)  # (n,)
        logits = forward(x[start : start + batch_size].to(device=params.device, dtype=params.dtype))  # (B, n, C)
        loss_sum += cross_entropy(logits, yb.expand(n_models, -1)).sum(1, dtype=torch.float64)  # (B,)
        wrong += (logits.argmax(-1) != yb).sum(1)
    return (loss_sum / n_examples).to(params.dtype), (wrong.double() / n_examples).to(params.dtype)
