"""ParameterGenerator's conditioning modes: the prompt-free reference p(θ' | m') never sees θ or m."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

import rl_gpt.train.generator as generator_module
from rl_gpt.config import ConfigError, TrainConfig, load_config, to_dict
from rl_gpt.dataset.pairs import Normalizer
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import build_model
from rl_gpt.train.checkpoint import load_train_state, save_train_state, training_segments
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.loop import build_generator, model_config, step_seed
from rl_gpt.train.modelfile import load_generator, save_model

LAYOUT = Layout.build(
    {"net.0.weight": (6, 3), "net.0.bias": (6,), "net.1.weight": (2, 6), "net.1.bias": (2,)},
    [LayerSpec("net.0", None, "h0", "tanh"), LayerSpec("net.1", "h0", None)],
)
D = LAYOUT.numel
VARIANTS = [dict(kind="mlp", depth=2), dict(tokens="neuron"), dict(tokens="layer", conditioning="tokens")]
VARIANT_IDS = ["mlp", "dit-neuron-adaln", "dit-layer-tokens"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _normalizer() -> Normalizer:
    g = torch.Generator().manual_seed(3)
    return Normalizer(torch.randn(D, generator=g), torch.rand(D, generator=g) + 0.5, torch.ones(D), 0.0, 500.0)


def _generator(condition_on_theta: bool, residual: bool = True, **variant) -> ParameterGenerator:
    """A tiny generator whose zero-initialised layers are randomised, so its output depends on every input."""
    torch.manual_seed(0)
    model = build_model("tiny", LAYOUT, residual=residual, **variant)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    diffusion = GaussianDiffusion(prediction="x0" if residual else "v")
    return ParameterGenerator(model, diffusion, _normalizer(), LAYOUT, condition_on_theta=condition_on_theta)


def _inits(seed: int, b: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, generator=g) * 3, torch.rand(b, generator=g) * 500  # θ (B, D), m (B,)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_theta_free_samples_do_not_depend_on_theta(variant: dict, guidance: float) -> None:
    prompt = torch.tensor([0.0, 100.0, 250.0, 400.0, 500.0])
    (theta_a, m_a), (theta_b, m_b) = _inits(10), _inits(11)
    outs = {}
    for mode in (False, True):
        gen = _generator(mode, **variant)
        assert gen.condition_on_theta is mode
        outs[mode] = [
            gen.sample(theta, m, prompt, steps=5, guidance=guidance, generator=torch.Generator().manual_seed(7))
            for theta, m in ((theta_a, m_a), (theta_b, m_b))
        ]
    assert torch.equal(outs[False][0], outs[False][1])  # bit-identical: θ and m never reach the network
    assert not torch.allclose(outs[True][0], outs[True][1])  # the same test catches a θ-conditioned model
    assert not torch.allclose(outs[False][0][0], outs[False][0][-1])  # while the prompt still matters


def test_theta_free_loss_and_gradients_do_not_depend_on_theta() -> None:
    (theta_a, m_a), (theta_b, m_b) = _inits(10), _inits(11)
    theta_next = torch.randn(5, D, generator=torch.Generator().manual_seed(12))
    metric_next = torch.tensor([0.0, 100.0, 250.0, 400.0, 500.0])
    gen = _generator(False)
    results = []
    for theta, m in ((theta_a, m_a), (theta_b, m_b)):
        gen.model.zero_grad()
        batch = TensorDict(
            {"theta": theta, "metric": m, "theta_next": theta_next, "metric_next": metric_next}, batch_size=[5]
        )
        loss, _ = gen.loss(batch, generator=torch.Generator().manual_seed(4))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in gen.model.parameters() if p.grad is not None]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize(("jitter", "prompt_too"), [(0.0, True), (0.05, True), (0.05, False)])
def test_metric_jitter_perturbs_the_metrics_the_network_sees_by_its_share_of_the_range(
    jitter: float, prompt_too: bool
) -> None:
    gen = _generator(True)
    gen.metric_jitter, gen.jitter_prompt = jitter, prompt_too
    seen = {}
    real = gen.diffusion.training_loss

    def spy(fn, x0, **kw):
        seen.update(metric=kw["metric"], prompt=kw["prompt"])
        return real(fn, x0, **kw)

    gen.diffusion.training_loss = spy
    b = 4096
    m, prompt = torch.full((b,), 100.0), torch.full((b,), 400.0)
    zeros = torch.zeros(b, D)
    batch = TensorDict({"theta": zeros, "metric": m, "theta_next": zeros, "metric_next": prompt}, batch_size=[b])
    gen.loss(batch, generator=torch.Generator().manual_seed(0))
    for key, raw in (("metric", m), ("prompt", prompt)):
        err = seen[key] - gen.normalizer.metric(raw)  # in normalised units: the range spans 2
        std = 2 * jitter if key == "metric" or prompt_too else 0.0  # train.jitter_prompt=false: m only
        assert err.mean().abs() < 0.01 and (err.std() - std).abs() < 0.01, key
    with pytest.raises(ValueError, match="metric_jitter"):
        ParameterGenerator(gen.model, gen.diffusion, _normalizer(), LAYOUT, metric_jitter=-0.1)


class _FalsyWrapper(torch.nn.Module):
    """Wraps a network and is falsy, as ``torch.compile``'s wrapper is (its ``len()`` raises) and an
    empty container is: ``model or self.model`` would silently run the unwrapped network instead."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def __len__(self) -> int:
        return 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_loss_and_sample_run_the_network_they_are_given_even_a_falsy_wrapper() -> None:
    gen = _generator(True)
    wrapper = _FalsyWrapper(gen.model)
    theta, m = _inits(10)
    batch = TensorDict({"theta": theta, "metric": m, "theta_next": theta, "metric_next": m}, batch_size=[5])
    gen.loss(batch, generator=torch.Generator().manual_seed(0), model=wrapper)
    assert wrapper.calls == 1
    gen.sample(theta, m, m, steps=3, generator=torch.Generator().manual_seed(0), model=wrapper)
    assert wrapper.calls > 1


def test_theta_free_mode_refuses_delta_target() -> None:
    model = build_model("tiny", LAYOUT)
    with pytest.raises(ValueError, match="target must be 'theta'"):
        ParameterGenerator(model, GaussianDiffusion(), _normalizer(), LAYOUT, "delta", condition_on_theta=False)
    cfg = TrainConfig(model="tiny", target="delta", condition_on_theta=False)
    with pytest.raises(ConfigError, match="train.target=theta"):
        build_generator(cfg, SimpleNamespace(layout=LAYOUT), _normalizer())  # type: ignore[arg-type]


def test_config_key_and_model_config() -> None:
    cfg = load_config("cartpole", ["train.condition_on_theta=false"], command="train")
    assert cfg.train.condition_on_theta is False
    assert TrainConfig().condition_on_theta is True
    # θ is zeros in this mode, so a residual θ + f would add nothing: the model is built without it.
    assert model_config(TrainConfig(prediction="x0", condition_on_theta=True)).residual
    assert not model_config(TrainConfig(prediction="x0", condition_on_theta=False)).residual
    gen, _ = build_generator(
        TrainConfig(model="tiny", condition_on_theta=False),
        SimpleNamespace(layout=LAYOUT),  # type: ignore[arg-type]
        _normalizer(),
    )
    assert gen.condition_on_theta is False


@pytest.mark.parametrize("mode", [True, False])
def test_model_file_keeps_the_mode_and_old_files_load_conditioned(mode: bool, tmp_path: Path) -> None:
    gen = _generator(mode, residual=False)
    save_model(tmp_path, gen.model, gen.model.config, gen, {}, {"prediction": "v"}, {})
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["condition_on_theta"] is mode
    loaded, _ = load_generator(tmp_path)
    assert loaded.condition_on_theta is mode
    theta, m = _inits(10)
    prompt = torch.full((5,), 250.0)
    kw = dict(steps=4, generator=torch.Generator().manual_seed(0))
    a = gen.sample(theta, m, prompt, **kw)  # type: ignore[arg-type]
    kw["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(loaded.sample(theta, m, prompt, **kw), a)  # type: ignore[arg-type]

    del info["condition_on_theta"]  # a model file written before the flag existed
    (tmp_path / "model.json").write_text(json.dumps(info))
    assert load_generator(tmp_path)[0].condition_on_theta is True


def test_resume_of_a_run_saved_before_the_flag(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    ema = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    old = to_dict(TrainConfig())
    del old["condition_on_theta"]
    save_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), 3, old)
    assert load_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), to_dict(TrainConfig())) == 3
    with pytest.raises(ConfigError, match="condition_on_theta"):
        load_train_state(
            tmp_path / "state", model, ema, opt, torch.Generator(), to_dict(TrainConfig(condition_on_theta=False))
        )


def test_resume_refuses_weights_of_another_resolved_architecture(tmp_path: Path) -> None:
    """Same train config, other registry default: the saved weights fit by shape but not by meaning."""
    old = build_model("neuron", LAYOUT, metric_frequency=1000.0)
    new = build_model("neuron", LAYOUT, metric_frequency=30.0)
    config, state_dir = to_dict(TrainConfig()), tmp_path / "model" / "state"
    ema = copy.deepcopy(old)
    save_train_state(state_dir, old, ema, torch.optim.AdamW(old.parameters()), torch.Generator(), 3, config)
    args = (torch.optim.AdamW(new.parameters()), torch.Generator(), config)
    with pytest.raises(ConfigError, match=r"metric_frequency 1000.0 -> 30.0.*--restart"):
        load_train_state(state_dir, new, copy.deepcopy(new), *args)
    assert load_train_state(state_dir, old, ema, torch.optim.AdamW(old.parameters()), torch.Generator(), config) == 3
    pinned = config | {"model_overrides": {"metric_frequency": 1000}}  # a preset pinning the old value resumes
    assert load_train_state(state_dir, old, ema, torch.optim.AdamW(old.parameters()), torch.Generator(), pinned) == 3

    # a state saved before the architecture was recorded: the model file beside it tells
    state = json.loads((state_dir / "state.json").read_text())
    del state["model"]
    (state_dir / "state.json").write_text(json.dumps(state))
    (tmp_path / "model" / "model.json").write_text(json.dumps({"model": old.config.to_dict()}))
    with pytest.raises(ConfigError, match="metric_frequency"):
        load_train_state(state_dir, new, copy.deepcopy(new), *args)


def test_training_segments_record_each_resume_with_other_settings(tmp_path: Path) -> None:
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())

    def saved_at(step: int, segments: list | None, steps: int = 10, processes: int = 1) -> Path:
        data = {"processes": processes} | ({"segments": segments} if segments is not None else {})
        config = to_dict(TrainConfig(steps=steps, batch=8))
        save_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), step, config, data)
        return tmp_path / "state"

    assert training_segments(tmp_path / "none", 0, 10, 1, 8) == [
        {"from_step": 0, "steps": 10, "processes": 1, "batch": 8}
    ]
    first = [{"from_step": 0, "steps": 10, "processes": 1, "batch": 8}]
    assert training_segments(saved_at(5, first), 5, 10, 1, 8) == first  # the same settings go on
    longer = training_segments(saved_at(5, first), 5, 20, 1, 8)  # a warm restart at step 5
    assert longer == [*first, {"from_step": 5, "steps": 20, "processes": 1, "batch": 8}]
    # changed again before any step was trained under the second settings: that empty stretch goes
    assert training_segments(saved_at(5, longer), 5, 30, 2, 4) == [
        *first,
        {"from_step": 5, "steps": 30, "processes": 2, "batch": 4},
    ]
    # ... and changed back before a step was trained under other settings: one stretch again
    assert training_segments(saved_at(5, longer), 5, 10, 1, 8) == first
    # a damaged list: the state's own settings are the first stretch
    assert training_segments(saved_at(5, ["x"]), 5, 10, 1, 8) == first
    # a state saved before segments (and processes) were recorded, resumed as it was: one stretch
    state = json.loads((saved_at(5, None) / "state.json").read_text())
    state["data"] = {}
    (tmp_path / "state" / "state.json").write_text(json.dumps(state))
    assert training_segments(tmp_path / "state", 5, 10, 1, 8) == first
    # a state saved before segments were recorded: its config and process count are the first stretch
    assert training_segments(saved_at(5, None, steps=10, processes=2), 5, 10, 1, 16) == [
        {"from_step": 0, "steps": 10, "processes": 2, "batch": 8},
        {"from_step": 5, "steps": 10, "processes": 1, "batch": 16},
    ]


@pytest.mark.parametrize("input_columns", [False, True])
def test_normalizer_scales_input_columns_on_request(input_columns):
    g = torch.Generator().manual_seed(0)
    params = torch.randn(500, D, generator=g)
    scale = torch.tensor([20.0, 1.0, 0.05])  # three input features of very different scales
    params[:, :18] = (params[:, :18].reshape(-1, 6, 3) * scale).reshape(-1, 18)
    norm = Normalizer.fit(params, torch.rand(500), LAYOUT, params[:100] * 0.1, input_columns=input_columns)
    z = norm.params(params)
    column_std = z[:, :18].reshape(-1, 6, 3).std(dim=(0, 1))
    if input_columns:  # every feature at unit scale; the other tensors keep one std each
        torch.testing.assert_close(column_std, torch.ones(3, dtype=z.dtype), atol=0.02, rtol=0)
    else:
        assert column_std[0] / column_std[2] > 100
    assert torch.unique(norm.std[18:24]).numel() == 1  # net.0.bias: per tensor either way
    torch.testing.assert_close(norm.unparams(z), params, atol=1e-4, rtol=1e-5)


def test_normalizer_of_a_tensor_that_never_changes_stays_finite():
    params = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    params[:, -2:] = 0.5  # net.1.bias the same in every checkpoint (a frozen or untrained tensor)
    norm = Normalizer.fit(params, torch.full((50,), 3.0), LAYOUT, params[:10] - params[10:20])
    z = norm.params(params)
    assert torch.isfinite(z).all() and torch.isfinite(norm.delta(params[:10] - params[10:20])).all()
    torch.testing.assert_close(norm.unparams(z), params)
    assert (norm.metric_low, norm.metric_high) == (3.0, 4.0)  # one metric value: a range of 1 above it


def test_every_training_step_process_and_stream_draws_from_its_own_seed():
    seeds = {
        (step, rank, stream): step_seed(7, rank, step, stream)
        for step in range(50)
        for rank in range(2)
        for stream in range(4)
    }
    assert len(set(seeds.values())) == len(seeds)  # another batch, noise and permutation every step
    assert step_seed(7, 1, 30, 2) == seeds[30, 1, 2]  # a resumed run draws what it would have drawn
    assert step_seed(8, 1, 30, 2) != seeds[30, 1, 2] and 0 <= seeds[30, 1, 2] < 2**63


def test_averaged_samples_are_the_mean_of_independent_draws_from_each_row() -> None:
    gen = _generator(True)
    theta, m = _inits(10, b=3)
    prompt = torch.tensor([50.0, 250.0, 450.0])
    draws = gen.sample(
        theta.repeat_interleave(16, 0),
        m.repeat_interleave(16, 0),
        prompt.repeat_interleave(16, 0),
        steps=5,
        generator=torch.Generator().manual_seed(4),
    ).reshape(3, 16, D)  # row i's 16 draws
    mean = gen.sample(theta, m, prompt, steps=5, generator=torch.Generator().manual_seed(4), average=16)
    torch.testing.assert_close(mean, draws.mean(1))
    # Less spread than single draws: two means of 16 differ less than two single draws do.
    other = gen.sample(theta, m, prompt, steps=5, generator=torch.Generator().manual_seed(5), average=16)
    assert (mean - other).norm() < 0.5 * (draws[:, 0] - draws[:, 1]).norm()
    with pytest.raises(ValueError, match="average=0"):
        gen.sample(theta, m, prompt, steps=5, average=0)


@pytest.mark.parametrize("average", [1, 4])
def test_large_batches_are_sampled_in_chunks_that_give_the_same_draws(average: int, monkeypatch) -> None:
    gen = _generator(True)
    theta, m = _inits(11, b=7)
    prompt = torch.linspace(50.0, 450.0, 7)
    whole = gen.sample(theta, m, prompt, steps=5, generator=torch.Generator().manual_seed(6), average=average)
    calls = []
    model_fn = gen._model_fn
    monkeypatch.setattr(gen, "_model_fn", lambda net: calls.append(1) or model_fn(net))
    monkeypatch.setattr(generator_module, "SAMPLE_CHUNK_VALUES", 3 * average * D)  # 3 rows per call
    chunked = gen.sample(theta, m, prompt, steps=5, generator=torch.Generator().manual_seed(6), average=average)
    assert len(calls) == 3  # rows 0-2, 3-5, 6
    torch.testing.assert_close(chunked, whole)


VARIANTS = [{}, {"kind": "mlp"}, {"tokens": "neuron", "theta_tokens": "separate"}, {"conditioning": "tokens"}]


@pytest.mark.parametrize("variant", VARIANTS, ids=["layer", "mlp", "neuron-separate", "cond-tokens"])
@pytest.mark.parametrize(("average", "guidance"), [(1, 1.0), (4, 1.5)])
def test_cpu_sampling_in_activation_sized_calls_gives_the_same_draws(variant, average, guidance, monkeypatch) -> None:
    """DDIM on the CPU runs in calls of about SAMPLE_CHUNK_ACTIVATIONS_CPU activation values (one large call
    page-faults on every fresh allocation); the draws are one call's up to float rounding. DDPM, whose noise
    is drawn step by step, is not split so."""
    gen = _generator(True, **variant)
    theta, m = _inits(13, b=7)
    prompt = torch.linspace(50.0, 450.0, 7)
    draw = lambda method: gen.sample(  # noqa: E731
        theta,
        m,
        prompt,
        steps=5,
        method=method,
        guidance=guidance,
        generator=torch.Generator().manual_seed(7),
        average=average,
    )
    whole, whole_ddpm = draw("ddim"), draw("ddpm")
    per_draw = generator_module.activations_per_draw(gen.model, D, guidance)
    assert per_draw >= D and generator_module.activations_per_draw(torch.nn.Linear(2, 2), D) == D
    calls = []
    model_fn = gen._model_fn
    monkeypatch.setattr(gen, "_model_fn", lambda net: calls.append(1) or model_fn(net))
    monkeypatch.setattr(generator_module, "SAMPLE_CHUNK_ACTIVATIONS_CPU", 2 * average * per_draw)  # 2 rows a call
    torch.testing.assert_close(draw("ddim"), whole)
    assert len(calls) == 4  # rows 0-1, 2-3, 4-5, 6
    calls.clear()
    torch.testing.assert_close(draw("ddpm"), whole_ddpm)
    assert len(calls) == 1


def test_the_activation_count_follows_the_sequence_each_block_sees() -> None:
    """Separate θ tokens double the sequence, conditioning tokens add four, guidance doubles the batch."""
    fused, separate = (
        _generator(True, tokens="neuron").model,
        _generator(True, tokens="neuron", theta_tokens="separate").model,
    )
    tokens = _generator(True, tokens="neuron", conditioning="tokens").model
    n = fused.tokenizer.num_tokens
    assert (fused.sequence_length, separate.sequence_length, tokens.sequence_length) == (n, 2 * n, n + 4)
    count = generator_module.activations_per_draw
    assert count(separate, D) == 2 * count(fused, D) and count(fused, D, guidance=1.5) == 2 * count(fused, D)
    assert count(fused, D) == max(D, n * fused.config.width * max(3, int(fused.config.mlp_ratio)))


def test_the_raw_sampler_takes_numbers_for_the_metrics_and_refuses_what_it_cannot_use() -> None:
    gen = _generator(True)
    theta, m = _inits(12, b=2)
    rows = gen.sample(theta, m, torch.tensor([300.0, 300.0]), steps=3, generator=torch.Generator().manual_seed(1))
    numbers = gen.sample(theta.double(), m.tolist(), 300.0, steps=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(numbers, rows)  # a number stands for every row; float64 θ is read as float32
    cases = [
        ((theta[0], m, 300.0), rf"theta must be \(B, {D}\).*got \({D},\)"),
        ((theta[:, :-1], m, 300.0), rf"theta must be \(B, {D}\)"),
        ((theta, m[:1].expand(3), 300.0), r"metric must be one number or \(B,\) = \(2,\), got \(3,\)"),
        ((theta, m, float("nan")), "prompt holds NaN"),
        ((theta.clone().fill_(float("inf")), m, 300.0), "theta holds NaN or infinite"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            gen.sample(*args, steps=3)


@pytest.mark.parametrize("input_columns", [False, True])
def test_a_normalizer_fitted_on_chosen_rows_of_a_column_a_few_at_a_time_is_the_one_fitted_on_them_whole(
    input_columns, monkeypatch
):
    """Training fits on millions of memory-mapped rows without gathering them: the same numbers, bit for bit."""
    import rl_gpt.dataset.pairs as pairs

    g = torch.Generator().manual_seed(1)
    column = torch.randn(700, D, generator=g) * torch.linspace(0.01, 30, D)
    rows = torch.randperm(700, generator=g)[:523].sort().values
    metric, delta = torch.rand(523, generator=g), torch.randn(64, D, generator=g) * 0.1
    whole = Normalizer.fit(column[rows], metric, LAYOUT, delta, input_columns=input_columns)
    monkeypatch.setattr(pairs, "_CHUNK_NUMBERS", 37 * D)  # 15 chunks, the last one short
    chunked = Normalizer.fit(column, metric, LAYOUT, delta, input_columns=input_columns, rows=rows)
    for name in ("mean", "std", "delta_std"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    # the reference: torch's own mean and std of each tensor (or input feature), in float64
    weight = column[rows][:, :18].double().reshape(-1, 6, 3)
    expected = weight.std(dim=(0, 1)).float().repeat(6) if input_columns else weight.std().float().expand(18)
    assert torch.equal(chunked.std[:18], expected)  # bit for bit: trained models do not change with the chunking
    assert torch.equal(chunked.mean[18:24], column[rows][:, 18:24].double().mean().float().expand(6))


def test_a_save_that_fails_leaves_no_temporary_state_on_the_full_disk(tmp_path: Path, monkeypatch) -> None:
    """state.safetensors written, then state.json meets a full disk: the half-built state (megabytes on the disk
    that just filled) goes, the last whole state stays."""
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt, config = torch.optim.AdamW(model.parameters()), to_dict(TrainConfig())
    save_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), 3, config)

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("rl_gpt.train.checkpoint.atomic_write_json", full)
    with pytest.raises(OSError, match="No space"):
        save_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), 4, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    monkeypatch.undo()
    assert load_train_state(tmp_path / "state", model, ema, opt, torch.Generator(), config) == 3
