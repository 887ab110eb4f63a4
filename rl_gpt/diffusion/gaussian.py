"""Gaussian diffusion over flat vectors: forward noising, prediction conversions, the training loss.

Notation (DDPM, Ho et al. 2020): x_t = sqrt(ab_t)·x0 + sqrt(1 - ab_t)·eps with ab = alphas_cumprod,
SNR_t = ab_t / (1 - ab_t). The network may predict one of three equivalent targets:

- ``x0``:  the clean data (G.pt's choice);
- ``eps``: the noise (DDPM);
- ``v``:   sqrt(ab)·eps - sqrt(1 - ab)·x0 (Salimans & Ho 2022, "progressive distillation").

``model_fn(x_t, t, **model_kwargs)`` receives x_t (B, ...) and float timesteps t (B,) on the
original 0..T-1 scale, also when a respaced sampler visits only some of them.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import torch

from .schedule import NoiseSchedule, ScheduleName

__all__ = ["GaussianDiffusion", "LossWeight", "ModelFn", "Prediction"]

Prediction = Literal["x0", "eps", "v"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
LossWeight = Literal["none", "snr", "min_snr", "truncated_snr"]
LOSS_WEIGHTS: tuple[str, ...] = get_args(LossWeight)


class ModelFn(Protocol):
    """A denoiser: ``(x_t (B, ...), t (B,) float on the 0..T-1 scale, **kwargs) -> prediction (B, ...)``."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor: ...


class GaussianDiffusion:
    """The generative process: schedule, prediction type and loss weighting; knows nothing of the data.

    ``loss_weight`` says how the per-example MSE in the prediction's space is weighted per noise
    level. Except for ``none``, weights are defined on the equivalent x0-space error, so they mean
    the same whatever ``prediction`` is (the prediction-space error is ``c·|x0 error|²`` with
    c = 1, SNR, SNR + 1 for x0, eps, v, and the weight used is w_x0 / c):

    - ``none``: unweighted MSE in the prediction's own space (DDPM's L_simple for eps; G.pt for x0).
    - ``snr``: w_x0 = SNR, i.e. the eps-space MSE whatever the prediction.
    - ``min_snr``: w_x0 = min(SNR, gamma) (Hang et al. 2023, "Min-SNR"); caps the easy low-noise steps.
    - ``truncated_snr``: w_x0 = max(SNR, 1) (Salimans & Ho 2022); keeps weight on the high-noise steps.
    """

    def __init__(
        self,
        schedule: ScheduleName = "cosine",
        steps: int = 1000,
        prediction: Prediction = "x0",
        loss_weight: LossWeight = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight {loss_weight!r}; choose one of {LOSS_WEIGHTS}")
        self.schedule_name = schedule
        self.prediction = prediction
        self.loss_weight = loss_weight
        self.min_snr_gamma = min_snr_gamma
        self.schedule = NoiseSchedule.named(schedule, steps)  # float64 tables
        self.num_steps = steps

        ac = self.schedule.alphas_cumprod
        snr = self.schedule.snr
        tables64 = {
            "sqrt_ac": ac.sqrt(),
            "sqrt_1m_ac": (1.0 - ac).sqrt(),
            "loss_weight": self._loss_weights(snr),
        }
        # float64 copies serve float64 inputs (tests); float32 everything else.
        self._tables = {torch.float64: tables64, torch.float32: {k: v.float() for k, v in tables64.items()}}

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(schedule={self.schedule_name!r}, steps={self.num_steps}, "
            f"prediction={self.prediction!r}, loss_weight={self.loss_weight!r})"
        )

    def _loss_weights(self, snr: torch.Tensor) -> torch.Tensor:
        """Per-step weight on the prediction-space MSE, (T,) float64."""
        if self.loss_weight == "none":
            return torch.ones_like(snr)
        w_x0 = {
            "snr": snr,
            "min_snr": snr.clamp(max=self.min_snr_gamma),
            "truncated_snr": snr.clamp(min=1.0),
        }[self.loss_weight]
        c = {"x0": torch.ones_like(snr), "eps": snr, "v": snr + 1.0}[self.prediction]
        return w_x0 / c

    def _gather(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps t (B,), shaped (B, 1, ..., 1) to broadcast against x."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        table = self._tables[dtype][name].to(x.device)
        return table[t.long()].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    # --- forward process -------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0) = N(sqrt(ab_t)·x0, (1 - ab_t)·I) with the given noise; (B, ...)."""
        return self._gather("sqrt_ac", t, x0) * x0 + self._gather("sqrt_1m_ac", t, x0) * noise

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Timesteps uniform on 0..T-1, (B,) long."""
        return torch.randint(0, self.num_steps, (batch,), generator=generator, device=device)

    # --- conversions between parameterisations -----------------------------------------------------

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model's prediction ``pred`` at (x_t, t); (B, ...)."""
        a, s = self._gather("sqrt_ac", t, x_t), self._gather("sqrt_1m_ac", t, x_t)
        if self.prediction == "x0":
            return pred
        if self.prediction == "eps":
            return (x_t - s * pred) / a
        return a * x_t - s * pred  # v

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """eps implied by the model's prediction ``pred`` at (x_t, t); (B, ...)."""
        a, s = self._gather("sqrt_ac", t, x_t), self._gather("sqrt_1m_ac", t, x_t)
        if self.prediction == "x0":
            return (x_t - a * pred) / s
        if self.prediction == "eps":
            return pred
        return s * x_t + a * pred  # v

    def prediction_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The prediction a perfect model would output at (x_t, t) if the clean data were x0; (B, ...)."""
        a, s = self._gather("sqrt_ac", t, x_t), self._gather("sqrt_1m_ac", t, x_t)
        if self.prediction == "x0":
            return x0
        eps = (x_t - a * x0) / s
        return eps if self.prediction == "eps" else a * eps - s * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for x_t = q_sample(x0, t, noise); (B, ...)."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return noise
        return self._gather("sqrt_ac", t, x0) * noise - self._gather("sqrt_1m_ac", t, x0) * x0  # v

    # --- training ----------------------------------------------------------------------------------

    def training_loss(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        keep_x0: bool = False,
        **model_kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted MSE per example (B,) and detached extras (``t``, ``mse``, ``mse_x0``, ``weight``).

        ``t`` (B,) and ``noise`` (like x0) are drawn with ``generator`` (on x0's device) when not given.
        ``keep_x0`` adds ``x0_pred``, the model's x0 estimate *with* its gradient, for losses on it.
        """
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched, shape (B, ...); got {tuple(x0.shape)}")
        b = x0.shape[0]
        if t is None:
            t = self.sample_t(b, generator=generator, device=x0.device)  # (B,)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)  # (B, ...)
        pred = model_fn(x_t, t.to(x0.dtype), **model_kwargs)  # (B, ...)
        if pred.shape != x0.shape:
            raise ValueError(f"model_fn returned shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
        target = self.target(x0, noise, t)
        mse = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        weight = self._gather("loss_weight", t, mse)  # (B,)
        x0_pred = self.predict_x0(x_t, t, pred)
        mse_x0 = (x0_pred.detach() - x0).pow(2).flatten(1).mean(1)  # (B,) comparable across types
        extras = {"t": t, "mse": mse.detach(), "mse_x0": mse_x0, "weight": weight}
        if keep_x0:
            extras["x0_pred"] = x0_pred
        return weight * mse, extras
