"""``generate_params``: networks sampled from a start for target metrics, in memory, as ``generate`` samples them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.dataset_metric import start_metric
from rl_gpt.generate.start import load_start, refuse_a_training_init, start_tensor
from rl_gpt.generate.targets import check_fraction_targets, read_targets, warn_outside_training_range
from rl_gpt.layout import Layout
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.modelfile import load_generator, open_dataset
from rl_gpt.train.ranker import MetricRanker, ranker_for
from rl_gpt.train.saved_config import sampled_as_saved

__all__ = ["GeneratedParams", "generate_params", "sample_networks"]


@dataclass
class GeneratedParams:
    """What :func:`generate_params` sampled, in memory: nothing of it is written to disk."""

    #: (targets, num, D) raw flat parameters in ``layout`` (``layout.unflatten(params[j, k])``: a state dict)
    params: torch.Tensor
    targets: list[float]
    #: (targets,) the prompts given to the generator: the targets, or the calibration's map of them
    conditioned_on: torch.Tensor
    #: (D,) the starting network θ, and its metric m as the dataset's labels were measured
    start: torch.Tensor
    start_metric: float
    layout: Layout
    #: the ranker's prediction for each kept candidate (targets, num), when ``rerank`` > 1
    predicted: torch.Tensor | None
    calibrated: bool
    guidance: float
    steps: int
    average: int
    rerank: int
    training_range: tuple[float, float]


def generate_params(
    model_dir: str | Path,
    target: float | Sequence[float],
    start: torch.Tensor | np.ndarray | str | Path | None = None,
    *,
    seed: int = 0,
    num: int = 1,
    guidance: float | None = None,
    steps: int | None = None,
    episodes: int = 16,
    dataset: str | Path | None = None,
    data_root: str | Path | None = None,
    average: int | None = None,
    calibrated: bool = True,
    extrapolate: bool = False,
    rerank: int | None = None,
    progress: bool = True,
) -> GeneratedParams:
    """Sample ``num`` networks per ``target`` from ``start``, as ``rl-gpt generate`` does, in memory.

    ``start`` is one flat network (D,) in the model's layout (a tensor or a numpy array), a file (an SB3
    ``.zip``, or a classifier's safetensors for supervised tasks), or None: the task's random initialiser at
    the sweep's unseen init ``seed``. Its metric is measured as the dataset labelled its checkpoints
    (``episodes`` only where the dataset does not say). The remaining settings are :func:`generate`'s; the
    defaults are the model's own sweep settings and its calibration. Nothing is written, except that
    ``rerank`` > 1 fits the model's ranker once and stores it beside the model (saying so unless
    ``progress`` is False).

    This is what to call from Python: :meth:`ParameterGenerator.sample` is the raw sampler, without the
    model's sampling settings, calibration or the start metric's protocol.
    """
    return sample_networks(
        model_dir,
        target,
        start,
        seed=seed,
        num=num,
        guidance=guidance,
        steps=steps,
        episodes=episodes,
        dataset=dataset,
        data_root=data_root,
        average=average,
        calibrated=calibrated,
        extrapolate=extrapolate,
        rerank=rerank,
        progress=progress,
    )[0]


class SamplerSettings(NamedTuple):
    """How each network is sampled (see :func:`generate_params`)."""

    guidance: float
    steps: int
    average: int
    rerank: int


def sampler_settings(
    info: dict[str, Any], guidance: float | None, steps: int | None, average: int | None, rerank: int | None
) -> SamplerSettings:
    """The settings given, and for those not given the model's own: as its sweeps (and its calibration)
    sample; older files without a sweep guidance: as its training probes."""
    config = info["meta"].get("config", {})
    swept = sampled_as_saved({"sweep": {}, **config})["sweep"]  # without sweep settings: older than ranking too
    if guidance is None:
        guidance = float(swept.get("guidance", config.get("train", {}).get("guidance", 1.0)))
    return SamplerSettings(
        guidance=guidance,
        steps=steps if steps is not None else int(swept.get("steps", 20)),
        average=average if average is not None else int(swept.get("average", 1)),
        rerank=rerank if rerank is not None else int(swept["rerank"]),
    )


def sample_networks(
    model_dir: str | Path,
    target: float | Sequence[float],
    start: torch.Tensor | np.ndarray | str | Path | None,
    *,
    seed: int,
    num: int,
    guidance: float | None,
    steps: int | None,
    episodes: int,
    dataset: str | Path | None,
    data_root: str | Path | None,
    average: int | None,
    calibrated: bool,
    extrapolate: bool,
    rerank: int | None,
    progress: bool = True,
    before_sampling: Callable[[], Any] | None = None,
) -> tuple[GeneratedParams, dict[str, Any], CheckpointDataset]:
    """:func:`generate_params`, also returning the model's info and the dataset it opened.
    ``before_sampling`` runs once every check has passed, before the slow part (the start's metric
    and the sampling): where ``generate`` claims its output folder."""
    from rl_gpt.train.calibration import conditioning_prompts

    # the targets and the model
    targets = read_targets(target)
    if num < 1:
        raise ValueError(f"num={num}: the number of networks per target, 1 or more")
    gen, info = load_generator(model_dir)
    check_fraction_targets(info["spec"].get("metric", {}).get("name"), targets)
    low, high = gen.normalizer.metric_low, gen.normalizer.metric_high
    warn_outside_training_range(targets, low, high, extrapolate)

    # the start network, and the dataset whose protocol measures it
    if start is None or isinstance(start, (str, Path)):
        theta = load_start(info, None if start is None else str(start), seed)
    else:  # a network's weights: a tensor, a numpy array
        theta = start_tensor(start, gen.layout)
    ds = open_dataset(model_dir, info, dataset, data_root=data_root)
    if start is None:
        refuse_a_training_init(ds, info, theta, seed)

    # the sampler's settings, and the ranker that chooses among candidates
    settings = sampler_settings(info, guidance, steps, average, rerank)
    ranker = None
    if settings.rerank > 1:
        split = info["meta"]["train_runs"], info["meta"]["test_runs"]
        ranker = ranker_for(model_dir, ds, gen.layout, *split, say=print if progress else lambda _: None)
    if before_sampling is not None:
        before_sampling()

    # the start's metric, as the training labels were measured, and the prompts to condition on
    runs = info["meta"]["train_runs"]
    start_m = start_metric(ds, theta[None], runs, episodes).float()
    bounds = None if extrapolate else (low, high)
    cond, cal = conditioning_prompts(
        model_dir,
        torch.tensor(targets),
        settings.guidance,
        settings.steps,
        settings.average,
        calibrated,
        bounds,
        settings.rerank,
    )

    # sample, and keep the ranker's choice of each network's candidates
    params, predicted = _draw(gen, theta, start_m, cond, num, settings, seed, ranker)
    result = GeneratedParams(
        params=params,
        targets=targets,
        conditioned_on=cond,
        start=theta,
        start_metric=float(start_m[0]),
        layout=gen.layout,
        predicted=predicted,
        calibrated=cal is not None,
        guidance=settings.guidance,
        steps=settings.steps,
        average=settings.average,
        rerank=settings.rerank,
        training_range=(low, high),
    )
    return result, info, ds


def _draw(
    gen: ParameterGenerator,
    theta: torch.Tensor,
    start_m: torch.Tensor,
    cond: torch.Tensor,
    num: int,
    settings: SamplerSettings,
    seed: int,
    ranker: MetricRanker | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num`` networks (targets, num, D) from ``theta`` (D,) for each prompt of ``cond`` (targets,), and the
    ranker's prediction for each (targets, num) when it chose among ``settings.rerank`` candidates."""
    targets = cond.shape[0]
    rows = targets * num  # target j's networks are rows j*num ... (j+1)*num - 1
    rerank = settings.rerank
    g = torch.Generator().manual_seed(seed)
    # Each target starts from the same noise (the seed's), so its networks do not depend on which
    # other targets the call asks for: `--target-return 300` alone gives what it gives among others.
    per_target = num * rerank * settings.average
    noise = torch.randn((per_target, theta.numel()), generator=g).repeat(targets, 1)
    params = gen.sample(
        theta[None].expand(rows * rerank, -1),
        start_m.expand(rows * rerank),
        cond.repeat_interleave(num * rerank),
        steps=settings.steps,
        guidance=settings.guidance,
        generator=g,
        average=settings.average,
        x_T=noise.to(theta.device),
    )
    predicted = None
    if ranker is not None:  # rows j*num*rerank ...: target j's num networks, each from rerank candidates
        params, predicted = ranker.choose(params.reshape(rows, rerank, -1), cond.repeat_interleave(num).double())
        predicted = ranker.within_range(predicted).reshape(targets, num)
    return params.reshape(targets, num, -1), predicted
