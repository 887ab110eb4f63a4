"""The accelerator paths: training with bf16 autocast, sampling and batched evaluation on CUDA.

Skipped without a CUDA device (CI has none); run on a lent GPU machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rl_gpt.cli import main
from rl_gpt.evaluate import BatchedPolicy, PolicySpec, evaluate_params
from rl_gpt.train.modelfile import load_generator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

QUIET = ["wandb.mode=disabled", "-q"]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda")
    collect = ["collect", "cartpole", f"out={out}", "runs=4", "timesteps=1024", "collect.checkpoint_every=256"]
    assert main([*collect, "task.n_envs=2", "workers=1", "collect.eval_episodes=2", *QUIET]) == 0
    train = ["train", "cartpole", f"out={out}", "steps=40", "batch=64", "device=cuda", "train.probe_every_s=0"]
    train += ["train.calibrate=false"]
    assert main([*train, "train.test_fraction=0.25", *QUIET]) == 0
    return out


def test_training_on_cuda_runs_its_final_probe_and_writes_a_model(cuda_run):
    state = json.loads((cuda_run / "model" / "train_state" / "state.json").read_text())
    assert state["step"] == 40
    # the final probe samples with the CUDA model from dataset inits read on the CPU
    alignment = json.loads((cuda_run / "model" / "alignment.json").read_text())
    assert all(math.isfinite(alignment[k]) for k in ("train_inits_r2", "heldout_inits_r2"))
    gen, _ = load_generator(cuda_run / "model")
    assert all(torch.isfinite(p).all() for p in gen.model.parameters())


def test_the_denoiser_on_cuda_matches_cpu(cuda_run):
    gen, _ = load_generator(cuda_run / "model")
    g = torch.Generator().manual_seed(0)
    theta, x_t = (torch.randn(8, gen.layout.numel, generator=g) for _ in range(2))
    metric, prompt, t = torch.full((8,), 20.0), torch.full((8,), 400.0), torch.full((8,), 500)
    cpu = gen._model_fn(gen.model)(x_t, t, **gen.conditioning(theta, metric, prompt))
    gen.to("cuda")
    cond = gen.conditioning(theta.cuda(), metric.cuda(), prompt.cuda())
    gpu = gen._model_fn(gen.model)(x_t.cuda(), t.cuda(), **cond).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
    sample = gen.sample(theta.cuda(), metric.cuda(), prompt.cuda(), steps=10)
    assert sample.shape == theta.shape and sample.device.type == "cuda" and torch.isfinite(sample).all()


def _policy(run: Path) -> tuple:
    gen, info = load_generator(run / "model")
    return gen.layout, PolicySpec.from_dict(info["spec"]["policy"])


def test_batched_policy_actions_on_cuda_match_cpu(cuda_run):
    layout, spec = _policy(cuda_run)
    params = torch.randn(32, layout.numel) * 0.3
    obs = torch.randn(32, 5, spec.obs_dim)
    policy = BatchedPolicy(layout, spec)
    cpu = policy.act(params, obs, deterministic=True)
    gpu = policy.act(params.cuda(), obs.cuda(), deterministic=True).cpu()
    assert torch.equal(cpu, gpu)


def test_cartpole_evaluation_on_cuda_agrees_with_cpu(cuda_run):
    layout, spec = _policy(cuda_run)
    params = torch.randn(64, layout.numel) * 0.5
    kw = {"episodes": 16, "seed": 3}
    cpu = evaluate_params(params, layout, spec, "CartPole-v1", **kw).mean
    gpu = evaluate_params(params, layout, spec, "CartPole-v1", device="cuda", **kw).mean.cpu()
    # float32 dynamics on two devices can part after many steps; the means must still agree closely
    assert (gpu - cpu).abs().mean() < 0.02 * cpu.abs().mean() + 1.0


def test_sweep_on_cuda_writes_a_report(cuda_run, tmp_path):
    sweep = ["sweep", "cartpole", f"out={cuda_run}", "--out", str(tmp_path), "device=cuda", "inits=2", "prompts=3"]
    assert main([*sweep, "samples=1", "episodes=4", *QUIET]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["achieved"]) == 2 and report["prompt_alignment_r2"] == report["prompt_alignment_r2"]
