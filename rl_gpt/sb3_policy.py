"""Stable-Baselines3 actors seen through a :class:`~rl_gpt.layout.Layout`.

The actor is what a checkpoint stores and what the generator produces: for PPO the policy MLP,
``action_net`` and (continuous actions) ``log_std``; for SAC ``actor.latent_pi``, ``actor.mu`` and
``actor.log_std``. Everything here works from SB3's own ``state_dict`` keys, so a dataset row can be
loaded into a freshly built SB3 model without rl_gpt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rl_gpt.layout import LayerSpec, Layout

__all__ = [
    "ACTIVATIONS",
    "activation_name",
    "actor_layout",
    "head_of",
    "load_actor",
    "read_actor",
    "resolve_policy_kwargs",
]

#: Activation names usable in configs, mapped to the torch modules SB3 expects.
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}

_DEFAULT_ACTIVATION = {"ppo": "tanh", "sac": "relu"}


def resolve_policy_kwargs(algo: str, policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn config-level policy kwargs (activation as a string) into SB3's kwargs."""
    kwargs = dict(policy_kwargs)
    act = kwargs.pop("activation_fn", _DEFAULT_ACTIVATION[algo])
    if act not in ACTIVATIONS:
        raise ValueError(f"policy_kwargs.activation_fn={act!r}: choose one of {sorted(ACTIVATIONS)}")
    kwargs["activation_fn"] = ACTIVATIONS[act]
    return kwargs


def activation_name(policy: nn.Module) -> str:
    act = policy.activation_fn if hasattr(policy, "activation_fn") else policy.actor.activation_fn
    for name, cls in ACTIVATIONS.items():
        if act is cls:
            return name
    raise ValueError(f"unsupported activation {act}")


def head_of(algo: str, action_space: gym.Space) -> str:
    """How actions come out of the last layer: ``categorical``, ``gaussian`` or ``squashed_gaussian``."""
    if algo == "sac":
        return "squashed_gaussian"
    if isinstance(action_space, gym.spaces.Discrete):
        return "categorical"
    if isinstance(action_space, gym.spaces.Box):
        return "gaussian"
    raise ValueError(f"unsupported action space {action_space}")


def _hidden_prefixes(state: Mapping[str, torch.Tensor], stem: str) -> list[str]:
    """Linear layers of an SB3 ``nn.Sequential`` MLP (``stem.0``, ``stem.2``, ...), in order."""
    idx = sorted({int(k[len(stem) + 1 :].split(".")[0]) for k in state if k.startswith(stem + ".")})
    return [f"{stem}.{i}" for i in idx]


def actor_layout(policy: nn.Module, algo: str) -> Layout:
    """The layout of an SB3 PPO/SAC policy's actor, with permutable hidden units."""
    state = policy.state_dict()
    act = activation_name(policy)
    if algo == "ppo":
        hidden = _hidden_prefixes(state, "mlp_extractor.policy_net")
        heads = ["action_net"]
        extra = ["log_std"] if "log_std" in state else []
    elif algo == "sac":
        hidden = _hidden_prefixes(state, "actor.latent_pi")
        heads = ["actor.mu", "actor.log_std"]
        extra = []
    else:
        raise ValueError(f"unknown algorithm {algo!r}: expected 'ppo' or 'sac'")
    layers, prev = [], None
    for i, prefix in enumerate(hidden):
        layers.append(LayerSpec(prefix, prev, f"h{i}", act))
        prev = f"h{i}"
    layers += [LayerSpec(h, prev, None) for h in heads]
    names = [n for layer in layers for n in (f"{layer.prefix}.weight", f"{layer.prefix}.bias") if n in state]
    return Layout.build(state, layers, names + extra)


def read_actor(policy: nn.Module, layout: Layout) -> torch.Tensor:
    """The actor's parameters as one flat float32 vector (D,)."""
    return layout.flatten(policy.state_dict()).detach().to(torch.float32).cpu()


def load_actor(policy: nn.Module, layout: Layout, flat: torch.Tensor) -> None:
    """Write a flat actor vector (D,) into an SB3 policy in place; other weights are untouched."""
    if not torch.isfinite(flat).all():
        raise ValueError("refusing to load non-finite (NaN/inf) parameters into a policy")
    state = policy.state_dict()
    for name, value in layout.unflatten(flat.detach().cpu()).items():
        state[name] = value.to(state[name].dtype)
    policy.load_state_dict(state)
