"""Known-answer tests of the noise math and samplers, and a tiny conditional model learned end to end.

The two-cluster toy is learned twice: by a bare denoiser, and through ParameterGenerator's prompt-free
reference mode (``condition_on_theta=False``), where θ and m are noise the model must not see.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from rl_gpt.diffusion import GaussianDiffusion, NoiseSchedule, guided, make_betas, sample, space_timesteps

T = 1000
PREDICTIONS = ("x0", "eps", "v")
METHODS = ("ddim", "ddpm")


pytestmark = pytest.mark.usefixtures("one_thread")


def _cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


# --- schedules ------------------------------------------------------------------------------------


def test_cosine_alphas_cumprod_matches_closed_form() -> None:
    ac = NoiseSchedule.named("cosine", T).alphas_cumprod
    assert ac.dtype == torch.float64
    # The product telescopes to alpha_bar((t+1)/T) / alpha_bar(0) until max_beta clips the last step.
    ratios = [_cosine_alpha_bar((t + 1) / T) / _cosine_alpha_bar(0.0) for t in range(T - 1)]
    torch.testing.assert_close(ac[:-1], torch.tensor(ratios, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert ac[0].item() == pytest.approx(0.99995872, abs=1e-8)
    assert ac[-1].item() == pytest.approx(ac[-2].item() * (1 - 0.999))  # clipped last beta
    assert ac[-1].item() < 1e-8
    assert bool((ac.diff() < 0).all())


def test_linear_betas_scale_with_steps() -> None:
    b = make_betas("linear", 1000)
    assert (b[0].item(), b[-1].item()) == pytest.approx((1e-4, 0.02))
    b = make_betas("linear", 500)  # rescaled so 500 steps add about as much noise as 1000
    assert (b[0].item(), b[-1].item()) == pytest.approx((2e-4, 0.04))
    assert NoiseSchedule.named("linear", T).alphas_cumprod[-1].item() < 1e-4


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="score")
    with pytest.raises(ValueError, match="loss_weight"):
        GaussianDiffusion(loss_weight="p2")


def test_space_timesteps() -> None:
    ts = space_timesteps(T, 10)
    assert ts[0].item() == 0 and ts[-1].item() == T - 1 and len(ts) == 10
    assert bool((ts.diff() > 0).all())
    assert space_timesteps(T, 1).tolist() == [T - 1]
    assert torch.equal(space_timesteps(T, T), torch.arange(T))
    with pytest.raises(ValueError, match="1..1000"):
        space_timesteps(T, 1001)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_respace_keeps_alphas_cumprod(schedule: str) -> None:
    full = NoiseSchedule.named(schedule, T)
    torch.testing.assert_close(full.respace(torch.arange(T)).betas, full.betas)
    ts = space_timesteps(T, 10)
    spaced = full.respace(ts)
    torch.testing.assert_close(spaced.alphas_cumprod, full.alphas_cumprod[ts])
    assert spaced.posterior_variance[0].item() == 0.0


# --- forward process and conversions ------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 300, 999])
def test_q_sample_marginal(t: int) -> None:
    d = GaussianDiffusion()
    ac = d.schedule.alphas_cumprod[t].item()
    x0 = torch.tensor([[1.5, -2.0, 0.0]]).expand(200_000, 3)  # (N, 3), one data point
    tt = torch.full((x0.shape[0],), t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.q_sample(x0, tt, torch.zeros_like(x0)), math.sqrt(ac) * x0)
    x_t = d.q_sample(x0, tt, noise)
    torch.testing.assert_close(x_t.mean(0), math.sqrt(ac) * x0[0], atol=0.01, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.full((3,), 1 - ac), atol=0.01, rtol=0.01)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_round_trip(prediction: str) -> None:
    d = GaussianDiffusion(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, generator=g, dtype=torch.float64)  # (B, D)
    noise = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = d.q_sample(x0, t, noise)
    target = d.target(x0, noise, t)
    torch.testing.assert_close(d.predict_x0(x_t, t, target), x0)
    torch.testing.assert_close(d.predict_eps(x_t, t, target), noise)
    torch.testing.assert_close(d.prediction_from_x0(x_t, t, x0), target)
    # float timesteps (what model_fn receives) index the same tables
    torch.testing.assert_close(d.predict_x0(x_t, t.double(), target), x0)


# --- training loss ----------------------------------------------------------------------------------


def test_training_loss_zero_for_oracle_and_deterministic() -> None:
    x_star = torch.tensor([0.3, -1.2, 2.0])
    x0 = x_star.expand(16, 3)
    for prediction in PREDICTIONS:
        d = GaussianDiffusion(prediction=prediction, loss_weight="min_snr")

        def oracle(x_t: torch.Tensor, t: torch.Tensor, d: GaussianDiffusion = d) -> torch.Tensor:
            return d.prediction_from_x0(x_t.double(), t, x0.double()).float()

        loss, extras = d.training_loss(oracle, x0, generator=torch.Generator().manual_seed(0))
        assert loss.shape == (16,) and extras["t"].shape == (16,)
        assert bool(((extras["t"] >= 0) & (extras["t"] < T)).all())
        assert loss.max().item() < 1e-4, prediction

    d = GaussianDiffusion()
    model = nn.Linear(3, 3)

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t)

    a, _ = d.training_loss(fn, x0, generator=torch.Generator().manual_seed(1))
    b, _ = d.training_loss(fn, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("loss_weight", ["snr", "min_snr", "truncated_snr"])
def test_loss_weights_mean_the_same_for_every_prediction(loss_weight: str) -> None:
    """The same x0 estimate costs the same, whatever space the model predicts in."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(32, 5, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(32, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (32,), generator=g)
    losses = {}
    for prediction in PREDICTIONS:
        d = GaussianDiffusion(prediction=prediction, loss_weight=loss_weight)

        def fn(x_t: torch.Tensor, tt: torch.Tensor, d: GaussianDiffusion = d) -> torch.Tensor:
            return d.prediction_from_x0(x_t, tt, x0_hat)

        losses[prediction], _ = d.training_loss(fn, x0, t=t, noise=noise)
    snr = NoiseSchedule.named("cosine", T).snr[t]
    w = {"snr": snr, "min_snr": snr.clamp(max=5.0), "truncated_snr": snr.clamp(min=1.0)}[loss_weight]
    expected = w * (x0_hat - x0).pow(2).mean(1)
    for prediction in PREDICTIONS:
        torch.testing.assert_close(losses[prediction], expected, rtol=1e-6, atol=1e-9)


# --- samplers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_sampler_returns_the_only_data_point(prediction: str, method: str) -> None:
    d = GaussianDiffusion(prediction=prediction)
    x_star = torch.tensor([0.5, -1.0, 2.0, 0.0])

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return d.prediction_from_x0(x_t, t, x_star.expand_as(x_t))

    for steps in (10, 50):
        x = sample(d, oracle, (8, 4), steps=steps, method=method, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(x, x_star.expand(8, 4), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("steps", "std_tol"), [(10, 0.3), (50, 0.12), (1000, 0.05)])
def test_sampler_recovers_gaussian_data(method: str, steps: int, std_tol: float) -> None:
    """With the exact denoiser of N(mu, s²I) data, samples have mean mu and, given enough steps, std s."""
    mu, s = torch.tensor([1.0, -0.5]), 0.5
    d = GaussianDiffusion(prediction="eps")
    ac = d.schedule.alphas_cumprod.float()

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t.long()][:, None]  # (B, 1)
        x0 = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x_t - a.sqrt() * mu)  # E[x0 | x_t]
        return d.prediction_from_x0(x_t, t, x0)

    x = sample(d, oracle, (4000, 2), steps=steps, method=method, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), mu, atol=0.05, rtol=0)
    # Few steps shrink the spread (discretisation error), never widen it.
    assert bool((x.std(0) > s * (1 - std_tol)).all()) and bool((x.std(0) < s * 1.05).all()), x.std(0)


def test_ddpm_is_ddim_with_eta_one() -> None:
    d = GaussianDiffusion(prediction="v")
    net = _tiny_net(4)
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = {"steps": 20, "x_T": x_T}
    a = sample(d, net, (16, 4), method="ddpm", generator=torch.Generator().manual_seed(1), **kw)
    b = sample(d, net, (16, 4), method="ddim", eta=1.0, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    c = sample(d, net, (16, 4), method="ddim", eta=0.0, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.allclose(a, c)


def _tiny_net(dim: int) -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(dim + 1, dim)

        def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.cat([x_t, t[:, None] / T], 1))  # (B, D)

    return Net()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_respaced_sampling_runs(method: str, steps: int) -> None:
    d = GaussianDiffusion(schedule="linear", prediction="eps")
    net = _tiny_net(5)
    seen: list[torch.Tensor] = []

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return net(x_t, t)

    x = sample(d, fn, (3, 5), steps=steps, method=method, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 5) and bool(torch.isfinite(x).all())
    # the model sees float steps on the original 0..T-1 scale, noisiest first
    assert seen[0].dtype == torch.float32 and seen[0].shape == (3,)
    assert [int(t[0]) for t in seen] == space_timesteps(T, steps).flip(0).tolist()


def test_sample_checks_arguments() -> None:
    d = GaussianDiffusion()
    net = _tiny_net(2)
    with pytest.raises(ValueError, match="eta"):
        sample(d, net, (2, 2), method="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="method"):
        sample(d, net, (2, 2), method="euler")
    with pytest.raises(ValueError, match="x_T"):
        sample(d, net, (2, 2), x_T=torch.zeros(3, 2))


# --- guidance ------------------------------------------------------------------------------------------


def test_guided_combines_one_batched_call() -> None:
    calls: list[tuple[int, Any]] = []

    def fn(x_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor, cond_drop: torch.Tensor, tag: str) -> torch.Tensor:
        calls.append((x_t.shape[0], tag))
        assert prompt.shape[0] == x_t.shape[0] == t.shape[0] == cond_drop.shape[0]
        # conditional output: prompt; unconditional: -1
        return torch.where(cond_drop[:, None], -torch.ones_like(x_t), prompt[:, None].expand_as(x_t))

    x = torch.zeros(4, 3)
    t = torch.full((4,), 10.0)
    prompt = torch.tensor([1.0, 2.0, 3.0, 4.0])
    cond, uncond = prompt[:, None].expand(4, 3), -torch.ones(4, 3)
    for scale in (0.0, 1.0, 2.0, 3.5):
        calls.clear()
        out = guided(fn, scale)(x, t, prompt=prompt, tag="kept")
        torch.testing.assert_close(out, uncond + scale * (cond - uncond))
        assert calls == [(4 if scale in (0.0, 1.0) else 8, "kept")]  # one call; both halves batched
    # a caller's cond_drop mask is honoured in the conditional half
    out = guided(fn, 2.0)(x, t, prompt=prompt, cond_drop=torch.tensor([True, False, False, False]), tag="")
    torch.testing.assert_close(out[0], uncond[0])
    torch.testing.assert_close(out[1:], (uncond + 2 * (cond - uncond))[1:])


# --- a toy conditional distribution, learned end to end ------------------------------------------------

CENTERS = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # cluster k for prompt k
TOY_CLIP = {"x0": None, "v": None, "eps": 2.5}  # eps needs x0 clipping at cosine's noisiest steps


class ToyDenoiser(nn.Module):
    """MLP over (x_t, Fourier features of t, prompt embedding); ``cond_drop`` selects a null embedding."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(8) * math.pi)
        self.prompt_emb = nn.Embedding(3, 32)  # 0, 1 and the null prompt 2
        self.net = nn.Sequential(
            nn.Linear(2 + 16 + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2)
        )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor, cond_drop: torch.Tensor
    ) -> torch.Tensor:
        u = (t / T)[:, None] * self.freqs  # (B, 8)
        p = torch.where(cond_drop, torch.full_like(prompt, 2), prompt)  # (B,)
        return self.net(torch.cat([x_t, u.sin(), u.cos(), self.prompt_emb(p)], 1))  # (B, 2)


def _toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = torch.randint(0, 2, (n,), generator=g)  # (n,)
    return CENTERS[prompt] + 0.15 * torch.randn(n, 2, generator=g), prompt  # (n, 2), (n,)


@pytest.fixture(scope="module", params=PREDICTIONS)
def toy(request: pytest.FixtureRequest) -> tuple[GaussianDiffusion, ToyDenoiser]:
    """A ToyDenoiser trained for 3000 steps (a few seconds) with 10% prompt dropout."""
    torch.manual_seed(0)
    d = GaussianDiffusion(prediction=request.param)
    model = ToyDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        x0, prompt = _toy_batch(128, g)
        drop = torch.rand(128, generator=g) < 0.1
        loss, _ = d.training_loss(model, x0, generator=g, prompt=prompt, cond_drop=drop)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return d, model.eval()


def _toy_sample(d: GaussianDiffusion, fn: Any, method: str, prompt: int, **kwargs: Any) -> torch.Tensor:
    n = 400
    return sample(
        d,
        fn,
        (n, 2),
        steps=10,
        method=method,
        clip=TOY_CLIP[d.prediction],
        generator=torch.Generator().manual_seed(1),
        prompt=torch.full((n,), prompt),
        **kwargs,
    )


def _cluster(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, CENTERS).argmin(1)  # (n,) nearest centre


@pytest.mark.parametrize("method", METHODS)
def test_toy_prompt_selects_cluster(toy: tuple[GaussianDiffusion, ToyDenoiser], method: str) -> None:
    d, model = toy
    for k in (0, 1):
        x = _toy_sample(d, model, method, k, cond_drop=torch.zeros(400, dtype=torch.bool))
        assert (_cluster(x) == k).float().mean().item() > 0.9
        assert (x - CENTERS[k]).norm(dim=1).median().item() < 0.4  # near the cluster, not just its side


@pytest.mark.parametrize("method", METHODS)
def test_toy_dropped_prompt_covers_both_clusters(toy: tuple[GaussianDiffusion, ToyDenoiser], method: str) -> None:
    d, model = toy
    x = _toy_sample(d, model, method, 0, cond_drop=torch.ones(400, dtype=torch.bool))
    frac1 = _cluster(x).float().mean().item()
    assert 0.2 <= frac1 <= 0.8


def test_toy_guidance_keeps_the_mode(toy: tuple[GaussianDiffusion, ToyDenoiser]) -> None:
    d, model = toy
    for k in (0, 1):
        x = _toy_sample(d, guided(model, 2.0), "ddim", k)
        assert (_cluster(x) == k).float().mean().item() > 0.9


# --- the same toy through ParameterGenerator's prompt-free reference mode, p(θ' | m') --------------------

TOY_DIM = 4
TOY_CENTERS = torch.stack([torch.ones(TOY_DIM), -torch.ones(TOY_DIM)])  # θ' cluster k for prompt m' = k


@pytest.fixture(scope="module")
def toy_theta_free() -> Any:
    """A generator with ``condition_on_theta=False`` trained on pairs whose θ and m are pure noise."""
    from tensordict import TensorDict

    from rl_gpt.dataset.pairs import Normalizer
    from rl_gpt.layout import Layout
    from rl_gpt.model import build_model
    from rl_gpt.train.generator import ParameterGenerator

    torch.manual_seed(0)
    layout = Layout.build({"w": (TOY_DIM,)})
    ones = torch.ones(TOY_DIM)
    norm = Normalizer(0 * ones, ones, ones, 0.0, 1.0)  # identity on θ; m' in {0, 1} -> {-1, 1}
    model = build_model("mlp", layout, width=64, depth=2, residual=False)
    gen = ParameterGenerator(model, GaussianDiffusion(prediction="v"), norm, layout, condition_on_theta=False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        theta_next, k = _toy_pairs(128, g)
        batch = TensorDict(
            {
                "theta": 3 * torch.randn(128, TOY_DIM, generator=g),
                "metric": torch.rand(128, generator=g),
                "theta_next": theta_next,
                "metric_next": k.float(),
            },
            batch_size=[128],
        )
        loss, _ = gen.loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return gen


def _toy_pairs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(0, 2, (n,), generator=g)  # (n,)
    return TOY_CENTERS[k] + 0.15 * torch.randn(n, TOY_DIM, generator=g), k  # (n, D), (n,)


def _toy_theta_free_sample(gen: Any, k: int, theta: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
    n = theta.shape[0]
    return gen.sample(
        theta,
        torch.full((n,), 1.0 - k),  # m: the other cluster's metric, to tempt a leak
        torch.full((n,), float(k)),
        steps=10,
        guidance=guidance,
        generator=torch.Generator().manual_seed(1),
    )


def test_toy_theta_free_prompt_selects_cluster_whatever_theta(toy_theta_free: Any) -> None:
    gen, n = toy_theta_free, 400
    for k in (0, 1):
        for theta in (TOY_CENTERS[1 - k].expand(n, TOY_DIM), torch.zeros(n, TOY_DIM)):  # the wrong cluster, nothing
            x = _toy_theta_free_sample(gen, k, theta)
            nearest = torch.cdist(x, TOY_CENTERS).argmin(1)  # (n,)
            assert (nearest == k).float().mean().item() > 0.9
            assert (x - TOY_CENTERS[k]).norm(dim=1).median().item() < 0.4
        x = _toy_theta_free_sample(gen, k, TOY_CENTERS[k].expand(n, TOY_DIM), guidance=2.0)
        assert (torch.cdist(x, TOY_CENTERS).argmin(1) == k).float().mean().item() > 0.9


def test_toy_theta_free_unconditional_covers_both_clusters(toy_theta_free: Any) -> None:
    x = _toy_theta_free_sample(toy_theta_free, 0, torch.zeros(400, TOY_DIM), guidance=0.0)  # prompt dropped
    frac1 = torch.cdist(x, TOY_CENTERS).argmin(1).float().mean().item()
    assert 0.2 <= frac1 <= 0.8


def test_sampling_steps_are_the_nearest_training_steps_to_an_even_spacing() -> None:
    """K of T steps: evenly spaced from 0 to T - 1, each rounded to the nearest index (not truncated), so the
    visited noise levels are those improved-DDPM's respacing visits."""
    assert space_timesteps(20, 4).tolist() == [0, 6, 13, 19]  # 0, 6.33, 12.67, 19
    assert space_timesteps(1000, 1).tolist() == [999]  # one step: from pure noise


def test_training_draws_every_noise_level_sampling_visits() -> None:
    """Sampling starts at step T - 1: training must draw it too (uniform on 0..T-1)."""
    diffusion = GaussianDiffusion(steps=4)
    drawn = diffusion.sample_t(400, generator=torch.Generator().manual_seed(0))
    assert sorted(set(drawn.tolist())) == [0, 1, 2, 3]
