"""Where the denoiser and the diffusion process meet: training loss and sampling in parameter space.

A :class:`ParameterGenerator` holds the network, the diffusion, the normaliser and the layout.
Callers speak in raw parameters and raw metrics; normalisation, the target parameterisation
(θ' or θ' − θ), guidance and the prompt-free reference mode are handled here.

With ``condition_on_theta=False`` the generator models p(θ' | m'), what p-diff does without a
prompt: θ and m are replaced by constants (zeros in normalised space) before the network sees
them, in training and in sampling alike, so no information about the starting parameters can
reach the output; callers still pass θ and m, which are ignored. Comparing such a model with the
init-conditioned one (the product's mode) tells how much of the difficulty comes from
conditioning on an unseen init.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn

from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion, SampleMethod, guided, sample
from rl_gpt.layout import Layout

__all__ = ["SAMPLE_CHUNK_ACTIVATIONS_CPU", "SAMPLE_CHUNK_VALUES", "ParameterGenerator", "activations_per_draw"]

# Parameter values one sampling call holds (rows x average x D). The denoiser's activations are
# ~20x that: a sweep of 64 MNIST inits x 10 prompts x 2 samples x 8 averaged x 4 candidates in one
# call (~26 GB) was killed; in calls of this size it peaked at 5.5 GB (the whole batch's starting
# noise and output are still held at once).
SAMPLE_CHUNK_VALUES = 1 << 25
# On the CPU, DDIM calls are also kept to about this many activation values (see activations_per_draw).
# Each layer allocates its output afresh, and an allocation past glibc's mmap threshold maps new pages
# that the kernel zeroes on first touch, so one large call spends much of its time in page faults
# (docs/benchmarks.md, scripts/bench_sampling.py: 1.5-1.8x on both demos' sweeps). DDIM is deterministic
# given its starting noise, so the split changes the draws by float rounding at most.
SAMPLE_CHUNK_ACTIVATIONS_CPU = 3 << 19


def activations_per_draw(model: nn.Module, numel: int, guidance: float = 1.0) -> int:
    """Roughly the largest activation one draw makes in ``model``, in values: tokens x width x the larger
    of the MLP ratio and 3 (attention's q, k and v), twice under guidance (each step runs the model on
    the conditional and the unconditional batch)."""
    config = getattr(model, "config", None)
    length = getattr(model, "sequence_length", None)
    if config is None or length is None:  # not one of rl_gpt's denoisers: its size is unknown
        return numel
    per_draw = int(length * config.width * max(3.0, config.mlp_ratio)) * (1 if guidance == 1.0 else 2)
    return max(numel, per_draw)


class ParameterGenerator:
    """Conditional generative model p(θ' | θ, m, m') over flat parameter vectors.

    ``condition_on_theta=False``: the reference p(θ' | m'), blind to θ and m (needs ``target="theta"``).
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        normalizer: Normalizer,
        layout: Layout,
        target: str = "theta",
        prompt_dropout: float = 0.1,
        condition_on_theta: bool = True,
        metric_jitter: float = 0.0,
        jitter_prompt: bool = True,
    ):
        if target not in ("theta", "delta"):
            raise ValueError(f"target={target!r}: choose 'theta' or 'delta'")
        if not metric_jitter >= 0:
            raise ValueError(f"metric_jitter={metric_jitter}: a fraction of the metric range, 0 or more")
        if not condition_on_theta and target != "theta":
            raise ValueError("condition_on_theta=False models θ' itself: target must be 'theta', not 'delta'")
        self.model, self.diffusion, self.normalizer, self.layout = model, diffusion, normalizer, layout
        self.target, self.prompt_dropout = target, prompt_dropout
        self.condition_on_theta = bool(condition_on_theta)
        self.metric_jitter = float(metric_jitter)
        self.jitter_prompt = bool(jitter_prompt)

    def to(self, device: torch.device | str) -> ParameterGenerator:
        self.model.to(device)
        n = self.normalizer
        self.normalizer = Normalizer(
            n.mean.to(device), n.std.to(device), n.delta_std.to(device), n.metric_low, n.metric_high
        )
        return self

    # ------------------------------------------------------------------ encoding
    def encode_target(self, theta: torch.Tensor, theta_next: torch.Tensor) -> torch.Tensor:
        """Raw (θ, θ') -> the normalised vector the diffusion models (B, D)."""
        if self.target == "delta":
            return self.normalizer.delta(theta_next - theta)
        return self.normalizer.params(theta_next)

    def decode_target(self, theta: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_target`: the raw θ' (B, D)."""
        if self.target == "delta":
            return theta + self.normalizer.undelta(x0)
        return self.normalizer.unparams(x0)

    def conditioning(self, theta: torch.Tensor, metric: torch.Tensor, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw θ (B, D), m (B,), m' (B,) -> the normalised inputs the network sees.

        Without ``condition_on_theta`` θ and m become zeros (the gap m' − m the network embeds is then
        m' itself): the outputs are built without reading θ or m, so nothing of them can leak in.
        """
        norm = self.normalizer
        prompt_n = norm.metric(prompt.to(theta.device))  # (B,)
        if not self.condition_on_theta:
            zeros_theta = torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device)  # (B, D)
            return {"theta": zeros_theta, "metric": torch.zeros_like(prompt_n), "prompt": prompt_n}
        return {"theta": norm.params(theta), "metric": norm.metric(metric.to(theta.device)), "prompt": prompt_n}

    def _model_fn(self, model: nn.Module):
        def fn(x_t: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
            return model(x_t, kw["theta"], t, kw["metric"], kw["prompt"], kw.get("cond_drop"))

        return fn

    # ------------------------------------------------------------------ training
    def loss(
        self,
        batch: TensorDict,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
        function_probe: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        function_weight: float = 0.0,
        function_signal_power: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean diffusion loss of a raw pair batch (theta, metric, theta_next, metric_next).

        With ``function_probe`` (``(params, target) -> (B,)`` output differences, e.g.
        :meth:`rl_gpt.train.function_loss.FunctionProbe.loss`) and ``function_weight`` > 0, adds
        that weight times the output difference between the decoded x0 estimate and the real θ',
        weighted by ᾱ(t) ** ``function_signal_power`` (ᾱ(t) is the share of signal in x_t);
        ``extras["function"]`` holds it per pair.
        """
        theta, theta_next = batch["theta"], batch["theta_next"]  # (B, D)
        x0 = self.encode_target(theta, theta_next)  # (B, D)
        b = theta.shape[0]
        drop = torch.rand(b, generator=generator, device=theta.device) < self.prompt_dropout  # (B,)
        cond = self.conditioning(theta, batch["metric"], batch["metric_next"])
        if self.metric_jitter > 0:
            # Labels are measurements: noise of metric_jitter x the metric range (2 normalised units)
            # keeps the model from keying on exact values, e.g. the one number every init is labelled with.
            for key in ("metric", "prompt") if self.jitter_prompt else ("metric",):
                noise = torch.randn(b, generator=generator, device=theta.device)
                cond[key] = cond[key] + 2 * self.metric_jitter * noise
        use_function = function_probe is not None and function_weight > 0
        losses, extras = self.diffusion.training_loss(
            self._model_fn(self.model if model is None else model),
            x0,
            generator=generator,
            keep_x0=use_function,
            cond_drop=drop,
            **cond,
        )
        if use_function:
            x0_pred = extras.pop("x0_pred")
            signal = self.diffusion.schedule.alphas_cumprod.to(theta.device, theta.dtype)[extras["t"]]  # (B,)
            signal = signal.pow(function_signal_power)
            function = function_probe(self.decode_target(theta, x0_pred), theta_next)  # (B,)
            losses = losses + function_weight * signal * function
            extras["function"] = function.detach()
        return losses.mean(), extras

    # ------------------------------------------------------------------ sampling
    def _checked_inputs(
        self, theta: torch.Tensor, metric: torch.Tensor | float, prompt: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """θ (B, D) as float32; m and m' as (B,) float32 (a number stands for every row); all finite."""
        d = self.layout.numel
        if not isinstance(theta, torch.Tensor) or theta.ndim != 2 or theta.shape[1] != d:
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta must be (B, {d}): a batch of flat networks in the model's layout, got {shape}")
        b = theta.shape[0]
        checked = [theta.float()]
        for name, value in (("metric", metric), ("prompt", prompt)):
            value = torch.as_tensor(value, dtype=torch.float32, device=theta.device)
            value = value.expand(b) if value.ndim == 0 else value
            if value.shape != (b,):
                raise ValueError(f"{name} must be one number or (B,) = ({b},), got {tuple(value.shape)}")
            checked.append(value)
        for name, value in zip(("theta", "metric", "prompt"), checked, strict=True):
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} holds NaN or infinite values")
        return checked[0], checked[1], checked[2]

    @torch.no_grad()
    def sample(
        self,
        theta: torch.Tensor,
        metric: torch.Tensor,
        prompt: torch.Tensor,
        steps: int = 20,
        method: SampleMethod = "ddim",
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
        average: int = 1,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw θ' (B, D) for raw θ (B, D), its metric m (B,) and the prompted metric m' (B,).

        ``average`` > 1 returns, for each row, the mean of that many independent samples: an estimate
        of E[θ' | θ, m, m'] instead of one draw. The samples update the same θ and stay in its basin,
        so their mean keeps working and loses the sampling noise that low-loss networks cannot absorb
        (digits: R² 0.839 with single draws, 0.900 with means of 16; docs/results.md).
        Without ``condition_on_theta`` θ and m only set the batch size, shape and device.
        ``x_T`` (B·average, D), row i's draws adjacent, is the starting noise; by default it is drawn
        from ``generator``. Large batches run in several calls (``SAMPLE_CHUNK_VALUES``; DDIM on the CPU
        also ``SAMPLE_CHUNK_ACTIVATIONS_CPU``) with the noise drawn for the whole batch first, so DDIM
        samples depend on the split by float rounding at most.

        This is the raw sampler: prompts are used as given (no calibration, no clamping to the training
        range) and m must be measured as the dataset's labels were. ``rl_gpt.generate.generate_params``
        does all of that with the model's own sampling settings.
        """
        if average < 1:
            raise ValueError(f"average={average}: the number of samples averaged per output, 1 or more")
        theta, metric, prompt = self._checked_inputs(theta, metric, prompt)
        b, d = theta.shape
        rows = max(1, SAMPLE_CHUNK_VALUES // (average * d))
        if method == "ddim" and theta.device.type == "cpu":  # deterministic given x_T: the split only rounds
            per_draw = activations_per_draw(self.model if model is None else model, d, guidance)
            rows = min(rows, max(1, SAMPLE_CHUNK_ACTIVATIONS_CPU // (average * per_draw)))
        if b > rows:
            if x_T is None:  # the whole batch's noise, in the order one call would draw it
                x_T = torch.randn((b * average, d), generator=generator, device=theta.device)
            parts = []
            for i in range(0, b, rows):
                part = slice(i, i + rows)
                noise = x_T[i * average : (i + rows) * average]
                args = (steps, method, guidance, generator, model, average)
                parts.append(self.sample(theta[part], metric[part], prompt[part], *args, x_T=noise))
            return torch.cat(parts)
        if average > 1:
            repeat = lambda v: v.repeat_interleave(average, dim=0)  # noqa: E731 - row i's draws are adjacent
            args = (steps, method, guidance, generator, model)
            one = self.sample(repeat(theta), repeat(metric), repeat(prompt), *args, x_T=x_T)
            return one.reshape(b, average, d).mean(1)
        net = self.model if model is None else model
        was_training = net.training
        net.eval()
        device = theta.device
        fn = self._model_fn(net)
        if guidance != 1.0:
            fn = guided(fn, guidance)
        x0 = sample(
            self.diffusion,
            fn,
            theta.shape,
            steps=steps,
            method=method,
            generator=generator,
            device=device,
            x_T=x_T,
            cond_drop=torch.zeros(theta.shape[0], dtype=torch.bool, device=device),
            **self.conditioning(theta, metric, prompt),
        )
        net.train(was_training)
        return self.decode_target(theta, x0)
