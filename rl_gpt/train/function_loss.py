"""A function-space loss for the generator: compare what networks *do*, not only their weights.

The diffusion loss is an MSE in (normalised) weight space, which treats every direction alike. A
network's behaviour is not: on Pendulum-v1 normalised noise of 0.05 per weight leaves a policy's
return at -198, 0.1 takes it to -427 and 0.2 to -720 (docs/results.md), so a generator whose
weights are 1 % off in the wrong directions fails the task. ``train.function_loss`` adds, for each
pair, the mean squared difference between the outputs of the denoised estimate x̂0 and of the real
θ' on fixed probe inputs: states visited by the dataset's policies, or training images. It is
weighted by ᾱ(t), the share of signal in x_t, so it acts where x̂0 is meant to be precise (low
noise) and not on the blurry high-noise estimates.

Outputs compared: action probabilities (categorical), the squashed deterministic action (SAC),
the clipped mean action in units of half the action range (PPO Gaussian), class probabilities
(classifiers). All span at most 2, so the loss needs no further scale.

``train.function_compare=kl`` compares probabilities (classifiers, discrete actions) by KL(θ' ‖ x̂0)
instead: the squared difference of probabilities hardly sees a confident output's misses (0.99 against
0.9 is 0.008), which the test loss weighs fully (log 0.99/0.9 = 0.095). On digits it took one step
from an unseen init from test loss 0.306 to 0.288 / 0.264 (training seeds 0 / 1; docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.dataset_metric import obs_stats
from rl_gpt.evaluate.policy import PolicySpec
from rl_gpt.layout import Layout

__all__ = ["FunctionProbe", "function_probe"]

_ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda h: h,
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}


_PROBE_POLICIES = 32  # checkpoints whose rollouts supply the probe states


def _chain_heads(layout: Layout, state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Differentiable outputs (B, N, out) of the layout's layer chain on shared inputs x (N, in)."""
    values: dict[str | None, torch.Tensor] = {None: x.unsqueeze(0)}  # group -> (B or 1, N, units)
    heads = []
    for layer in layout.layers:
        w = state[f"{layer.prefix}.weight"]  # (B, out, in)
        h = torch.matmul(values[layer.in_group], w.transpose(1, 2))  # (B, N, out)
        bias = state.get(f"{layer.prefix}.bias")
        if bias is not None:
            h = h + bias.unsqueeze(1)
        h = _ACTIVATIONS[layer.activation](h)
        if layer.out_group is None:
            heads.append(h)
        else:
            values[layer.out_group] = h
    return heads


class FunctionProbe:
    """Behaviour of B flat networks on N fixed inputs: ``probe(params (B, D)) -> (B, N, K)``, differentiable."""

    def __init__(
        self,
        layout: Layout,
        inputs: torch.Tensor,
        kind: str,
        spec: PolicySpec | None = None,
        network: str | None = None,
        compare: Literal["mse", "kl"] = "mse",
    ) -> None:
        if kind not in ("policy", "classifier"):
            raise ValueError(f"kind must be 'policy' or 'classifier', got {kind!r}")
        if kind == "policy" and spec is None:
            raise ValueError("a policy probe needs the task's PolicySpec")
        if kind == "classifier" and network is None:
            raise ValueError("a classifier probe needs the network's name")
        if compare not in ("mse", "kl"):
            raise ValueError(f"compare must be 'mse' or 'kl', got {compare!r}")
        if compare == "kl" and kind == "policy" and spec.head != "categorical":
            raise ValueError(
                f"train.function_compare=kl compares probabilities, and a {spec.head} policy outputs actions; "
                "use train.function_compare=mse for continuous actions"
            )
        self.layout, self.inputs, self.kind, self.spec, self.network = layout, inputs, kind, spec, network
        self.compare = compare

    def to(self, device: torch.device | str) -> FunctionProbe:
        self.inputs = self.inputs.to(device)
        return self

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        if self.kind == "classifier" or self.spec.head == "categorical":
            return self.log_probabilities(params).exp()
        x = self.inputs.to(params.dtype)
        heads = _chain_heads(self.layout, self.layout.unflatten(params), x)
        spec = self.spec
        if spec.head == "squashed_gaussian":
            return torch.tanh(heads[0])  # SAC's deterministic action, before rescaling to the bounds
        low = torch.tensor(spec.action_low, dtype=x.dtype, device=x.device)
        high = torch.tensor(spec.action_high, dtype=x.dtype, device=x.device)
        width = torch.where(torch.isfinite(high - low), high - low, torch.full_like(high, 2.0))
        # PPO's action: the mean clipped to the bounds, in units of half the range like SAC's tanh
        # (only differences are compared, so the offset does not matter).
        return 2 * torch.maximum(torch.minimum(heads[0], high), low) / width

    def log_probabilities(self, params: torch.Tensor) -> torch.Tensor:
        """(B, N, K) log class or action probabilities (classifiers, categorical policies)."""
        x = self.inputs.to(params.dtype)
        if self.kind == "classifier":
            from rl_gpt.supervised.evaluate import classifier_logits

            logits = classifier_logits(params, self.layout, self.network, x)
        else:
            logits = _chain_heads(self.layout, self.layout.unflatten(params), x)[0]
        return logits - torch.logsumexp(logits, -1, keepdim=True)  # log-softmax; see class_probabilities

    def loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) output difference between networks ``params`` and ``target`` (B, D): the mean squared
        difference, or with ``compare="kl"`` KL(target ‖ params) averaged over the probe inputs.

        Computed in float32 even under autocast: the differences that matter are small.
        """
        with torch.autocast(params.device.type, enabled=False):
            if self.compare == "kl":
                with torch.no_grad():
                    want = self.log_probabilities(target.float())
                got = self.log_probabilities(params.float())
                return (want.exp() * (want - got)).sum(-1).mean(1)
            with torch.no_grad():
                want = self(target.float())
            return (self(params.float()) - want).pow(2).flatten(1).mean(1)


def function_probe(
    ds: CheckpointDataset, runs: list[int], count: int = 256, seed: int = 0, compare: Literal["mse", "kl"] = "mse"
) -> FunctionProbe:
    """Probe inputs for ``ds``'s networks, drawn from what the training runs ``runs`` see.

    Policies: ``count`` states visited by checkpoints spread over the runs' training (each rolled
    out deterministically in the task's environment). Classifiers: ``count`` training images.
    ``compare``: how :meth:`FunctionProbe.loss` compares outputs ("mse" or "kl").
    """
    g = torch.Generator().manual_seed(seed)
    if ds.spec["task"].get("kind") == "supervised":
        from rl_gpt.supervised.data import load_dataset

        policy = ds.spec["policy"]
        x_train = load_dataset(policy["dataset"], ds.spec["task"].get("data_root"))[0]
        pick = torch.randperm(len(x_train), generator=g)[:count]
        return FunctionProbe(ds.layout, x_train[pick].float(), "classifier", network=policy["network"], compare=compare)
    from rl_gpt.evaluate.states import visited_observations

    spec = PolicySpec.from_dict(ds.spec["policy"])
    if compare == "kl" and spec.head != "categorical":  # before the rollouts, and as a config error: one line
        from rl_gpt.config import ConfigError

        raise ConfigError(
            f"train.function_compare=kl compares probabilities, and this task's {spec.head} policies output "
            "actions; use train.function_compare=mse"
        )
    valid = ds.valid_mask()
    slices = ds.run_slices()
    rows = torch.cat([torch.arange(slices[r].start, slices[r].stop) for r in runs])
    rows = rows[valid[rows]]
    if not len(rows):
        raise ValueError("no valid checkpoint in the training runs to take probe states from; check the dataset")
    policies = rows[torch.randperm(len(rows), generator=g)[:_PROBE_POLICIES]]  # early, middle and late alike
    mean, var = obs_stats(ds, runs)
    # ~4 states per probe from each policy's first steps: on Pendulum the swing-up. States from whole
    # 200-step episodes (mostly balancing) did much worse there: sweep R2 0.284 against 0.629.
    steps = max(1, -(-count // len(policies)) * 4)
    obs = visited_observations(
        ds.layout, spec, ds.spec["env_id"], ds.data["params"][policies].float(), steps, seed, mean, var
    )
    obs = obs[torch.randperm(len(obs), generator=g)[:count]]
    if spec.normalize_obs:  # the probe feeds the layers directly: normalise as the policies read them
        obs = ((obs - mean) / (var + spec.norm_epsilon).sqrt()).clamp(-spec.clip_obs, spec.clip_obs)
    return FunctionProbe(ds.layout, obs, "policy", spec=spec, compare=compare)
