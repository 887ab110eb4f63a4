"""The generator's training step, old path against new, timed in one process and checked for equal results.

The old path is what `rl-gpt train` ran before session 42, reconstructed here: attention's q, k, v taken
by ``permute(2, 0, 3, 1, 4)`` of the (B, L, 3, H, W/H) projection, AdamW with ``foreach`` unset (one tensor
at a time on the CPU, torch's default there) and the EMA as one ``lerp_`` per tensor. The new path is
rl_gpt's own code: ``Attention.forward``, ``make_optimizer`` and ``update_ema``. Both paths start from the
same weights and run the training loop's step (the same seeds per step, pairs, permutations, diffusion and
function-space loss, clipping, learning-rate schedule) in alternating blocks of ``--steps`` steps, old
first in even blocks and new first in odd ones, so drift in the shared machine's speed falls on both.

At the end every tensor of the model, the EMA and the optimiser and every step's loss must be
``torch.equal`` between the two; the script exits 1 where one differs.

    python scripts/bench_train_step.py [PRESET] --out DIR [--steps 5] [--repeats 24] [--phases] [key=value ...]

``DIR`` holds the collected ``dataset/`` (``rl-gpt collect PRESET out=DIR ...``); ``key=value`` are
``rl-gpt train`` overrides (``batch=64``, ``train.model_overrides={width: 32}``). ``--phases`` adds each
path's time per phase (pairs, forward, backward, clip, optimizer, EMA) in ms per step, wall clock;
``--profile`` first prints torch.profiler's table of the new path's ops over ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rl_gpt.config import load_config
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.dataset.pairs import PairSampler, split_runs
from rl_gpt.model.dit import Attention
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.loop import build_generator, fit_normalizer, lr_at, make_optimizer, step_seed, update_ema

PHASES = ("pairs", "forward", "backward", "clip", "optimizer", "ema")


def old_attention_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` as it was before session 42."""
    batch, length, width = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads)  # (B, L, 3, H, W/H)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, W/H)
    p = self.dropout if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, L, W/H)
    y = y.transpose(1, 2).reshape(batch, length, width)  # (B, L, W)
    return self.proj_drop(self.proj(y))  # (B, L, W)


@torch.no_grad()
def old_update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """``update_ema`` as it was before session 42: one ``lerp_`` per tensor."""
    decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@dataclass
class Variant:
    """One path's training state, stepped like ``rl_gpt.train.loop``."""

    name: str
    gen: ParameterGenerator
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    sampler: PairSampler
    update_ema: Callable[[torch.nn.Module, torch.nn.Module, float, int], None]
    step: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))


def build_paths(preset: str, out: str, overrides: Sequence[str]) -> tuple[Variant, Variant, Callable[[Variant], None]]:
    """(old, new, step): both paths from the same initial weights, and the function that steps one."""
    cfg = load_config(preset, [f"out={out}", "wandb.mode=disabled", *overrides], command="train")
    tc = cfg.train
    ds = CheckpointDataset(cfg.dataset_dir)
    train_runs, _ = split_runs(sorted(ds.run_slices()), tc.test_fraction, tc.split_seed)
    normalizer = fit_normalizer(ds, PairSampler(ds, train_runs, tc.init_fraction, tc.bins, seed=tc.seed))
    torch.manual_seed(tc.seed)
    base, _ = build_generator(tc, ds, normalizer)
    probe = None
    if tc.function_loss > 0:
        from rl_gpt.train.function_loss import function_probe

        probe = function_probe(ds, train_runs, tc.function_probes, seed=tc.seed, compare=tc.function_compare)

    def make(name: str) -> Variant:
        gen = copy.copy(base)
        gen.model = copy.deepcopy(base.model)
        ema = copy.deepcopy(gen.model).requires_grad_(False)
        sampler = PairSampler(ds, train_runs, tc.init_fraction, tc.bins, seed=tc.seed * 1000)
        if name == "new":
            return Variant(name, gen, ema, make_optimizer(gen.model, tc), sampler, update_ema)
        for module in gen.model.modules():
            if isinstance(module, Attention):
                module.forward = types.MethodType(old_attention_forward, module)
        opt = torch.optim.AdamW(gen.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        return Variant(name, gen, ema, opt, sampler, old_update_ema)

    perm_gen, g = torch.Generator(), torch.Generator()
    function = {
        "function_probe": None if probe is None else probe.loss,
        "function_weight": tc.function_loss,
        "function_signal_power": tc.function_signal_power,
    }

    def step(path: Variant) -> None:
        """One step of ``rl_gpt.train.loop`` (single process, CPU), each phase timed."""
        times = [time.perf_counter()]
        for stream, rng in enumerate((path.sampler.generator, g, perm_gen, torch.default_generator)):
            rng.manual_seed(step_seed(tc.seed, 0, path.step, stream))
        batch = path.sampler.sample(tc.batch)
        if tc.augment:
            index = ds.layout.permutation_index(ds.layout.random_permutations(tc.batch, perm_gen), tc.batch)
            batch["theta"] = batch["theta"].gather(1, index)
            batch["theta_next"] = batch["theta_next"].gather(1, index)
        for group in path.opt.param_groups:
            group["lr"] = lr_at(path.step, tc)
        times.append(time.perf_counter())
        loss, _ = path.gen.loss(batch, g, **function)
        times.append(time.perf_counter())
        path.opt.zero_grad(set_to_none=True)
        loss.backward()
        times.append(time.perf_counter())
        grad_norm = torch.nn.utils.clip_grad_norm_(path.gen.model.parameters(), tc.grad_clip)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise FloatingPointError(f"{path.name}: loss {loss.item()} at step {path.step}")
        times.append(time.perf_counter())
        path.opt.step()
        times.append(time.perf_counter())
        path.update_ema(path.ema, path.gen.model, tc.ema, path.step)
        times.append(time.perf_counter())
        path.step += 1
        path.losses.append(loss.detach())
        for phase, began, ended in zip(PHASES, times[:-1], times[1:], strict=True):
            path.phase_s[phase] += ended - began

    return make("old"), make("new"), step


def differences(old: Variant, new: Variant) -> list[str]:
    """Names of the tensors that are not ``torch.equal`` between the two paths ([] when all are)."""
    named: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for part, a, b in (("model", old.gen.model, new.gen.model), ("ema", old.ema, new.ema)):
        named += [(f"{part}.{k}", v, b.state_dict()[k]) for k, v in a.state_dict().items()]
    state_a, state_b = old.opt.state_dict()["state"], new.opt.state_dict()["state"]
    for idx, entries in state_a.items():
        named += [(f"opt.{idx}.{k}", torch.as_tensor(v), torch.as_tensor(state_b[idx][k])) for k, v in entries.items()]
    named.append(("losses", torch.stack(old.losses), torch.stack(new.losses)))
    return [name for name, a, b in named if not torch.equal(a, b)]


def spread(ratios: list[float]) -> str:
    """Median and range of per-block ratios."""
    return f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, n={len(ratios)})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", nargs="?", default="cartpole", help="a preset or config file (rl-gpt train's)")
    parser.add_argument("--out", required=True, help="the experiment folder holding dataset/")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=24, help="blocks per path, alternating old and new")
    parser.add_argument("--phases", action="store_true", help="print each path's time per phase")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top ops over the new path's steps")
    parser.add_argument("overrides", nargs="*", help="rl-gpt train overrides, key=value")
    args = parser.parse_intermixed_args(argv)
    old, new, step = build_paths(args.preset, args.out, args.overrides)
    for path in (old, new):  # warm-up: allocator, thread pool, first-call costs; equal work for both
        step(path)
    if args.profile:  # the old path takes the same steps unprofiled, so the two stay comparable
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step(new)
        for _ in range(args.steps):
            step(old)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for path in (old, new):  # the phases of the timed blocks only
        path.phase_s = dict.fromkeys(PHASES, 0.0)
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    wall: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.repeats):
        for path in (old, new) if r % 2 == 0 else (new, old):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                step(path)
            cpu[path.name].append(time.process_time() - c0)
            wall[path.name].append(time.perf_counter() - w0)
    for name in ("old", "new"):
        print(
            f"{name}: CPU {statistics.median(cpu[name]) / args.steps * 1000:.1f} ms/step, "
            f"wall {statistics.median(wall[name]) / args.steps * 1000:.1f} ms/step (medians of {args.repeats} blocks)"
        )
    print("CPU-time ratio new/old:", spread([n / o for n, o in zip(cpu["new"], cpu["old"], strict=True)]))
    print("wall ratio new/old:    ", spread([n / o for n, o in zip(wall["new"], wall["old"], strict=True)]))
    if args.phases:
        steps = args.steps * args.repeats
        for path in (old, new):
            total = sum(path.phase_s.values())
            shares = ", ".join(f"{k} {v / steps * 1000:.2f} ({v / total:.1%})" for k, v in path.phase_s.items())
            print(f"{path.name} phases, ms/step: {shares}")
    differ = differences(old, new)
    if differ:
        print(f"NOT EQUAL after {old.step} steps: {len(differ)} tensors differ, e.g. {', '.join(differ[:5])}")
        return 1
    print(f"equal: every model, EMA and optimiser tensor and all {old.step} losses (torch.equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
