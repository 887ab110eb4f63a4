"""What ``rl-gpt evaluate`` does: an SB3 .zip, a classifier .safetensors or dataset rows, measured in batches.

Policies get episode returns; classifiers (supervised datasets and generated classifier files) get
the test loss and error on their data set's full test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl_gpt.supervised.data import DATASETS
from rl_gpt.supervised.data_root import locate_data_root, use_data_root
from rl_gpt.supervised.files import ClassifierFileError, read_classifier_file
from rl_gpt.supervised.metric import classifier_test_metrics, supervised_metric

__all__ = ["evaluate_target"]


def _parse_rows(text: str, n: int) -> torch.Tensor:
    """``""`` (all), ``5`` (one row) or ``0:100`` (a slice) of a dataset with ``n`` rows."""
    from rl_gpt.dataset import DatasetError

    if not text:
        return torch.arange(n)
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            first, end = int(start) if start else 0, int(stop) if stop else n
        else:
            first = int(text)
            end = first + 1 if first != -1 else n  # -1 alone is the last row
    except ValueError:
        raise DatasetError(f"rows {text!r}: give a row (5) or a range (0:100) of whole numbers") from None
    # Negative bounds count from the end, as in Python; a bound past the end is an error, not clipped,
    # so a typo does not silently measure fewer rows than asked for.
    first, end = (first + n if first < 0 else first), (end + n if end < 0 else end)
    if not (first >= 0 and end <= n):
        raise DatasetError(f"rows {text!r} are not in the dataset: it has rows 0 to {n - 1} (give e.g. 0:{n})")
    if first >= end:
        counted = f" (from row {first} to before row {end}: negative bounds count from the end)" if "-" in text else ""
        raise DatasetError(f"rows {text!r} select no rows{counted}: a range's start must be below its stop")
    return torch.arange(first, end)


def _evaluate_several(targets: list[str], episodes, device, seed, stochastic, dataset, data_root, env_id) -> dict:
    """:func:`evaluate_target` of several files (its arguments, in its order)."""
    from rl_gpt.evaluate import PolicyFileError

    for target in targets:  # the options each kind refuses alone, refused for several too
        _check_options(target, env_id, dataset)
    if all(t.endswith(".safetensors") for t in targets):
        parts = [_evaluate_classifier_file(t, dataset, data_root, device) for t in targets]
        classifiers = [c for part in parts for c in part["json"]["classifiers"]]
        record = {"target": targets, "split": "test", "classifiers": classifiers}
        return {"text": "\n".join(part["text"] for part in parts), "json": record}
    if not all(t.endswith(".zip") for t in targets):
        raise PolicyFileError(
            f"{len(targets)} targets: give several .zip policies, several .safetensors classifiers, or one dataset"
        )
    return _evaluate_policy_files(targets, episodes or 10, device, seed or 0, stochastic, env_id)


def _check_options(target: str, env_id: str | None, dataset: str | None) -> None:
    """Refuse an option that would be ignored for ``target``."""
    from rl_gpt.evaluate import PolicyFileError

    if env_id is not None and not target.endswith(".zip"):
        raise PolicyFileError(f"--env names the environment of a .zip policy file; {target} carries its own")
    if dataset is not None and not target.endswith(".safetensors"):  # a policy file and dataset rows carry theirs
        raise ClassifierFileError(f"--dataset names the network of a .safetensors classifier file; {target} needs none")


def _evaluate_policy_files(
    targets: list[str], episodes: int, device: str, seed: int, stochastic: bool, env_id: str | None
) -> dict[str, Any]:
    from rl_gpt.evaluate import evaluate_sb3_files
    from rl_gpt.evaluate.sb3 import env_source

    for target in targets:
        if not Path(target).is_file():
            raise FileNotFoundError(f"no policy file {target}")
    res = evaluate_sb3_files(targets, episodes, not stochastic, seed, device, env_id)
    named = targets[0] if len(targets) == 1 else targets  # one file's record names it as before
    report = _returns_report(named, targets, res, [None] * len(targets), episodes, seed, stochastic)
    envs = [env_source(t, env_id) for t in targets]
    for policy, (env, how) in zip(report["json"]["policies"], envs, strict=True):
        policy["env_id"], policy["env_from"] = env, how.split(":")[0]
    said = sorted({f"{env} ({how})" for env, how in envs})
    report["text"] = f"environment: {'; '.join(said)}\n" + report["text"]
    return report


def evaluate_target(
    target: str | list[str],
    episodes: int | None,
    device: str,
    seed: int | None,
    stochastic: bool,
    dataset: str | None = None,
    data_root: str | None = None,
    env_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``POLICY.zip``, ``CLASSIFIER.safetensors`` or ``DATASET[:rows]``; returns text and a JSON record.

    ``dataset`` (a checkpoint dataset folder) names the network and data set of a classifier file
    that does not carry them; ``data_root`` replaces the folder of MNIST/CIFAR-10 files a classifier
    is tested on. ``episodes`` and ``seed`` (None: 10 and 0) default, for dataset rows, to the protocol
    their labels were measured with, and each row is printed beside its label. ``env_id`` is the
    Gymnasium id a ``.zip`` policy is evaluated in (None: inferred, see :func:`infer_env_id`).

    Several targets must be files of one kind: ``.zip`` policies, rolled out together (one batch per
    environment and architecture), or ``.safetensors`` classifiers, tested one after another.
    """
    if not isinstance(target, str):
        if len(target) == 1:
            target = target[0]
        else:
            return _evaluate_several(target, episodes, device, seed, stochastic, dataset, data_root, env_id)

    _check_options(target, env_id, dataset)
    if target.endswith(".safetensors"):
        return _evaluate_classifier_file(target, dataset, data_root, device)
    if target.endswith(".zip"):
        return _evaluate_policy_files([target], episodes or 10, device, seed or 0, stochastic, env_id)
    else:
        from rl_gpt.dataset import CheckpointDataset
        from rl_gpt.evaluate import PolicySpec, evaluate_params

        root, _, sel = target.partition(":") if not Path(target).exists() else (target, "", "")
        ds = CheckpointDataset(root)
        idx = _parse_rows(sel, len(ds))
        if ds.spec["task"].get("kind") == "supervised":
            params = ds.data["params"][idx].float().to(device)
            metrics = supervised_metric(use_data_root(ds.spec, data_root), params)  # checked before the work
            stored = {k: ds.data[k][idx] for k in ("test_loss", "test_error") if k in ds.data}
            return _classifier_report(target, [f"row {int(i)}" for i in idx], metrics, stored)
        from rl_gpt.evaluate.dataset_metric import label_protocol

        label_episodes, label_seed = label_protocol(ds.spec, 10)
        episodes = label_episodes if episodes is None else episodes
        seed = label_seed if seed is None else seed
        # Stochastic returns depend on which rows share the call (one noise stream): only deterministic
        # labels are reproduced, so only they are shown.
        labels = [None] * len(idx) if stochastic else ds.data["metric"][idx].tolist()
        spec = PolicySpec.from_dict(ds.spec["policy"])
        extra = {}
        if spec.normalize_obs:
            extra = {"obs_mean": ds.data["obs_mean"][idx].float(), "obs_var": ds.data["obs_var"][idx].float()}
        res = evaluate_params(
            ds.data["params"][idx].float(),
            ds.layout,
            spec,
            ds.spec["env_id"],
            episodes=episodes,
            deterministic=not stochastic,
            seed=seed,
            device=device,
            **extra,
        )
        rows = [f"row {int(i)}" for i in idx]
    return _returns_report(target, rows, res, labels, episodes, seed, stochastic)


def _returns_report(
    target: str | list[str], rows: list[str], res: Any, labels: list, episodes: int, seed: int, stochastic: bool
) -> dict[str, Any]:
    """Printable lines and the JSON record of policies' returns, each row beside its label where it has one."""
    how = f"{episodes} episodes, seed {seed}, " + ("stochastic actions" if stochastic else "deterministic actions")
    lines = [f"returns ({how}):"] + [
        f"{name}: {m:.2f} +- {s:.2f}" + ("" if label is None else f" (label {label:.2f})")
        for name, m, s, label in zip(rows, res.mean.tolist(), res.std.tolist(), labels)
    ]
    record = {
        "target": target,
        "episodes": episodes,
        "deterministic": not stochastic,
        "seed": seed,
        "policies": [
            {"name": n, "mean": float(m), "std": float(s), "returns": r} | ({} if label is None else {"label": label})
            for n, m, s, r, label in zip(rows, res.mean, res.std, res.returns.tolist(), labels)
        ],
    }
    return {"text": "\n".join(lines), "json": record}


def _evaluate_classifier_file(target: str, dataset: str | None, data_root: str | None, device: str) -> dict[str, Any]:
    """A generated classifier file: its network and data set from its metadata, else from ``dataset``'s spec."""
    from rl_gpt.dataset import CheckpointDataset

    network = name = None
    if dataset is not None:
        spec = CheckpointDataset(dataset).spec
        if spec["task"].get("kind") != "supervised":
            raise ClassifierFileError(f"--dataset {dataset} holds policies, not classifiers")
        network, name = spec["policy"]["network"], spec["policy"]["dataset"]
        data_root = locate_data_root(spec, data_root)
    file = read_classifier_file(target, network, name)
    root = data_root or file.data_root
    if not DATASETS[file.dataset].bundled and not (root and Path(root).is_dir()):
        raise ClassifierFileError(
            f"{target} is tested on {file.dataset}, whose files are not at {root}; pass --data-root DIR"
            if root
            else f"{target} is tested on {file.dataset}; pass --data-root DIR, the folder of its files"
        )
    params = file.params[None].to(device)  # (1, D)
    metrics = classifier_test_metrics(file.network, file.dataset, params, root)
    return _classifier_report(target, [target], metrics)


def _classifier_report(
    target: str, names: list[str], metrics: dict[str, torch.Tensor], labels: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Printable lines and the JSON record of classifiers' test loss and error, each dataset row beside
    the values its collection stored (``labels``: ``test_loss``/``test_error`` columns)."""
    loss, error = metrics["test_loss"].tolist(), metrics["test_error"].tolist()
    labels = labels or {}
    lines, classifiers = [], []
    for k, (n, v, e) in enumerate(zip(names, loss, error)):
        item = {"name": n, "test_loss": v, "test_error": e}
        line = f"{n}: test loss {v:.4f}, test error {100 * e:.2f}%"
        if "test_loss" in labels and "test_error" in labels:
            stored_loss, stored_error = float(labels["test_loss"][k]), float(labels["test_error"][k])
            item |= {"label_test_loss": stored_loss, "label_test_error": stored_error}
            line += f" (label {stored_loss:.4f}, {100 * stored_error:.2f}%)"
        lines.append(line)
        classifiers.append(item)
    return {"text": "\n".join(lines), "json": {"target": target, "split": "test", "classifiers": classifiers}}
