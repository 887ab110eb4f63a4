"""The generative process over flat vectors: schedules, training loss, samplers and guidance.

Knows nothing of policies, layouts or the network; a denoiser is any ``model_fn(x_t, t, **kwargs)``.
"""

from .gaussian import GaussianDiffusion, LossWeight, ModelFn, Prediction
from .guidance import guided
from .sampler import SampleMethod, sample
from .schedule import NoiseSchedule, ScheduleName, cosine_betas, linear_betas, make_betas, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "LossWeight",
    "ModelFn",
    "NoiseSchedule",
    "Prediction",
    "SampleMethod",
    "ScheduleName",
    "cosine_betas",
    "guided",
    "linear_betas",
    "make_betas",
    "sample",
    "space_timesteps",
]
