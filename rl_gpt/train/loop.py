"""``rl-gpt train``: the generator's training loop, read top to bottom.

data (pair sampler, split by run, normaliser) → model → optimiser → loop (sample pairs, augment,
diffusion loss, step, EMA, log, probe, checkpoint) → model file. Runs single-process or under
``torchrun --nproc_per_node=N`` (DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from rl_gpt.config import ConfigError, ExperimentConfig, TrainConfig, dump_yaml, to_dict
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.dataset.pairs import Normalizer, PairSampler, split_runs
from rl_gpt.devices import device_name, machine_record, resolve_device
from rl_gpt.diffusion import GaussianDiffusion
from rl_gpt.interrupt import interrupts_deferred, said_what_was_kept
from rl_gpt.io import atomic_write_text, ensure_writable_dir, exclusive_folder
from rl_gpt.model import MODELS, ModelConfig, build_model
from rl_gpt.progress import progress_bar
from rl_gpt.supervised.data_root import absolute_data_root, use_data_root
from rl_gpt.train.checkpoint import (
    discard_train_state,
    load_train_state,
    read_data_state,
    read_history,
    read_saved_batch,
    save_train_state,
    saved_state,
    training_segments,
)
from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.modelfile import save_model
from rl_gpt.train.plot import load_plotting, plot_training
from rl_gpt.train.preflight import check_tasks, finished, warn_if_metric_is_constant
from rl_gpt.train.probe import prompt_range, quick_alignment
from rl_gpt.wandb_run import check_login, finish_open_runs, log_output

__all__ = ["build_generator", "diffusion_args", "fit_normalizer", "lr_at", "make_optimizer", "train", "update_ema"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _warn_if_schedule_restarts(state_dir: Path, tc: TrainConfig, step: int, main_proc: bool) -> None:
    """A resume with another ``train.steps`` recomputes the cosine over the new length: the learning rate
    jumps (a warm restart), and the model is neither the shorter run continued nor the longer run."""
    saved = json.loads((state_dir / "state.json").read_text(encoding="utf-8")).get("config", {}).get("steps")
    if not main_proc or not isinstance(saved, int) or saved == tc.steps or step <= tc.warmup:
        return
    before, after = lr_at(step, dataclasses.replace(tc, steps=saved)), lr_at(step, tc)
    if abs(after - before) <= 0.05 * before:  # resumed early: the longer run's schedule, near enough
        return
    warnings.warn(
        f"train.steps {saved} -> {tc.steps}: the learning rate's cosine is recomputed over {tc.steps} steps, so at "
        f"step {step} it goes from {before:.3g} to {after:.3g} (a warm restart, which the training plot shows); "
        f"--restart trains {tc.steps} steps from the start instead",
        stacklevel=3,
    )


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int | None = None) -> None:
    """EMA of the weights; with ``step``, the decay warms up as (1 + step) / (10 + step).

    Without the warm-up an EMA of 0.999 still holds 0.999^2000 = 13 % of the untrained (zero-output)
    weights after 2,000 steps, which visibly damped short CPU runs.
    """
    if step is not None:
        decay = min(decay, (1 + step) / (10 + step))
    # One foreach call instead of a lerp_ per tensor: the same numbers, less per-call overhead (session 42).
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The generator's AdamW. ``foreach=True`` on every device (the CPU's default is one tensor at a time):
    the same numbers, less per-call overhead; the fused kernel is faster still but rounds differently."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def diffusion_args(cfg: TrainConfig) -> dict[str, Any]:
    return {"schedule": cfg.schedule, "steps": 1000, "prediction": cfg.prediction, "loss_weight": cfg.loss_weight}


def model_config(cfg: TrainConfig) -> ModelConfig:
    if cfg.model not in MODELS:
        raise ConfigError(f"train.model: unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    # A residual (θ + f) output is the identity only when the network predicts θ' itself (and sees θ).
    residual = cfg.prediction == "x0" and cfg.target == "theta" and cfg.condition_on_theta
    base = MODELS[cfg.model].to_dict() | {"residual": residual} | cfg.model_overrides
    try:
        return ModelConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        colon = any(":" in k for k in cfg.model_overrides)
        example = "'train.model_overrides={width: 128}'"
        hint = f" (YAML needs a space after each colon; quote it for the shell: {example})" if colon else ""
        raise ConfigError(f"train.model_overrides: {exc}{hint}") from None


def fit_normalizer(
    ds: CheckpointDataset, sampler: PairSampler, pairs: int = 4096, input_columns: bool = False
) -> Normalizer:
    """Fit on the training runs only: parameters of their rows, updates of sampled pairs."""
    rows = sampler.rows
    batch = sampler.sample(min(pairs, max(256, len(rows))))
    delta = batch["theta_next"] - batch["theta"]
    metric = ds.data["metric"][rows].float()
    return Normalizer.fit(ds.data["params"], metric, ds.layout, delta, input_columns=input_columns, rows=rows)


def build_generator(
    cfg: TrainConfig, ds: CheckpointDataset, normalizer: Normalizer
) -> tuple[ParameterGenerator, ModelConfig]:
    if not cfg.condition_on_theta and cfg.target != "theta":
        raise ConfigError(
            "train.condition_on_theta=false models θ' without θ, so train.target=delta has nothing to add "
            "the update to; set train.target=theta"
        )
    mc = model_config(cfg)
    model = build_model(mc, ds.layout)
    diffusion = GaussianDiffusion(**diffusion_args(cfg))
    gen = ParameterGenerator(
        model,
        diffusion,
        normalizer,
        ds.layout,
        cfg.target,
        cfg.prompt_dropout,
        cfg.condition_on_theta,
        cfg.metric_jitter,
        cfg.jitter_prompt,
    )
    return gen, mc


def mean_over_ranks(terms: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Scalar loss terms as the whole step's batch gives them: under DDP each rank holds the loss of its
    own share, and rank 0's alone (what it logs) is that of 1/world of the pairs, a noisier curve."""
    values = torch.stack([t.detach().float() for t in terms.values()])
    if world > 1 and dist.is_initialized():  # every rank logs at the same steps, so all of them come here
        dist.all_reduce(values)
        values /= world
    return dict(zip(terms, values.tolist(), strict=True))


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """The seed of one random stream of one training step, from the run's seed, the process and the step."""
    entropy = [seed % 2**63, rank, step, stream]  # SeedSequence takes no negative numbers; torch's seeds may be
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1  # numpy 1.x: no uint64 >> int


def train(cfg: ExperimentConfig, progress: bool = True, resume: bool = True) -> Path:
    """Train the generator on ``cfg.dataset_dir``; writes ``cfg.model_dir``. Returns the model directory.

    Training only: ``rl-gpt train`` then calibrates prompts where ``train.calibrate`` is set, with
    :func:`rl_gpt.sweep.calibrate.ensure_calibrated` (the sweep room measures it; this room may not call it).

    Under ``torchrun`` it joins (or opens) the process group; one it opened is closed again however
    training ends, so rank 0 may go on alone (train.calibrate) and a refused run leaves none open.
    """
    resolve_device(cfg.train.device, "train.device")  # before any work: a missing GPU is a one-line error
    if cfg.sweep.device is not None:  # saved in config.yaml for the calibration and `sweep --model`, maybe elsewhere
        device_name(cfg.sweep.device, "sweep.device")
    rank, world = _dist_info()
    if rank == 0:  # the one process that logs: missing W&B credentials (wandb.mode=online) fail now too
        check_login(cfg)
    own_group = world > 1 and not dist.is_initialized()
    if own_group and not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
        raise ConfigError(
            f"WORLD_SIZE={world} is set but MASTER_ADDR / MASTER_PORT are not: start distributed training with "
            "`torchrun --nproc_per_node=N -m rl_gpt.cli train ...`, or unset WORLD_SIZE to train in one process"
        )
    if own_group:
        dist.init_process_group("nccl" if cfg.train.device.startswith("cuda") else "gloo")
    try:
        with contextlib.ExitStack() as held:
            return _train(cfg, progress, resume, held)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg: ExperimentConfig, progress: bool, resume: bool, held: contextlib.ExitStack) -> Path:
    """The training; ``held`` keeps the model folder's lock (rank 0's) until it returns."""
    tc = cfg.train
    rank, world = _dist_info()
    device = torch.device(
        tc.device if not tc.device.startswith("cuda") or world == 1 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    )
    main_proc = rank == 0
    model_config(tc)  # a bad train.model or model_overrides is refused before any work
    if cfg.task.data_root:  # config.yaml is read from other folders: written absolute, as collect writes it
        cfg = dataclasses.replace(
            cfg, task=dataclasses.replace(cfg.task, data_root=absolute_data_root(cfg.task.data_root))
        )
    ds = CheckpointDataset(cfg.dataset_dir)
    out = Path(cfg.model_dir)  # created once the data is known to train on: a refused run leaves nothing behind
    check_tasks(cfg, ds, out, resume)
    # A supervised dataset's data files, found now rather than at the alignment after training (the
    # function loss reads them on every rank): this command's task.data_root, else where they were collected.
    use_data_root(ds.spec, cfg.task.data_root)
    torch.manual_seed(tc.seed + rank)

    # ---------------------------------------------------------------- data
    state_dir = out / "train_state"
    resume_from = saved_state(state_dir)  # where the last save is, even if a crash cut it short
    saved = read_data_state(resume_from) if resume else None
    if saved is not None:  # a resumed run keeps its split and normaliser even if the dataset has grown since
        train_runs, test_runs = saved["train_runs"], saved["test_runs"]
        unused = len(set(ds.run_slices()) - set(train_runs) - set(test_runs))
        if unused and main_proc:
            warnings.warn(
                f"{cfg.dataset_dir} has {unused} run(s) more than {out} was started on; a resumed run keeps its "
                f"split ({len(train_runs)} training, {len(test_runs)} held-out runs), so they are not used: "
                "train with --restart to use them",
                stacklevel=2,
            )
        normalizer = Normalizer.from_dict(saved["normalizer"])
        before = saved.get("processes", world)  # runs saved before this was recorded: not known
        was = before * read_saved_batch(resume_from, tc.batch)
        if before != world and was != world * tc.batch and main_proc:
            keep = f"; pass train.batch={was // world} to keep {was}" if was % world == 0 else ""
            warnings.warn(
                f"{out} was trained on {before} process(es) and goes on with {world}: train.batch counts pairs "
                f"per process, so each step now takes {world * tc.batch} pairs instead of {was}{keep}",
                stacklevel=2,
            )
    else:
        train_runs, test_runs = split_runs(sorted(ds.run_slices()), tc.test_fraction, tc.split_seed)
        if not test_runs and main_proc:
            warnings.warn(
                f"no run is held out ({len(train_runs)} run(s), train.test_fraction={tc.test_fraction}): "
                "alignment.json will only measure the training runs; collect more runs to measure generalisation",
                stacklevel=2,
            )
        sampler0 = PairSampler(ds, train_runs, tc.init_fraction, tc.bins, seed=tc.seed)
        normalizer = fit_normalizer(ds, sampler0, input_columns=tc.normalize_input_columns)
    sampler = PairSampler(ds, train_runs, tc.init_fraction, tc.bins, seed=tc.seed * 1000 + rank)
    if main_proc:
        warn_if_metric_is_constant(ds, sampler.rows)

    # ---------------------------------------------------------------- model, optimiser
    # The prompts the probe and calibration will use: a range for another metric fails now, not
    # after training.
    prompt_range(ds.spec, normalizer.metric_low, normalizer.metric_high, cfg.task.metric_range)
    gen, mc = build_generator(tc, ds, normalizer)
    if main_proc:  # once the model is built: a refused architecture leaves no folder either
        held.enter_context(exclusive_folder(ensure_writable_dir(out), "train"))
    gen.to(device)
    model = gen.model
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = make_optimizer(model, tc)
    step = 0
    if resume and (resume_from / "state.json").exists():
        step = load_train_state(resume_from, model, ema, opt, sampler.generator, expect=to_dict(tc), world=world)
        if step > tc.steps:
            raise ConfigError(
                f"{out} is already trained to step {step}, past train.steps={tc.steps}; train again with --restart "
                "to start a new run of that length, or use another out= directory"
            )
        if step == tc.steps and finished(out, tc, step):
            if main_proc and progress:
                print(f"{out} is already trained to train.steps={step}; nothing to do (--restart trains it again)")
            return out
        if main_proc and progress:
            print(f"resuming from step {step}")
        _warn_if_schedule_restarts(resume_from, tc, step, main_proc)
    history = read_history(resume_from, step) if step else []
    segments = training_segments(resume_from, step, tc.steps, world, tc.batch)  # step is 0 unless resumed
    if tc.warmup > tc.steps and main_proc:  # (after "nothing to do": a finished run is not warned again)
        warnings.warn(
            f"train.steps={tc.steps} ends within the {tc.warmup}-step warm-up, so the learning rate never reaches "
            f"train.lr={tc.lr:g}; lower train.warmup for a run this short",
            stacklevel=2,
        )
    probe = None
    if tc.function_loss > 0:  # the same inputs on every rank: drawn from the split, not the rank
        from rl_gpt.train.function_loss import function_probe

        probe = function_probe(ds, train_runs, tc.function_probes, seed=tc.seed, compare=tc.function_compare)
        probe = probe.to(device)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    g = torch.Generator(device=device)  # diffusion steps, noise, prompt dropout and metric jitter
    perm_gen = torch.Generator()  # hidden-unit permutations
    # what draws without a generator of its own (dropout in the model) uses: torch's defaults
    global_rngs = [torch.default_generator]
    if device.type == "cuda":
        global_rngs.append(torch.cuda.default_generators[device.index or 0])

    run = _wandb_init(cfg, world, resume=step > 0) if main_proc else None  # a resumed run logs to the run it began
    if main_proc:
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    dataset = Path(cfg.dataset_dir).resolve()
    meta = {
        "train_runs": train_runs,
        "test_runs": test_runs,
        "dataset": str(dataset),
        "dataset_relative": os.path.relpath(dataset, out.resolve()),  # found again if the run folder moves
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (tc.amp and device.type == "cuda") else None
    # the last stretch's machine (a resumed run may have begun on another: its weights then differ in the last bits)
    machine = machine_record(device) | {"processes": world}

    if main_proc:  # loaded now, not at the first checkpoint: a SIGTERM in the middle of that import broke the save
        load_plotting()

    def checkpoint(plot: bool = True) -> None:
        if main_proc:
            data_state = {
                "train_runs": train_runs,
                "test_runs": test_runs,
                "normalizer": normalizer.to_dict(),
                "processes": world,
                "segments": segments,
            }
            save_train_state(state_dir, model, ema, opt, sampler.generator, step, to_dict(tc), data_state, history)
            saved = meta | {"step": step, "segments": segments, "config": to_dict(cfg), "machine": machine}
            save_model(out, ema, mc, gen, ds.spec, diffusion_args(tc), saved)
            if history and plot:  # a figure is not worth failing a save for: plot_training only warns
                pairs = f"{tc.batch * world} pairs per step"
                plot_training(history, out / "training.png", f"{cfg.task.name}: {pairs}, train.lr={tc.lr:g}")

    # ---------------------------------------------------------------- loop
    if main_proc and not resume:  # --restart replaces the old run now, not at its first checkpoint, and
        discard_train_state(state_dir)  # only once the new one is ready to step (a failed start keeps it)
    bar = progress_bar(
        total=tc.steps, initial=step, desc="train", disable=not (progress and main_proc), dynamic_ncols=True
    )
    last_probe = time.time()
    # Throughput counts training steps only: probes and checkpoints (seconds each) would make it wander.
    t0, seen, not_training = time.time(), 0, 0.0
    try:
        while step < tc.steps:
            # Every random stream starts each step from (seed, rank, step) alone: a resumed run draws what
            # the uninterrupted one would have, on any number of processes, with no RNG state to save.
            for stream, rng in enumerate((sampler.generator, g, perm_gen, *global_rngs)):
                rng.manual_seed(step_seed(tc.seed, rank, step, stream))
            batch = sampler.sample(tc.batch)
            if tc.augment:  # one permutation per pair, applied to θ and θ' alike
                perms = ds.layout.random_permutations(tc.batch, perm_gen)
                index = ds.layout.permutation_index(perms, tc.batch)
                batch["theta"] = batch["theta"].gather(1, index)
                batch["theta_next"] = batch["theta_next"].gather(1, index)
            batch = batch.to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            function = {
                "function_probe": None if probe is None else probe.loss,
                "function_weight": tc.function_loss,
                "function_signal_power": tc.function_signal_power,
            }
            if autocast is not None:
                with autocast:
                    loss, extras = gen.loss(batch, g, model=ddp_model, **function)
            else:
                loss, extras = gen.loss(batch, g, model=ddp_model, **function)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            # Checked after backward: DDP's all-reduce spreads one rank's NaN to every rank's
            # gradients, so all ranks stop here together instead of waiting on the one that stopped.
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise FloatingPointError(
                    f"loss {loss.item()}, gradient norm {float(grad_norm)} at step {step}; "
                    "lower train.lr or check the data (the last checkpoint is intact)"
                )
            # A Ctrl-C waits for the update to finish: weights, EMA and step counter then agree in what it saves.
            with interrupts_deferred():
                opt.step()
                update_ema(ema, model, tc.ema, step)
                step += 1
            seen += tc.batch * world
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                rate = seen / max(time.time() - t0 - not_training, 1e-9)
                terms = {"loss": loss, "mse_x0": extras["mse_x0"].mean()}
                terms |= {"function_loss": extras["function"].mean()} if "function" in extras else {}
                logged = mean_over_ranks(terms, world) | {"lr": lr_at(step, tc), "grad_norm": float(grad_norm)}
                bar.set_postfix(loss=f"{logged['loss']:.4f}", samples_s=f"{rate:.0f}", refresh=False)
                history.append({"step": step} | logged)  # saved with each checkpoint, drawn in training.png
                if run is not None:
                    run.log(logged | {"samples_per_s": rate}, step=step)
            # The probe only feeds W&B: without a run (disabled, or a DDP rank > 0) it would be wasted work.
            if run is not None and tc.probe_every_s > 0 and time.time() - last_probe > tc.probe_every_s:
                began = time.time()
                _probe(cfg, gen, ema, ds, train_runs, test_runs, run, step)
                last_probe = time.time()
                not_training += last_probe - began
            if step % tc.ckpt_every == 0:
                began = time.time()
                checkpoint()
                not_training += time.time() - began
    except KeyboardInterrupt as stop:
        # A second Ctrl-C (or SIGTERM) waits until the checkpoint is saved and said.
        notice = f"saving the checkpoint in {out} before stopping; this Ctrl-C (or SIGTERM) waits until then"
        with interrupts_deferred(notice if main_proc else None):
            checkpoint(plot=False)  # stopping: the state and the model only
            bar.close()
            finish_open_runs()  # W&B's closing lines before ours, not after
            if main_proc:
                print(f"\ninterrupted at step {step}; checkpoint saved in {out}. Run the same command to resume.")
            said_what_was_kept(stop)
        raise
    finally:  # also before an error (a full disk) is said: a bar closed later is drawn again under it
        bar.close()
    checkpoint()
    if main_proc and tc.final_probe:
        try:
            _final_alignment(cfg, gen, ema, ds, train_runs, test_runs, out, run, progress, step)
        except KeyboardInterrupt as stop:
            finish_open_runs()  # W&B's closing lines before ours, not after
            print(
                f"\ninterrupted while measuring prompt alignment: the model in {out} is saved and whole, without "
                "alignment.json; run the same command again to measure it",
                file=sys.stderr,
            )
            said_what_was_kept(stop)
            raise
    if run is not None:
        log_output(cfg, run, "model", out)
        run.finish()
    # No barrier for the other ranks: they would wait on rank 0's alignment and upload, which may outlast the
    # group's timeout (gloo's 30 minutes), and their failure would make torchrun stop rank 0 before it is done.
    return out


def _probe(
    cfg: ExperimentConfig,
    gen: ParameterGenerator,
    ema: torch.nn.Module,
    ds: CheckpointDataset,
    train_runs: list[int],
    test_runs: list[int],
    run: Any,
    step: int,
) -> None:
    """A quick prompt-alignment check on a few training and held-out inits, logged to W&B."""
    for name, runs in (("train", train_runs), ("test", test_runs)):
        if not runs:
            continue
        r2 = quick_alignment(
            gen,
            ema,
            ds,
            runs[:4],
            prompts=8,
            episodes=4,
            steps=cfg.train.sample_steps,
            guidance=cfg.train.guidance,
            stats_runs=train_runs,
            metric_range=cfg.task.metric_range,
        )
        if run is not None:
            run.log({f"probe/{name}_r2": r2}, step=step)


def _final_alignment(
    cfg: ExperimentConfig,
    gen: ParameterGenerator,
    ema: torch.nn.Module,
    ds: CheckpointDataset,
    train_runs: list[int],
    test_runs: list[int],
    out: Path,
    run: Any,
    progress: bool,
    step: int,
) -> None:
    """Prompt alignment from the inits of up to 16 training and 16 held-out runs -> ``alignment.json``.

    The file records the training ``step`` it measured, which tells a rerun that the run is finished."""
    from rl_gpt.io import atomic_write_json

    episodes = cfg.sweep.episodes  # as many as the sweep uses, so the two measure alike
    # One draw per prompt (no sweep.average): a quick check, not the sweep's protocol; said so in the file.
    result = {
        "step": step,
        "prompts": 10,
        "episodes": episodes,
        "guidance": cfg.train.guidance,
        "samples": 1,
        "average": 1,
    }
    if progress:  # MuJoCo tasks spend minutes here on the CPU simulator: say what the wait is for
        each = "on the test split" if cfg.task.kind == "supervised" else f"{episodes} episodes each"
        print(
            f"model saved in {out}; measuring prompt alignment from {len(train_runs[:16])} training and "
            f"{len(test_runs[:16])} held-out inits (10 prompts, {each}) for alignment.json",
            flush=True,
        )
    for name, runs in (("train_inits_r2", train_runs[:16]), ("heldout_inits_r2", test_runs[:16])):
        if runs:
            result[name] = quick_alignment(
                gen,
                ema,
                ds,
                runs,
                prompts=10,
                episodes=episodes,
                steps=cfg.train.sample_steps,
                guidance=cfg.train.guidance,
                stats_runs=train_runs,
                metric_range=cfg.task.metric_range,
            )
    atomic_write_json(out / "alignment.json", result)
    if run is not None:  # prefixed: "samples": 1 beside the loss curves would read as the sweep's setting
        run.summary.update({f"alignment/{k}": v for k, v in result.items()})
    if progress:
        held_out = f"{result['heldout_inits_r2']:.3f}" if "heldout_inits_r2" in result else "- (no run held out)"
        print(
            f"prompt alignment R2 from training runs' inits {result.get('train_inits_r2', float('nan')):.3f}, "
            f"held-out runs' inits {held_out}"
        )


def _wandb_init(cfg: ExperimentConfig, processes: int, resume: bool) -> Any:
    from rl_gpt.wandb_run import start_run, use_inputs, with_dataset_sections

    config = with_dataset_sections(to_dict(cfg), cfg.dataset_dir)  # the data's task and collect sections
    # train.batch counts pairs per process: under DDP the step's batch is this many times it
    config["processes"] = processes
    run = start_run(cfg, "train", cfg.model_dir, config, resume=resume)
    use_inputs(cfg, run, {"dataset": cfg.dataset_dir})
    return run
