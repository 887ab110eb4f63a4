"""Throughput of the batched torch dynamics (``envs/``) against ``gymnasium.vector.SyncVectorEnv``.

Both sides step with random actions and restart finished sub-envs (the torch side with a masked
``initial_state``, gymnasium with its own autoreset), so the numbers are env-steps/s of a real
evaluation loop. Usage: ``python scripts/bench_envs.py [--envs CartPole-v1 ...] [--batch-sizes 1 64]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import torch

from rl_gpt.envs import DYNAMICS, make_dynamics


def _rate(step: Callable[[], None], batch: int, min_seconds: float) -> float:
    """env-steps/s of ``step`` (one call = ``batch`` env-steps), timed for at least ``min_seconds``."""
    for _ in range(3):  # warm-up
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or n < 3:
        step()
        n += 1
    return n * batch / elapsed


def torch_rate(env_id: str, batch: int, min_seconds: float, device: str = "cpu") -> float:
    dyn = make_dynamics(env_id)
    gen = torch.Generator(device=device).manual_seed(0)
    state = dyn.initial_state(batch, gen, torch.float32, device)  # (B, S)
    steps = torch.zeros(batch, dtype=torch.int64, device=device)  # (B,)
    space = dyn.action_space
    # A small pool of random action batches, drawn up front so both sides time only the env.
    if space.discrete:
        pool = torch.randint(space.n, (16, batch), generator=gen, device=device)  # (P, B)
    else:
        low = torch.tensor(space.low, device=device)
        high = torch.tensor(space.high, device=device)
        pool = low + (high - low) * torch.rand(16, batch, space.dim, generator=gen, device=device)  # (P, B, A)
    i = 0

    def step() -> None:
        nonlocal state, steps, i
        state, _, terminated = dyn.step(state, pool[i % 16])
        steps = steps + 1
        done = terminated | (steps >= dyn.max_episode_steps)
        state = torch.where(done[:, None], dyn.initial_state(batch, gen, torch.float32, device), state)
        steps = torch.where(done, 0, steps)
        i += 1
        if device != "cpu":
            torch.cuda.synchronize()

    return _rate(step, batch, min_seconds)


def gym_rate(env_id: str, batch: int, min_seconds: float) -> float:
    venv = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(batch)])
    venv.reset(seed=0)
    venv.action_space.seed(0)
    pool = [venv.action_space.sample() for _ in range(16)]
    i = 0

    def step() -> None:
        nonlocal i
        venv.step(pool[i % 16])
        i += 1

    rate = _rate(step, batch, min_seconds)
    venv.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=sorted(DYNAMICS), help="Gymnasium ids to time")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024, 16384], help="sub-envs B")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="time each measurement at least this long")
    parser.add_argument("--device", default="cpu", help="device of the torch dynamics")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (SyncVectorEnv uses one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__} (threads={threads}, device={args.device}), gymnasium {gym.__version__}, float32")
    header = f"{'env':<26}{'B':>7}{'torch steps/s':>16}{'gym Sync steps/s':>19}{'ratio':>9}"
    print(header)
    print("-" * len(header))
    for env_id in args.envs:
        for batch in args.batch_sizes:
            t = torch_rate(env_id, batch, args.min_seconds, args.device)
            g = gym_rate(env_id, batch, args.min_seconds)
            print(f"{env_id:<26}{batch:>7}{t:>16,.0f}{g:>19,.0f}{t / g:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
