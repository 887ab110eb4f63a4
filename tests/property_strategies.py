"""Strategies and helpers for the property-based tests (``test_properties_*.py``, hypothesis).

The known-answer tests pin a few fixed networks. The property tests draw random MLP actors (no hidden layer
up to four, widths from 1, biases or not, any activation and head, any flat order of the parameters) and
small conv nets, and check the invariants every consumer of a layout relies on.

Deterministic in CI: every property runs a fixed, modest number of examples drawn from a seed derived from the
test itself (``derandomize``), with no example database and no deadline, so a failure reproduces anywhere.
``RL_GPT_PROPERTY_SCALE`` multiplies every property's examples for a deeper search, e.g.
``RL_GPT_PROPERTY_SCALE=20 pytest tests/test_properties_layout.py tests/test_properties_networks.py``
(still deterministic, 20 times as many examples).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rl_gpt.evaluate import (
    BatchedPolicy,
    PolicySpec,
)
from rl_gpt.layout import LayerSpec, Layout
from rl_gpt.model import build_model

SCALE = float(os.environ.get("RL_GPT_PROPERTY_SCALE", "1"))
# too_slow times data generation (drawing an SB3 policy builds it): on a busy box it would fail at random.
CI = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def examples(n: int) -> settings:
    """The CI settings with ``n`` examples (times RL_GPT_PROPERTY_SCALE)."""
    return settings(CI, max_examples=max(1, round(n * SCALE)))


ACTIVATIONS = ["tanh", "relu", "elu", "leaky_relu"]
SEEDS = st.integers(0, 2**31)


# ----------------------------------------------------------------------------- strategies and helpers
@st.composite
def mlp_policies(draw: st.DrawFn) -> tuple[Layout, PolicySpec]:
    """A random MLP actor laid out as ``actor_layout`` does (hidden chain, one head or SAC's two), and its spec."""
    obs_dim = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 40), max_size=4))
    head = draw(st.sampled_from(["categorical", "gaussian", "squashed_gaussian"]))
    activation = draw(st.sampled_from(ACTIVATIONS))
    n_out = draw(st.integers(2, 6)) if head == "categorical" else draw(st.integers(1, 4))
    shapes: dict[str, tuple[int, ...]] = {}
    layers, group, n_in = [], None, obs_dim
    for i, width in enumerate(widths):
        shapes[f"pi.{2 * i}.weight"] = (width, n_in)
        if draw(st.booleans()):
            shapes[f"pi.{2 * i}.bias"] = (width,)
        layers.append(LayerSpec(f"pi.{2 * i}", group, f"h{i}", activation))
        group, n_in = f"h{i}", width
    for name in ["mu", "log_std_head"] if head == "squashed_gaussian" else ["action_net"]:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)
        layers.append(LayerSpec(name, group, None))
    if head == "gaussian":
        shapes["log_std"] = (n_out,)
    names = draw(st.permutations(list(shapes)))  # offsets follow the flat order, whatever it is
    layout = Layout.build(shapes, layers, names)
    common = dict(algo="sac" if head == "squashed_gaussian" else "ppo", head=head, activation=activation)
    if head == "categorical":
        return layout, PolicySpec(**common, obs_dim=obs_dim, action_dim=1, n_actions=n_out)
    low = tuple(draw(st.floats(-3, -0.1)) for _ in range(n_out))
    high = tuple(draw(st.floats(0.1, 3)) for _ in range(n_out))
    return layout, PolicySpec(**common, obs_dim=obs_dim, action_dim=n_out, action_low=low, action_high=high)


@st.composite
def conv_layouts(draw: st.DrawFn) -> Layout:
    """Two convolutions (1x1 or 3x3, biases or not) and a linear head on the pooled channels."""
    c0, c1, c2 = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3]))
    shapes = {"conv1.weight": (c1, c0, k, k), "conv2.weight": (c2, c1, k, k), "fc.weight": (5, c2), "fc.bias": (5,)}
    if draw(st.booleans()):
        shapes["conv1.bias"], shapes["conv2.bias"] = (c1,), (c2,)
    layers = [
        LayerSpec("conv1", None, "c1", "relu"),
        LayerSpec("conv2", "c1", "c2", "relu"),
        LayerSpec("fc", "c2", None),
    ]
    return Layout.build(shapes, layers)


LAYOUTS = st.one_of(mlp_policies().map(lambda policy: policy[0]), conv_layouts())


def random_params(seed: int, b: int, layout: Layout, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(b, D) standard normal parameters."""
    return torch.randn(b, layout.numel, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_perms(layout: Layout, b: int, seed: int) -> dict[str, torch.Tensor]:
    return layout.random_permutations(b, torch.Generator().manual_seed(seed))


@contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block (module initialisation) and restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


ACTIVATION_FNS = {None: lambda x: x, "tanh": torch.tanh, "relu": torch.relu, "elu": F.elu, "leaky_relu": F.leaky_relu}


def reference_outputs(layout: Layout, flat: torch.Tensor, obs: torch.Tensor) -> list[torch.Tensor]:
    """A plain float64 forward of one network, flat (D,) on obs (E, obs_dim): the head outputs in layer order."""
    params = {name: p.double() for name, p in layout.unflatten(flat).items()}
    values, heads = {None: obs.double()}, []
    for layer in layout.layers:
        h = values[layer.in_group] @ params[f"{layer.prefix}.weight"].T
        if f"{layer.prefix}.bias" in params:
            h = h + params[f"{layer.prefix}.bias"]
        h = ACTIVATION_FNS[layer.activation](h)
        if layer.out_group is None:
            heads.append(h)
        else:
            values[layer.out_group] = h
    return heads


def clear_argmax(logits: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Where the best logit beats the runner-up by ``margin``: two correct evaluations agree on the argmax there."""
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1] > margin


def assert_acts_as_sb3(layout: Layout, spec: PolicySpec, flat: torch.Tensor, obs: np.ndarray, sb3: np.ndarray) -> None:
    """The batched policy's deterministic actions on obs (E, obs_dim) are SB3's (ties of logits aside)."""
    policy = BatchedPolicy(layout, spec)
    got = policy.act(flat[None], torch.from_numpy(obs)[None])[0].numpy()
    if spec.discrete:
        clear = clear_argmax(policy.outputs(policy.prepare(flat[None]), torch.from_numpy(obs)[None])[0][0]).numpy()
        np.testing.assert_array_equal(got[clear], sb3[clear])
    else:
        np.testing.assert_allclose(got, sb3.reshape(got.shape), atol=1e-5)


def seeded_tiny_dit(layout: Layout, seed: int, **overrides) -> torch.nn.Module:
    """The registry's tiny neuron DiT, initialised from ``seed``; its zero-initialised layers get random values."""
    with torch_seed(seed):
        model = build_model("tiny", layout, tokens="neuron", width=16, heads=2, depth=1, **overrides).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model
