"""Behavioural novelty: where does a network act differently from its nearest training checkpoint?

Parameter novelty (:func:`rl_gpt.sweep.novelty.novelty_ratio`) says how far a network is from the
training data; this says whether the distance matters. For each network and a partner (its aligned
nearest training checkpoint, found by :func:`~rl_gpt.sweep.novelty.nearest_aligned`):

* policies (:func:`action_disagreement`): roll the policy out deterministically in the task's
  environment and, on every state it visits, compare its deterministic action with the partner's on
  the same state. Discrete actions differ when they are not equal; continuous actions when any
  dimension differs by more than ``tol`` (default 5%) of that dimension's action range
  (high − low), after SB3's clipping to the bounds. The states are the policy's own: ``envs``
  episodes side by side, each restarted when it ends, for ``states // envs`` steps, so a policy that
  falls over at once is still compared on ``states`` states (all of them near the start).
* classifiers (:func:`prediction_disagreement`): compare predicted classes (argmax) on test inputs.

The result is the share of states (inputs) with different actions (predictions): 0 for a copy of
the checkpoint, up to 1 (discrete) for a policy that always does something else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl_gpt.envs import find_dynamics
from rl_gpt.evaluate.policy import BatchedPolicy, PolicySpec
from rl_gpt.evaluate.states import shared_obs_stats
from rl_gpt.evaluate.stepping import GymEpisodes, check_dynamics, run_episodes
from rl_gpt.layout import Layout
from rl_gpt.sweep.novelty import actions_differ
from rl_gpt.threads import torch_threads

__all__ = ["STATES", "TOLERANCE", "action_disagreement", "action_range", "prediction_disagreement"]

#: States compared per policy (and test inputs per classifier). All policies step as one batch: 49
#: CartPole policies take ~0.1 s; on the Gymnasium fallback (MuJoCo) ~4 s, small next to evaluation.
STATES = 2048
#: Continuous actions differ when some dimension differs by more than this share of its range.
TOLERANCE = 0.05
# Episodes run side by side per policy.
_ENVS = 4
# Classifiers compared at once, and test inputs per forward pass (bounds a CNN's activations).
_MODEL_CHUNK = 8
_INPUT_CHUNK = 256


def action_range(spec: PolicySpec) -> torch.Tensor | None:
    """(A,) high − low of a continuous action space (2.0 where a bound is infinite); None if discrete."""
    if spec.discrete:
        return None
    width = torch.tensor(spec.action_high, dtype=torch.float64) - torch.tensor(spec.action_low, dtype=torch.float64)
    return torch.where(torch.isfinite(width), width, torch.full_like(width, 2.0)).float()


@torch.inference_mode()
def action_disagreement(
    layout: Layout,
    spec: PolicySpec,
    env_id: str,
    params: torch.Tensor,
    partners: torch.Tensor,
    states: int | None = None,
    seed: int = 0,
    obs_mean: torch.Tensor | None = None,
    obs_var: torch.Tensor | None = None,
    tol: float = TOLERANCE,
    envs: int = _ENVS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of the states of policy ``params[b]``'s own deterministic rollouts where its action
    differs from ``partners[b]``'s, for each of B pairs (params, partners (B, D), finite).

    Returns ``(fraction (B,), states compared (B,))``. ``states`` per policy defaults to
    :data:`STATES`; on the Gymnasium fallback the step that restarts an ended episode is not
    counted, so a few fewer are compared. Both policies see the
    observations through the same VecNormalize statistics ``obs_mean``/``obs_var`` (obs_dim,) when
    the spec normalises observations, so only their parameters differ. Every policy's ``envs``
    episodes start from the same states (drawn from ``seed``). ``tol`` is relative to
    :func:`action_range`.
    """
    if params.shape != partners.shape or params.dim() != 2:
        raise ValueError(f"params and partners must both be (B, D), got {tuple(params.shape)}, {tuple(partners.shape)}")
    B = params.shape[0]
    if B == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    policy = BatchedPolicy(layout, spec)
    mean, var = shared_obs_stats(spec, B, obs_mean, obs_var)
    w_self, w_other = policy.prepare(params.float(), mean, var), policy.prepare(partners.float(), mean, var)
    width = action_range(spec)

    def differ(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(own actions, (B, E) mask of states where the partner acts differently)."""
        a = policy.act_prepared(w_self, obs, True)
        b = policy.act_prepared(w_other, obs, True)
        return a, actions_differ(a, b, spec.discrete, tol, 0.0 if width is None else width)

    dynamics = find_dynamics(env_id)
    steps = max(1, (states or STATES) // envs)
    with torch_threads(1):
        if dynamics is not None:
            check_dynamics(spec, dynamics, env_id)
            g = torch.Generator().manual_seed(seed)
            count = torch.zeros(B, dtype=torch.int64)

            def act(obs: torch.Tensor) -> torch.Tensor:
                a, d = differ(obs.view(B, envs, -1))
                count.add_(d.sum(1))
                return a.flatten(0, 1)

            start = dynamics.initial_state(envs, g, torch.float32, "cpu").repeat(B, 1)  # (B·E, S)
            run_episodes(dynamics, start, act, steps, g)
            seen = torch.full((B,), steps * envs, dtype=torch.int64)
        else:
            count, seen = _disagreement_gym(differ, env_id, spec, B, envs, steps, seed)
    return count.double() / seen.clamp(min=1), seen


def _disagreement_gym(
    differ: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    env_id: str,
    spec: PolicySpec,
    B: int,
    E: int,
    steps: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(differing, compared) state counts (B,) on a Gymnasium vector env of B·E copies."""
    count = torch.zeros(B, dtype=torch.int64)
    seen = torch.zeros(B, dtype=torch.int64)
    with GymEpisodes(env_id, spec, [seed + e for _ in range(B) for e in range(E)]) as envs:
        for _ in range(steps):
            a, d = differ(envs.observations().view(B, E, -1))
            acting = envs.acting.view(B, E)  # the autoreset step's state is not the policy's
            count += (d & acting).sum(1)
            seen += acting.sum(1)
            envs.step(a.flatten(0, 1))
    return count, seen


@torch.inference_mode()
def prediction_disagreement(
    layout: Layout, network: str, params: torch.Tensor, partners: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """(B,) share of inputs ``x`` (n, *input) on which classifier ``params[b]`` predicts another
    class than ``partners[b]`` (both (B, D) in the layout of ``network``, finite)."""
    from rl_gpt.supervised import classifier_logits

    if params.shape != partners.shape or params.dim() != 2:
        raise ValueError(f"params and partners must both be (B, D), got {tuple(params.shape)}, {tuple(partners.shape)}")
    out = []
    with torch_threads(1):
        for p, q in zip(params.float().split(_MODEL_CHUNK), partners.float().split(_MODEL_CHUNK)):
            differ = torch.zeros(len(p), dtype=torch.int64)
            for xb in x.split(_INPUT_CHUNK):
                a = classifier_logits(p, layout, network, xb).argmax(-1)  # (b, n)
                b = classifier_logits(q, layout, network, xb).argmax(-1)
                differ += (a != b).sum(1)
            out.append(differ.double() / max(len(x), 1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
