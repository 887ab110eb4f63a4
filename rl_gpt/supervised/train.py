"""One supervised collection run: train a small classifier and keep checkpoints along the way.

Follows G.pt's data generation (``data_gen/train_mnist.py``): SGD with Nesterov momentum 0.9,
weight decay 5e-4, a cosine learning-rate decay, minibatches drawn without replacement each epoch
(the last partial batch dropped), the initial network saved as the first checkpoint. Unlike G.pt the
cosine is applied per step (so runs shorter than an epoch still decay) and every checkpoint is
evaluated after training, all at once, with the batched evaluator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from rl_gpt.supervised.evaluate import evaluate_classifiers
from rl_gpt.supervised.models import CLASSIFIERS, build_classifier, classifier_layout
from rl_gpt.threads import torch_threads

__all__ = ["OPTIMIZERS", "train_classifier_run"]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
_TRAIN_EVAL_SEED = 0  # the train-loss subset belongs to the data set, not the run: same for every seed


def _make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r}: choose one of {list(OPTIMIZERS)}")


def _total_steps(n_train: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if not 0 < batch_size <= n_train:
        raise ValueError(f"batch_size={batch_size} must be in [1, {n_train}] (the number of training examples)")
    total = steps if steps is not None else epochs * (n_train // batch_size)
    if total < 1:
        raise ValueError(f"a run needs at least one step, got epochs={epochs} steps={steps}")
    return total


def train_classifier_run(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int,
    optimizer: str = "sgd",
    lr: float = 0.1,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    checkpoint_steps: Sequence[int] = (),
    weight_decay: float = 5e-4,
    lr_schedule: str = "cosine",
    train_eval_size: int = 10_000,
    device: str | torch.device = "cpu",
    num_threads: int | None = 1,
) -> dict[str, torch.Tensor]:
    """Train classifier ``name`` from seed ``seed`` and return its C checkpoints.

    Checkpoints are step 0 (the initialisation), every step in ``checkpoint_steps`` and the last step,
    sorted and without repeats. Returned tensors, all on the CPU:

    - ``params`` (C, D) float32, in ``classifier_layout(name)`` order
    - ``test_loss``, ``test_error`` (C,) float32: mean cross-entropy and top-1 error (fraction) on the test set
    - ``train_loss``, ``train_error`` (C,) float32: the same on a fixed subset of at most
      ``train_eval_size`` training examples (the same subset for every seed)
    - ``step`` (C,) int64; ``wall_time`` (C,) float64: training seconds elapsed when it was taken

    ``num_threads`` sets torch's intra-op CPU threads for the run and restores them after: these
    networks are too small to gain from more, and contended threads slow them down many times over
    (collection parallelises over runs instead); ``None`` leaves torch's setting alone.
    Deterministic for a given seed on a given device and thread count.
    """
    layout = classifier_layout(name)  # rejects unknown names
    spec = CLASSIFIERS[name]
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if tuple(x.shape[1:]) != spec.input_shape or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} expects {split} inputs (N, {', '.join(map(str, spec.input_shape))}) with N labels, "
                f"got x {tuple(x.shape)} and y {tuple(y.shape)}; load them with load_dataset({spec.dataset!r})"
            )
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r}: choose one of {list(LR_SCHEDULES)}")
    n_train = x_train.shape[0]
    total = _total_steps(n_train, batch_size, epochs, steps)
    save_at = sorted({0, total, *checkpoint_steps})
    if save_at[0] < 0 or save_at[-1] > total:
        raise ValueError(f"checkpoint_steps must lie in [0, {total}], got {sorted(set(checkpoint_steps))}")
    save_set = set(save_at)

    with torch_threads(num_threads):
        # ---------------------------------------------------------------------------- data, model, optimiser
        x_train, y_train = x_train.to(device, torch.float32), y_train.to(device, torch.int64)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's global RNG
            torch.manual_seed(seed)
            model = build_classifier(name).to(device)
        opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay)
        shuffle = torch.Generator().manual_seed(seed)

        # ---------------------------------------------------------------------------- training loop
        rows, wall = [layout.flatten(model.state_dict()).detach().cpu().clone()], [0.0]  # step 0
        start = time.perf_counter()
        order, pos = torch.empty(0, dtype=torch.int64), n_train
        for step in range(total):
            if pos + batch_size > n_train:  # new epoch: reshuffle, drop the partial batch (as G.pt)
                order, pos = torch.randperm(n_train, generator=shuffle).to(device), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            _set_lr(opt, lr, lr_schedule, step, total)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step + 1 in save_set:
                rows.append(layout.flatten(model.state_dict()).detach().cpu().clone())
                wall.append(time.perf_counter() - start)

        # ---------------------------------------------------------------------------- evaluate all checkpoints
        params = torch.stack(rows).float()  # (C, D)
        on_device = params.to(device)
        test_loss, test_error = evaluate_classifiers(on_device, layout, name, x_test, y_test)
        subset = torch.randperm(n_train, generator=torch.Generator().manual_seed(_TRAIN_EVAL_SEED))
        subset = subset[:train_eval_size].to(device)
        train_loss, train_error = evaluate_classifiers(on_device, layout, name, x_train[subset], y_train[subset])
    return {
        "params": params,
        "test_loss": test_loss.float().cpu(),
        "test_error": test_error.float().cpu(),
        "train_loss": train_loss.float().cpu(),
        "train_error": train_error.float().cpu(),
        "step": torch.tensor(save_at, dtype=torch.int64),
        "wall_time": torch.tensor(wall, dtype=torch.float64),
    }


def _set_lr(opt: torch.optim.Optimizer, lr: float, schedule: str, step: int, total: int) -> None:
    if schedule == "cosine":  # per step from lr to 0 (G.pt steps its cosine once per epoch)
        lr = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
    for group in opt.param_groups:
        group["lr"] = lr
