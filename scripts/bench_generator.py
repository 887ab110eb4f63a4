"""Generator throughput: training samples/s and sampling policies/s for 10, 50 and 1000 DDIM steps.

Each registry model is built for the CartPole demo actor (4 -> 16 -> 2, 114 parameters) and
compared with the residual-MLP baseline in the same run. Sampling uses guidance 2 (two network
calls per step, batched), as `rl-gpt sweep` does by default.

    python scripts/bench_generator.py [--models neuron neuron:separate mlp] [--policies 1000] [--threads 2]
                                      [--compile]

``--compile`` adds a ``+compile`` row per model: training through ``torch.compile`` (inductor), its
one-off compile time reported apart from the steady rate; sampling stays eager.

``neuron:separate`` is the neuron DiT with θ and x_t as two token sets (twice the sequence), the
design before fused tokens.
"""

from __future__ import annotations

import argparse
import time

import torch

from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import build_model
from rl_gpt.train.generator import ParameterGenerator

LAYOUT = Layout.build(
    {
        "mlp_extractor.policy_net.0.weight": (16, 4),
        "mlp_extractor.policy_net.0.bias": (16,),
        "action_net.weight": (2, 16),
        "action_net.bias": (2,),
    },
    [LayerSpec("mlp_extractor.policy_net.0", None, "h0", "tanh"), LayerSpec("action_net", "h0", None)],
)


def make(name: str) -> ParameterGenerator:
    """A registry name, optionally with ``:separate`` for the older two-token-set θ input."""
    name, _, theta_tokens = name.partition(":")
    overrides = {"theta_tokens": theta_tokens} if theta_tokens else {}
    d = LAYOUT.numel
    norm = Normalizer(torch.zeros(d), torch.ones(d), torch.ones(d), 0.0, 500.0)
    return ParameterGenerator(
        build_model(name, LAYOUT, residual=False, **overrides), GaussianDiffusion(prediction="v"), norm, LAYOUT
    )


def train_rate(gen: ParameterGenerator, batch: int, steps: int, compiled: bool = False) -> tuple[float, float]:
    """(samples/s after 3 warm-up steps, seconds the warm-up took: the compile time when ``compiled``)."""
    from tensordict import TensorDict

    net = torch.compile(gen.model) if compiled else gen.model
    opt = torch.optim.AdamW(gen.model.parameters(), 1e-3)
    d = LAYOUT.numel
    td = TensorDict(
        {
            "theta": torch.randn(batch, d),
            "theta_next": torch.randn(batch, d),
            "metric": torch.rand(batch) * 500,
            "metric_next": torch.rand(batch) * 500,
        },
        [batch],
    )
    warm_start = time.perf_counter()
    for i in range(steps + 3):
        if i == 3:  # warm-up steps excluded
            start = time.perf_counter()
        loss, _ = gen.loss(td, model=net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start), start - warm_start


def sample_rate(gen: ParameterGenerator, policies: int, steps: int) -> float:
    theta = torch.randn(policies, LAYOUT.numel)
    start = time.perf_counter()
    gen.sample(theta, torch.zeros(policies), torch.full((policies,), 500.0), steps=steps, guidance=2.0)
    return policies / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["neuron", "neuron:separate", "mlp"])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time training through torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name in args.models:
        gen = make(name)
        params = sum(p.numel() for p in gen.model.parameters())
        rate, _ = train_rate(gen, args.batch, 30)
        rows[name] = (params, rate, "-", *(f"{sample_rate(gen, args.policies, s):,.1f}" for s in (10, 50, 1000)))
        if args.compile:
            rate, compile_s = train_rate(make(name), args.batch, 30, compiled=True)
            rows[f"{name}+compile"] = (params, rate, f"{compile_s:.0f}", "-", "-", "-")
    base = rows.get("mlp")
    print(f"CPU threads={args.threads}, batch={args.batch}, {args.policies} policies, guidance 2")
    print("| model | parameters | train samples/s | compile s | policies/s @10 | @50 | @1000 | train vs mlp |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (params, tr, comp, s10, s50, s1000) in rows.items():
        ratio = f"{tr / base[1]:.2f}x" if base else "-"
        print(f"| {name} | {params:,} | {tr:,.0f} | {comp} | {s10} | {s50} | {s1000} | {ratio} |")


if __name__ == "__main__":
    main()
