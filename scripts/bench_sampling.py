"""Sampling a sweep's networks on the CPU: one DDIM call against calls of bounded activation size.

A sweep samples every (init, prompt, sample) network in one batch, each the mean of several draws.
On the CPU each layer of the denoiser allocates its output afresh; past glibc's mmap threshold that
maps new pages, which the kernel zeroes on first touch. ``SAMPLE_CHUNK_ACTIVATIONS_CPU`` keeps each
call small enough to reuse freed memory instead. This benchmark samples the same batch both ways, with
the same starting noise, and prints the seconds, the ratio and the largest difference between draws.

    python scripts/bench_sampling.py [--task digits|cartpole] [--model DIR] [--networks N] [--threads 1]
                                     [--chunk VALUES] [--repeats 2]

``--model`` samples a trained model folder's generator; without it, the preset's shape with random
weights (the time does not depend on what it learnt):
``digits`` is the digits preset's denoiser (neuron DiT, width 128, depth 2) for the 64-10-10 MLP with the
demo sweep's 1,280 networks x 8 draws and guidance 1.5; ``cartpole`` the default neuron DiT for the
CartPole demo actor with 3,840 networks x 1 draw and guidance 2.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

import rl_gpt.train.generator as generator_module
from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.model import build_model
from rl_gpt.train.generator import ParameterGenerator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: the sibling benchmark's layout
from bench_generator import LAYOUT as CARTPOLE  # noqa: E402 - the CartPole demo actor, 4 -> 16 -> 2

TASKS = {  # layout, model overrides, networks, draws averaged, guidance: as the demos' sweeps sample
    "digits": (None, {"width": 128, "heads": 4, "depth": 2, "metric_frequency": 1000.0}, 1280, 8, 1.5),
    "cartpole": (CARTPOLE, {}, 3840, 1, 2.0),
}


def make(task: str) -> tuple[ParameterGenerator, int, int, float]:
    layout, overrides, networks, average, guidance = TASKS[task]
    if layout is None:
        from rl_gpt.supervised.models import classifier_layout

        layout = classifier_layout("digits_mlp")
    d = layout.numel
    norm = Normalizer(torch.zeros(d), torch.ones(d), torch.ones(d), 0.0, 1.0)
    model = build_model("neuron", layout, **overrides)
    return ParameterGenerator(model, GaussianDiffusion(prediction="v"), norm, layout), networks, average, guidance


def timed(gen: ParameterGenerator, inputs: tuple, x_T: torch.Tensor, average: int, guidance: float) -> tuple:
    start = time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = gen.sample(*inputs, steps=10, guidance=guidance, average=average, x_T=x_T)
    return out, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--model", default=None, help="a trained model folder (default: random weights)")
    parser.add_argument("--networks", type=int, default=None, help="networks sampled (default: the demo sweep's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=None, help="activation values a bounded call holds")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs of (one call, bounded calls)")
    args = parser.parse_args()
    args.repeats = max(1, args.repeats)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen, networks, average, guidance = make(args.task)
    if args.model:
        from rl_gpt.train.modelfile import load_generator

        gen = load_generator(args.model)[0]
    networks = args.networks or networks
    d = gen.layout.numel
    inputs = (torch.randn(networks, d) * 0.1, torch.rand(networks), torch.rand(networks))
    x_T = torch.randn(networks * average, d)
    bounded = args.chunk or generator_module.SAMPLE_CHUNK_ACTIVATIONS_CPU
    per_draw = generator_module.activations_per_draw(gen.model, d, guidance)
    rows = max(1, bounded // (average * per_draw))
    print(f"{args.task}: {networks} networks x {average} draws of {d} parameters, 10 DDIM steps, guidance {guidance}")
    print(f"bounded calls: {rows} networks a call ({-(-networks // rows)} calls); {args.threads} thread(s)")
    print("| repeat | one call s | bounded calls s | speed-up | page faults one / bounded |")
    print("|---|---|---|---|---|")
    for repeat in range(args.repeats):
        # The sampler reads the module's bound at each call: set it for one call, as sampling ran before, then
        # back to the bound under test (a script's own process, so nothing else sees the change).
        generator_module.SAMPLE_CHUNK_ACTIVATIONS_CPU = 1 << 62
        whole, t_whole, f_whole = timed(gen, inputs, x_T, average, guidance)
        generator_module.SAMPLE_CHUNK_ACTIVATIONS_CPU = bounded
        parts, t_parts, f_parts = timed(gen, inputs, x_T, average, guidance)
        diff = float((whole - parts).abs().max())
        print(f"| {repeat} | {t_whole:.1f} | {t_parts:.1f} | {t_whole / t_parts:.2f}x | {f_whole:,} / {f_parts:,} |")
    print(f"largest difference between the two ways' networks: {diff:.2e}")


if __name__ == "__main__":
    main()
