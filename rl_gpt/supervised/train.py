"""Supervised collection runs: train small classifiers and keep checkpoints along the way.

Follows G.pt's data generation (``data_gen/train_mnist.py``): SGD with Nesterov momentum 0.9,
weight decay 5e-4, a cosine learning-rate decay, minibatches drawn without replacement each epoch
(the last partial batch dropped), the initial network saved as the first checkpoint. Unlike G.pt the
cosine is applied per step (so runs shorter than an epoch still decay) and every checkpoint is
evaluated after training, all at once, with the batched evaluator.

:func:`train_classifier_run` trains one network the plain way (an ``nn.Module`` and a torch
optimiser). :func:`train_classifier_runs` trains many together: their weights are stacked (R, D) and
every step is one vmapped forward and backward over R different minibatches, followed by torch's
SGD / Adam update written out for stacked weights with one learning rate per run. Each run keeps its
own init and data order (its seed), so it comes out as the plain loop makes it, up to float
rounding (tests/test_supervised.py); for networks this small the batch is what makes collection
fast, one Python step serving R runs (scripts/bench_supervised_collect.py). The CNN on the CPU is
the exception: a vmapped (grouped) convolution step is slower there than plain ones, so its runs
train one after another (:func:`~rl_gpt.supervised.evaluate.loops_over_models`).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Sequence

import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from rl_gpt.layout import Layout
from rl_gpt.supervised.evaluate import cross_entropy, evaluate_classifiers, loops_over_models
from rl_gpt.supervised.models import CLASSIFIERS, build_classifier, classifier_classes, classifier_layout
from rl_gpt.threads import torch_threads

__all__ = [
    "DEFAULT_LR",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TRAIN_EVAL_SEED",
    "train_classifier_run",
    "train_classifier_runs",
]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
DEFAULT_LR = 0.1  # G.pt's
_MODEL_CHUNK = 1024  # checkpoints evaluated per call: bounds memory when R runs x C checkpoints is large
TRAIN_EVAL_SEED = 0  # the train-loss subset belongs to the data set, not the run: same for every seed
_SGD_MOMENTUM = 0.9  # G.pt's, with Nesterov
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch's defaults


class _StackedSGD:
    """``torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=wd)`` on stacked (R, D) weights."""

    def __init__(self, weight_decay: float) -> None:
        self.weight_decay = weight_decay
        self.buf: torch.Tensor | None = None  # torch's: the first step's gradient, then the running sum

    def step(self, params: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        grad = grad.add(params, alpha=self.weight_decay)
        if self.buf is None:
            self.buf = grad.clone()
        else:
            self.buf.mul_(_SGD_MOMENTUM).add_(grad)
        params.sub_(lr * grad.add(self.buf, alpha=_SGD_MOMENTUM))


class _StackedAdam:
    """``torch.optim.Adam(weight_decay=wd)`` (L2 added to the gradient) on stacked (R, D) weights."""

    def __init__(self, weight_decay: float) -> None:
        self.weight_decay, self.t = weight_decay, 0
        self.m: torch.Tensor | None = None  # first and second moments, allocated on the first step
        self.v: torch.Tensor | None = None

    def step(self, params: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        (b1, b2), self.t = _ADAM_BETAS, self.t + 1
        grad = grad.add(params, alpha=self.weight_decay)
        if self.m is None:
            self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2**self.t)).add_(_ADAM_EPS)
        params.sub_((lr / (1 - b1**self.t)) * self.m / denom)


_STACKED_OPTIMIZERS = {"sgd": _StackedSGD, "adam": _StackedAdam}


def _total_steps(n_train: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if not 0 < batch_size <= n_train:
        raise ValueError(f"batch_size={batch_size} must be in [1, {n_train}] (the number of training examples)")
    total = steps if steps is not None else epochs * (n_train // batch_size)
    if total < 1:
        raise ValueError(f"a run needs at least one step, got epochs={epochs} steps={steps}")
    return total


def _make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=_SGD_MOMENTUM, nesterov=True, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=_ADAM_BETAS, eps=_ADAM_EPS, weight_decay=weight_decay)


def _plan(
    name: str,
    data: Sequence[torch.Tensor],
    optimizer: str,
    lr_schedule: str,
    batch_size: int,
    epochs: int | None,
    steps: int | None,
    checkpoint_steps: Sequence[int],
) -> tuple[Layout, int, list[int]]:
    """Check a run's arguments; returns the network's layout, its number of steps and the sorted
    steps it keeps."""
    layout = classifier_layout(name)  # rejects unknown names
    spec = CLASSIFIERS[name]
    x_train, y_train, x_test, y_test = data
    classes = classifier_classes(name)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if tuple(x.shape[1:]) != spec.input_shape or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} expects {split} inputs (N, {', '.join(map(str, spec.input_shape))}) with N labels, "
                f"got x {tuple(x.shape)} and y {tuple(y.shape)}; load them with load_dataset({spec.dataset!r})"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(
                f"{name} predicts {classes} classes, but the {split} labels run from {int(y.min())} to "
                f"{int(y.max())}: its output layer needs one output per class"
            )
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r}: choose one of {list(LR_SCHEDULES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: choose one of {list(OPTIMIZERS)}")
    total = _total_steps(x_train.shape[0], batch_size, epochs, steps)
    save_at = sorted({0, total, *checkpoint_steps})
    if save_at[0] < 0 or save_at[-1] > total:
        raise ValueError(f"checkpoint_steps must lie in [0, {total}], got {sorted(set(checkpoint_steps))}")
    return layout, total, save_at


def _init(name: str, seed: int, device: str | torch.device) -> torch.nn.Module:
    """The classifier seed ``seed`` starts from, drawn without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_classifier(name).to(device)


def _minibatches(n_train: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """A run's example indices, one minibatch per step: reshuffled each epoch by the run's own
    generator, the last partial batch dropped (as G.pt)."""
    shuffle = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n_train, generator=shuffle)
        for pos in range(0, n_train - batch_size + 1, batch_size):
            yield order[pos : pos + batch_size]


def _lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate at ``step`` as a fraction of the peak: cosine per step from 1 to 0
    (G.pt steps its cosine once per epoch), or constant."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total)) if schedule == "cosine" else 1.0


def _evaluate(
    name: str, rows: torch.Tensor, data: Sequence[torch.Tensor], train_eval_size: int
) -> dict[str, torch.Tensor]:
    """Test and train-subset loss and error of checkpoints rows (R, C, D): each (R, C) float32 on the CPU."""
    x_train, y_train, x_test, y_test = data
    layout = classifier_layout(name)
    subset = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))
    subset = subset[:train_eval_size].to(x_train.device)
    parts: dict[str, list[torch.Tensor]] = {"test_loss": [], "test_error": [], "train_loss": [], "train_error": []}
    for chunk in rows.flatten(0, 1).split(_MODEL_CHUNK):
        for split, x, y in (("test", x_test, y_test), ("train", x_train[subset], y_train[subset])):
            loss, error = evaluate_classifiers(chunk, layout, name, x, y)
            parts[f"{split}_loss"].append(loss)
            parts[f"{split}_error"].append(error)
    return {key: torch.cat(value).float().cpu().view(rows.shape[0], rows.shape[1]) for key, value in parts.items()}


def _results(
    name: str,
    rows: list[torch.Tensor],
    wall: list[float],
    save_at: list[int],
    data: Sequence[torch.Tensor],
    train_eval_size: int,
) -> list[dict[str, torch.Tensor]]:
    """One dict per run from its checkpoints: ``rows`` holds (R, D) per kept step."""
    stacked = torch.stack(rows, dim=1).float()  # (R, C, D)
    metrics = _evaluate(name, stacked, data, train_eval_size)
    return [
        # Copies, not views: pickling a view (to a Ray worker's caller) would ship the whole batch.
        {"params": stacked[r].cpu().clone()}
        | {key: value[r].clone() for key, value in metrics.items()}
        | {"step": torch.tensor(save_at, dtype=torch.int64), "wall_time": torch.tensor(wall, dtype=torch.float64)}
        for r in range(stacked.shape[0])
    ]


def train_classifier_run(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int,
    optimizer: str = "sgd",
    lr: float = DEFAULT_LR,
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
    data = (x_train, y_train, x_test, y_test)
    layout, total, save_at = _plan(name, data, optimizer, lr_schedule, batch_size, epochs, steps, checkpoint_steps)
    keep = set(save_at)
    with torch_threads(num_threads):
        # ---------------------------------------------------------------------------- data, model, optimiser
        data = _on_device(data, device)
        model = _init(name, seed, device)
        opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay)
        batches = _minibatches(x_train.shape[0], batch_size, seed)

        # ---------------------------------------------------------------------------- training loop
        rows, wall = [layout.flatten(model.state_dict()).detach().clone()[None]], [0.0]  # step 0
        start = time.perf_counter()
        for step in range(total):
            idx = next(batches).to(device)
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(lr_schedule, step, total)
            loss = F.cross_entropy(model(data[0][idx]), data[1][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step + 1 in keep:
                rows.append(layout.flatten(model.state_dict()).detach().clone()[None])
                wall.append(time.perf_counter() - start)
        # ---------------------------------------------------------------------------- evaluate all checkpoints
        return _results(name, rows, wall, save_at, data, train_eval_size)[0]


def train_classifier_runs(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seeds: Sequence[int],
    optimizer: str = "sgd",
    lr: float | Sequence[float] = DEFAULT_LR,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    checkpoint_steps: Sequence[int] = (),
    weight_decay: float = 5e-4,
    lr_schedule: str = "cosine",
    train_eval_size: int = 10_000,
    device: str | torch.device = "cpu",
    num_threads: int | None = 1,
) -> list[dict[str, torch.Tensor]]:
    """Train classifier ``name`` once per seed in ``seeds``, all runs together: one dict per seed, in
    order, each what :func:`train_classifier_run` returns for that seed (up to float rounding).

    ``lr`` is one peak learning rate for all runs or one per seed; the other hyperparameters are
    shared. ``wall_time`` is the whole batch's, since the runs share every step. A single seed, and
    the CNN on the CPU (see :func:`~rl_gpt.supervised.evaluate.loops_over_models`), train the plain
    way (:func:`train_classifier_run`), one run after another, which is faster there; then each
    run's ``wall_time`` is its own.
    """
    seeds = [int(s) for s in seeds]
    lrs = [float(lr)] * len(seeds) if isinstance(lr, numbers.Real) else [float(v) for v in lr]
    if not seeds or len(lrs) != len(seeds):
        raise ValueError(f"need at least one seed and one lr per seed, got {len(seeds)} seeds and {len(lrs)} rates")
    if min(lrs) < 0 or weight_decay < 0:  # torch.optim refuses these for one run; the stacked update must too
        raise ValueError(f"lr and weight_decay must be >= 0, got lr {min(lrs)} and weight_decay {weight_decay}")
    kwargs = dict(optimizer=optimizer, epochs=epochs, steps=steps, batch_size=batch_size)
    kwargs |= dict(checkpoint_steps=checkpoint_steps, weight_decay=weight_decay, lr_schedule=lr_schedule)
    kwargs |= dict(train_eval_size=train_eval_size, device=device, num_threads=num_threads)
    data = (x_train, y_train, x_test, y_test)
    if len(seeds) == 1 or loops_over_models(classifier_layout(name), device):
        # The CNN on the CPU: plain runs one after another beat one vmapped step of all runs (CIFAR
        # CNN, one thread, measured once in session 21: 29-37 against 46 ms per step per run).
        return [train_classifier_run(name, *data, seed=seed, lr=rate, **kwargs) for seed, rate in zip(seeds, lrs)]
    layout, total, save_at = _plan(name, data, optimizer, lr_schedule, batch_size, epochs, steps, checkpoint_steps)
    keep = set(save_at)
    with torch_threads(num_threads):
        # ---------------------------------------------------------------------------- data, models, optimiser
        data = _on_device(data, device)
        inits = [_init(name, s, device) for s in seeds]
        params = torch.stack([layout.flatten(m.state_dict()) for m in inits])  # (R, D), updated in place
        template = inits[0]  # supplies the forward; the weights it runs with are params'
        forward = vmap(lambda flat, x: functional_call(template, layout.unflatten(flat), (x,)))

        def gradients(idx: torch.Tensor) -> torch.Tensor:
            """Each run's gradient of its own mean minibatch loss: the runs' losses are summed, and no
            run's loss depends on another's weights. idx (R, batch) indexes the training set."""
            flat = params.detach().requires_grad_()
            logits = forward(flat, data[0][idx])  # (R, batch, classes)
            loss = cross_entropy(logits, data[1][idx]).sum() / batch_size
            return torch.autograd.grad(loss, flat)[0]

        opt = _STACKED_OPTIMIZERS[optimizer](weight_decay)
        peak = torch.tensor(lrs, device=device).unsqueeze(1)  # (R, 1)
        batches = [_minibatches(x_train.shape[0], batch_size, s) for s in seeds]

        # ---------------------------------------------------------------------------- training loop
        rows, wall = [params.clone()], [0.0]  # step 0
        start = time.perf_counter()
        for step in range(total):
            idx = torch.stack([next(b) for b in batches]).to(device)  # (R, batch): each run's own minibatch
            opt.step(params, gradients(idx), peak * _lr_factor(lr_schedule, step, total))
            if step + 1 in keep:
                rows.append(params.clone())
                wall.append(time.perf_counter() - start)

        # ---------------------------------------------------------------------------- evaluate all checkpoints
        return _results(name, rows, wall, save_at, data, train_eval_size)


def _on_device(data: Sequence[torch.Tensor], device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """The training split on ``device`` for indexing every step; the test split stays where it is
    (the evaluator moves it over chunk by chunk)."""
    x_train, y_train, x_test, y_test = data
    return x_train.to(device, torch.float32), y_train.to(device, torch.int64), x_test, y_test
