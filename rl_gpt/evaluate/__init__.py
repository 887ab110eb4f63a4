"""Batched evaluation of many policies given as flat parameter vectors (see ``rollout.py``)."""

from rl_gpt.evaluate.policy import (
    BatchedPolicy,
    PolicySpec,
    PolicyWeights,
    fold_obs_normalisation,
    policy_spec_from_sb3,
)
from rl_gpt.evaluate.rollout import EvalResult, evaluate_params
from rl_gpt.evaluate.sb3 import (
    PolicyFileError,
    detect_algo,
    evaluate_sb3_file,
    evaluate_sb3_files,
    infer_env_id,
    load_sb3_policy,
)

__all__ = [
    "BatchedPolicy",
    "EvalResult",
    "PolicyFileError",
    "PolicySpec",
    "PolicyWeights",
    "detect_algo",
    "evaluate_params",
    "evaluate_sb3_file",
    "evaluate_sb3_files",
    "fold_obs_normalisation",
    "infer_env_id",
    "load_sb3_policy",
    "policy_spec_from_sb3",
]
