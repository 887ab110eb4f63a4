"""How often does a sweep's 95 % interval of the mean R² cover the true mean? (docs/results.md, session 32)

Simulates sweeps whose per-init R² comes from a known population (10 prompts, 2 samples each, an
init-level offset and sample noise; optionally 10 % of inits respond badly) and compares the interval
rl_gpt reports (Student's t, ``mean_ci95``) with the percentile bootstrap it used before.

    python scripts/interval_coverage.py --sims 400
"""

from __future__ import annotations

import argparse

import torch

from rl_gpt.evaluate.alignment import alignment_r2, mean_ci95

PROMPTS = torch.linspace(0, 500, 10)


def draw(inits: int, g: torch.Generator, bad_share: float) -> torch.Tensor:
    bad = (torch.rand(inits, 1, 1, generator=g) < bad_share).float()
    offset = 20 * torch.randn(inits, 1, 1, generator=g) + 150 * bad
    noise = (40 + 80 * bad) * torch.randn(inits, len(PROMPTS), 2, generator=g)
    return PROMPTS.view(1, -1, 1) + offset + noise


def percentile_bootstrap(values: torch.Tensor, g: torch.Generator, resamples: int = 2000) -> tuple[float, float]:
    means = values[torch.randint(len(values), (resamples, len(values)), generator=g)].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=400)
    args = parser.parse_args()
    for bad_share in (0.0, 0.1):
        g = torch.Generator().manual_seed(999)
        truth = float(torch.cat([alignment_r2(PROMPTS, draw(100_000, g, bad_share)) for _ in range(5)]).mean())
        for inits in (8, 16, 48):
            g = torch.Generator().manual_seed(inits)
            hits = {"t (rl_gpt)": 0, "percentile bootstrap": 0}
            for _ in range(args.sims):
                r2 = alignment_r2(PROMPTS, draw(inits, g, bad_share))
                intervals = {"t (rl_gpt)": mean_ci95(r2), "percentile bootstrap": percentile_bootstrap(r2, g)}
                for name, (low, high) in intervals.items():
                    hits[name] += low <= truth <= high
            shares = ", ".join(f"{name} {count / args.sims:.1%}" for name, count in hits.items())
            print(f"{bad_share:.0%} bad inits, {inits} inits: {shares}", flush=True)


if __name__ == "__main__":
    main()
