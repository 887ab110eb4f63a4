"""How optimistic is "the dataset's best checkpoint" as a reference? Chosen on some test images, scored on others.

A supervised sweep prints the dataset's best checkpoint (its lowest test loss and error) beside the
one-step result, and #6's target is one point of test error from it. But that best is the minimum over
every checkpoint of a number measured on the same few hundred images: the luckiest checkpoint on them.
Here every checkpoint's loss and correctness are computed per test image; the test split is cut at
random into a *choosing* part and a *scoring* part (many times, for several sizes), the best checkpoint
is chosen on one and scored on the other. The gap between the two is the selection's optimism.

    python scripts/best_checkpoint_bias.py runs/demo-digits/dataset          # a digits dataset
    python scripts/best_checkpoint_bias.py DATASET --splits 100 --json out.json

It reads the dataset and its data set's test split (digits ships with scikit-learn; MNIST/CIFAR-10
need ``task.data_root`` in spec.json) and evaluates every valid checkpoint once, batched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from rl_gpt.dataset import CheckpointDataset
from rl_gpt.layout import Layout
from rl_gpt.supervised.data import load_dataset
from rl_gpt.supervised.evaluate import classifier_logits, cross_entropy


def per_image(ds: CheckpointDataset, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error (N, T) of checkpoints ``rows`` on each of the T test images."""
    policy = ds.spec["policy"]
    layout = Layout.from_dict(ds.spec["layout"])
    *_, x, y = load_dataset(policy["dataset"], ds.spec["task"].get("data_root"))
    chunk = max(1, 50_000_000 // (len(x) * 10))  # checkpoints at a time: ~200 MB of logits for 10 classes
    losses, errors = [], []
    with torch.inference_mode():
        for part in rows.split(chunk):
            logits = classifier_logits(ds.data["params"][part].float(), layout, policy["network"], x)  # (n, T, C)
            losses.append(cross_entropy(logits, y.expand(len(part), -1)))
            errors.append((logits.argmax(-1) != y).float())
    return torch.cat(losses), torch.cat(errors)


def selection_gap(values: torch.Tensor, choose_size: int, splits: int, seed: int = 0) -> dict[str, float]:
    """Mean over random splits of the best checkpoint's value on the images it was chosen on, and on the rest."""
    g = torch.Generator().manual_seed(seed)
    chosen_on, scored_on = [], []
    for _ in range(splits):
        order = torch.randperm(values.shape[1], generator=g)
        choose, score = order[:choose_size], order[choose_size:]
        on_choose = values[:, choose].mean(1)
        best = on_choose == on_choose.min()  # ties (an error is a count): their mean, not the first
        chosen_on.append(float(on_choose[best].mean()))
        scored_on.append(float(values[best][:, score].mean()))
    scored = torch.tensor(scored_on, dtype=torch.float64)
    return {
        "choose_images": choose_size,
        "score_images": values.shape[1] - choose_size,
        "on_the_choosing_images": sum(chosen_on) / splits,
        "on_the_other_images": float(scored.mean()),
        # the Monte Carlo error of that mean over random splits (the splits share checkpoints and images)
        "on_the_other_images_se": float(scored.std() / splits**0.5) if splits > 1 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a supervised checkpoint dataset folder")
    parser.add_argument("--splits", type=int, default=500, help="random splits per size")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    ds = CheckpointDataset(args.dataset)
    if ds.spec.get("policy", {}).get("kind") != "classifier":
        raise SystemExit(f"{args.dataset}: not a supervised (classifier) dataset")
    rows = torch.nonzero(ds.valid_mask()).squeeze(1)
    loss, error = per_image(ds, rows)
    finite = torch.isfinite(loss).all(1)  # a valid row may still overflow (as the sweep's summary skips it)
    loss, error, rows = loss[finite], error[finite], rows[finite]
    images = loss.shape[1]
    result: dict[str, Any] = {
        "checkpoints": len(rows),
        "test_images": images,
        "best_on_all_images": {"test_loss": float(loss.mean(1).min()), "test_error": float(error.mean(1).min())},
    }
    print(
        f"{len(rows)} checkpoints, {images} test images; the best on all of them: loss "
        f"{result['best_on_all_images']['test_loss']:.4f}, error {result['best_on_all_images']['test_error']:.2%}"
    )
    for name, values in (("test_loss", loss), ("test_error", error)):
        result[name] = []
        for fraction in (0.5, 0.75, 0.9):
            gap = selection_gap(values, round(images * fraction), args.splits)
            result[name].append(gap)
            fmt = "{:.2%}" if name == "test_error" else "{:.4f}"
            print(
                f"{name}: chosen on {gap['choose_images']} images: {fmt.format(gap['on_the_choosing_images'])} there, "
                f"{fmt.format(gap['on_the_other_images'])} ± {fmt.format(gap['on_the_other_images_se'])} on the "
                f"other {gap['score_images']}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
