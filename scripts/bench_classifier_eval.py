"""Benchmark evaluating many classifier checkpoints: ``evaluate_classifiers`` against a module loop.

The baseline is what a user would write: for each checkpoint, load its ``state_dict`` into the task's
``nn.Module`` and run the test set through it in chunks. For the CNN the vmapped path (one grouped
convolution for all models, what the GPU runs) is timed as well, to show why the CPU loops instead.
Inputs are random tensors of each task's test-set size and shape, so nothing is downloaded.

    python scripts/bench_classifier_eval.py --models 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

import rl_gpt.supervised.evaluate as supervised_evaluate
from rl_gpt.supervised import CLASSIFIERS, build_classifier, classifier_layout, evaluate_classifiers

TEST_SIZES = {"digits_mlp": 360, "mnist_mlp": 10_000, "cifar_cnn": 10_000}


def module_loop(
    name: str, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: each checkpoint loaded into the task's nn.Module, the test set run through it
    in chunks. Returns (loss (B,), error (B,)) as ``evaluate_classifiers`` does."""
    layout, model = classifier_layout(name), build_classifier(name).eval()
    losses, errors = [], []
    with torch.inference_mode():
        for row in params:
            model.load_state_dict(layout.unflatten(row))
            loss, wrong = torch.zeros(()), torch.zeros((), dtype=torch.int64)
            for s in range(0, len(x), chunk):
                logits = model(x[s : s + chunk])
                loss += F.cross_entropy(logits, y[s : s + chunk], reduction="sum")
                wrong += (logits.argmax(1) != y[s : s + chunk]).sum()
            losses.append(loss / len(x))
            errors.append(wrong / len(x))
    return torch.stack(losses), torch.stack(errors).to(params.dtype)


def agrees(got: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The timed paths must compute what the baseline does: the same losses and errors."""
    torch.testing.assert_close(got[0], reference[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], reference[1], rtol=0, atol=2e-4)  # a near-tie may flip one example


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls: shared cloud cores drift by 2x within minutes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def vmapped(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with the CNN forced onto the vmapped path the GPU takes."""

    def call() -> Any:
        native = supervised_evaluate.loops_over_models
        supervised_evaluate.loops_over_models = lambda layout, device: False
        try:
            return fn()
        finally:
            supervised_evaluate.loops_over_models = native

    return call


def bench(name: str, n_models: int, repeats: int) -> dict[str, float | int]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TEST_SIZES[name], *CLASSIFIERS[name].input_shape, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    layout = classifier_layout(name)
    params = torch.stack([layout.flatten(build_classifier(name).state_dict()) for _ in range(n_models)])
    loop_s, reference = best_of(repeats, lambda: module_loop(name, params, x, y))
    ours_s, ours = best_of(repeats, lambda: evaluate_classifiers(params, layout, name, x, y))
    agrees(ours, reference)
    row = {"models": n_models, "examples": len(x), "module_loop_s": round(loop_s, 3), "ours_s": round(ours_s, 3)}
    row["speedup"] = round(loop_s / ours_s, 2)
    if supervised_evaluate.loops_over_models(layout, params.device):
        vmap_s, vmap_out = best_of(repeats, vmapped(lambda: evaluate_classifiers(params, layout, name, x, y)))
        agrees(vmap_out, reference)
        row |= {"vmap_s": round(vmap_s, 3), "vmap_speedup": round(loop_s / vmap_s, 2)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="report the fastest of this many calls")
    parser.add_argument("--networks", nargs="*", default=sorted(CLASSIFIERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({name: bench(name, args.models, args.repeats) for name in args.networks}, indent=2))


if __name__ == "__main__":
    main()
