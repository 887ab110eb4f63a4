"""Batched policy evaluation (``rl_gpt.evaluate``) against SB3's ``evaluate_policy`` on CartPole-v1.

For each B, B PPO actors (pi=[64, 64]) are evaluated for E episodes each with
``evaluate_params``. Running SB3's ``evaluate_policy`` on thousands of policies would take hours, so
its cost is measured once per policy set — K sample policies from the same set, each loaded into an
SB3 PPO model and run through ``evaluate_policy`` on a Gymnasium CartPole — as seconds per env
step, and extrapolated to the env steps the B·E episodes actually took. Both sides run in this
process, with the same torch thread setting.

Policy sets: ``random`` — freshly initialised SB3 actors (orthogonal init, SB3's gains), mostly
short episodes with a long tail; ``trained`` — a briefly trained PPO actor plus small Gaussian
noise per copy, mostly full 500-step episodes (the memory-bound worst case).

Usage: ``python scripts/bench_eval.py [--sizes 1 64 1024 4096] [--policies random trained]
[--device cpu|cuda] [--threads 1] [--profile]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
from pathlib import Path

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rl_gpt.evaluate import evaluate_params, policy_spec_from_sb3
from rl_gpt.layout import Layout
from rl_gpt.sb3_policy import actor_layout, load_actor, read_actor

ENV_ID = "CartPole-v1"


# ---------------------------------------------------------------------------------------- policies
def make_model(seed: int = 0) -> PPO:
    return PPO(
        "MlpPolicy",
        ENV_ID,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}},
        seed=seed,
        device="cpu",
        n_steps=256,
        batch_size=64,
        learning_rate=1e-3,
    )


def sb3_init(layout: Layout, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, D) actors initialised as SB3 does: orthogonal weights (gain √2, 0.01 for the action
    head), zero biases, zero log-std."""
    parts = []
    for p in layout.params:
        if p.name.endswith(".weight"):
            rows, cols = p.shape
            gain = 0.01 if p.name.startswith("action_net") else math.sqrt(2)
            a = torch.randn(batch, max(rows, cols), min(rows, cols), generator=generator)
            q, r = torch.linalg.qr(a)  # (B, max, min) orthonormal columns
            q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
            q = q if rows >= cols else q.transpose(1, 2)  # (B, rows, cols)
            parts.append(gain * q.reshape(batch, -1))
        else:
            parts.append(torch.zeros(batch, p.numel))
    return torch.cat(parts, dim=1)


def trained_actor(path: Path | None, steps: int) -> torch.Tensor:
    """A briefly trained PPO actor (D,), trained here unless ``path`` holds one."""
    if path is not None and path.exists():
        model = PPO.load(path, device="cpu")
    else:
        model = make_model(seed=0)
        t = time.perf_counter()
        model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-* folder
        model.learn(steps)
        print(f"# trained PPO on {ENV_ID} for {steps} steps in {time.perf_counter() - t:.0f} s")
        if path is not None:
            model.save(path)
    return read_actor(model.policy, actor_layout(model.policy, "ppo"))


# ---------------------------------------------------------------------------------------- SB3 baseline
def sb3_seconds_per_step(
    params: torch.Tensor, layout: Layout, episodes: int, min_steps: int
) -> tuple[float, float, int]:
    """SB3 evaluate_policy's (wall, CPU) seconds per env step on the policies in ``params`` (K, D)."""
    model = make_model()
    env = DummyVecEnv([lambda: Monitor(gym.make(ENV_ID))])
    wall, cpu, steps, k = 0.0, 0.0, 0, 0
    while steps < min_steps or k < params.shape[0]:
        load_actor(model.policy, layout, params[k % params.shape[0]])
        t, c = time.perf_counter(), time.process_time()
        _, lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
        )
        wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
        steps += sum(lengths)
        k += 1
    return wall / steps, cpu / steps, steps


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096], help="numbers of policies B")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per policy E")
    parser.add_argument("--policies", nargs="+", default=["random", "trained"], choices=["random", "trained"])
    parser.add_argument("--device", default="cpu", help="torch device of the batched evaluator (cpu, cuda)")
    # 1 by default: on a shared CPU every multi-threaded kernel waits on a descheduled thread (10-100x slower).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides (0: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (median reported)")
    parser.add_argument("--sb3-policies", type=int, default=4, help="K policies timed with evaluate_policy")
    parser.add_argument("--sb3-min-steps", type=int, default=3000, help="env steps to time SB3 on, at least")
    parser.add_argument("--trained-model", type=Path, default=None, help="PPO .zip to load/save the trained actor")
    parser.add_argument("--train-steps", type=int, default=20_000)
    parser.add_argument("--noise", type=float, default=0.01, help="std of the noise added to trained copies")
    parser.add_argument("--profile", action="store_true", help="torch-profile the largest size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")

    layout = actor_layout(make_model().policy, "ppo")
    spec = policy_spec_from_sb3(make_model(), "ppo")
    gen = torch.Generator().manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"# torch {torch.__version__}, device {args.device} ({device_name}), threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"# {ENV_ID}, PPO actor pi=[64, 64] ({layout.numel} params), E={args.episodes} episode(s) per policy")

    # num_threads=None: the evaluator keeps the thread setting both sides were given above.
    run = functools.partial(
        evaluate_params,
        layout=layout,
        spec=spec,
        env_id=ENV_ID,
        episodes=args.episodes,
        device=args.device,
        num_threads=None,
    )
    for kind in args.policies:
        biggest = max(args.sizes)
        if kind == "random":
            pool = sb3_init(layout, biggest, gen)  # (B_max, D)
        else:
            base = trained_actor(args.trained_model, args.train_steps)
            pool = base + args.noise * torch.randn(biggest, layout.numel, generator=gen)
        per_step, cpu_per_step, sb3_steps = sb3_seconds_per_step(
            pool[: args.sb3_policies], layout, args.episodes, args.sb3_min_steps
        )
        print(
            f"\n## {kind} policies. SB3 evaluate_policy: {per_step * 1e6:.0f} µs wall ({cpu_per_step * 1e6:.0f} µs "
            f"CPU) per env step, timed on {sb3_steps} steps of {args.sb3_policies} of these policies. SB3 s = that "
            "cost x the env steps the B·E episodes took (extrapolated per episode, not run). Wall times are "
            "medians of the repeats; CPU-time speed-up in brackets (robust to other load on the machine)."
        )
        print(
            "| B | episodes | env steps | mean len | ours s | ours steps/s | ours policies/s | SB3 s (extrap.) "
            "| speed-up (CPU) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for B in args.sizes:
            params = pool[:B]
            run(params)  # warm-up
            walls, cpus = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                result = run(params)
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            ours, ours_cpu = statistics.median(walls), statistics.median(cpus)
            steps = int(result.lengths.sum())
            sb3 = per_step * steps
            print(
                f"| {B} | {B * args.episodes} | {steps} | {steps / (B * args.episodes):.0f} | {ours:.3f} | "
                f"{steps / ours:,.0f} | {B / ours:,.0f} | {sb3:.1f} | {sb3 / ours:.0f}x "
                f"({cpu_per_step * steps / ours_cpu:.0f}x) |"
            )
        if args.profile:
            from torch.profiler import profile

            with profile() as prof:
                run(pool)
            print(f"\n### torch profile, {kind}, B={biggest}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
