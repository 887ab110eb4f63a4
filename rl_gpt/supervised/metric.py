"""The dataset metric of generated classifiers: test loss and error of many flat parameter rows at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl_gpt.layout import Layout
from rl_gpt.supervised.data import load_dataset_cached
from rl_gpt.supervised.evaluate import evaluate_classifiers
from rl_gpt.supervised.models import classifier_layout

__all__ = ["classifier_test_metrics", "supervised_metric"]


@torch.inference_mode()
def supervised_metric(
    spec: dict[str, Any], params: torch.Tensor, data_root: str | Path | None = None, model_batch: int = 1024
) -> dict[str, torch.Tensor]:
    """Test loss and error of B flat classifiers of a supervised dataset's network, batched.

    ``spec`` is the dataset's spec.json; params (B, D) in its layout order, or one (D,); ``data_root`` defaults
    to the spec's ``task.data_root``. Models are evaluated ``model_batch`` at a time on the full test
    split. Returns ``test_loss``, ``test_error`` and ``metric`` (whichever of the two the spec
    names), each (B,) float32 on params' device; non-finite rows give NaN.
    """
    policy = spec.get("policy", {})
    if policy.get("kind") != "classifier":
        raise ValueError("supervised_metric needs a supervised dataset spec (policy.kind == 'classifier')")
    name, dataset = policy["network"], policy["dataset"]
    layout = Layout.from_dict(spec["layout"])
    if layout != classifier_layout(name):
        raise ValueError(f"the spec's layout is not {name}'s; the dataset was written by another rl_gpt version")
    if params.dim() == 1:  # one network, as evaluate_params takes it: results of shape (1,)
        params = params.unsqueeze(0)
    if params.dim() != 2 or params.shape[1] != layout.numel:
        raise ValueError(f"params must be (B, {layout.numel}) for {name}, got {tuple(params.shape)}")
    if params.shape[0] == 0:
        empty = params.new_empty(0, dtype=torch.float32)
        return {"test_loss": empty, "test_error": empty.clone(), "metric": empty.clone()}
    root = data_root if data_root is not None else spec["task"].get("data_root")
    out = classifier_test_metrics(name, dataset, params, root, model_batch)
    out["metric"] = out[spec["metric"]["name"]]
    return out


@torch.inference_mode()
def classifier_test_metrics(
    network: str, dataset: str, params: torch.Tensor, data_root: str | Path | None = None, model_batch: int = 1024
) -> dict[str, torch.Tensor]:
    """Test loss and error (B,) of B flat ``network`` classifiers on ``dataset``'s full test split.

    params (B, D) in the network's layout order; ``data_root`` holds the downloaded sets' files
    (digits needs none). Non-finite rows give NaN.
    """
    layout = classifier_layout(network)
    if params.dim() != 2 or params.shape[1] != layout.numel:
        raise ValueError(f"params must be (B, {layout.numel}) for {network}, got {tuple(params.shape)}")
    _, _, x_test, y_test = load_dataset_cached(dataset, None if data_root is None else str(data_root))
    finite = torch.isfinite(params).all(dim=1)  # (B,)
    safe = torch.where(finite[:, None], params, torch.zeros_like(params)).float()
    losses, errors = [], []
    for chunk in safe.split(model_batch):
        loss, error = evaluate_classifiers(chunk, layout, network, x_test, y_test)  # (b,), (b,)
        losses.append(loss)
        errors.append(error)
    nan = torch.tensor(float("nan"), device=params.device)
    return {
        "test_loss": torch.where(finite, torch.cat(losses), nan),
        "test_error": torch.where(finite, torch.cat(errors), nan),
    }
