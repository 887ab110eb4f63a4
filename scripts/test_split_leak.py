"""Does labelling classifier checkpoints on the test split flatter a digits sweep? Measured on a half it never saw.

A supervised dataset labels every checkpoint with its test-split loss (G.pt's protocol, #6's ask),
and calibration, the ranker and retrieval choose by those numbers; the sweep then scores generated
networks on the same split. A sceptic's question: how much of the score is fitted to those 360 images?

Here the digits test split is cut in two stratified halves. For each fold, everything rl_gpt does
(labels, generator training, calibration, ranker, sweep) sees only the *label* half; the sweep is then
run again with the same seeds, so the same networks, scoring them on the *unseen* half instead. The
generator's input m, the prompts' calibration and the ranking stay on the label half. Each fold's pair
of reports is compared init by init (`rl-gpt compare`). Across the two folds the halves swap roles,
so for a loss, a half that is simply easier cancels out: the mean of (unseen - label) over folds is
the leak. R² is quadratic and does not cancel so; see :func:`per_init_leak`.

The real held-out runs' final checkpoints, which nothing chose, are scored on both halves as well.

    python scripts/test_split_leak.py --out /tmp/leak              # two folds, about 20 min on 2 cores
    python scripts/test_split_leak.py --out /tmp/leak --quick      # a smoke run of the wiring (~5 min)
    python scripts/test_split_leak.py --out /tmp/leak --summarise  # the numbers again, from the reports

Everything runs in this one process (collect.workers=1), so the patched loader is the only one used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import rl_gpt.collect.supervised_run
import rl_gpt.supervised.data as data
import rl_gpt.supervised.data_root
import rl_gpt.supervised.metric
import rl_gpt.sweep.audit
import rl_gpt.sweep.run as sweep_run
from rl_gpt.cli import main as rl_gpt_main
from rl_gpt.dataset import CheckpointDataset
from rl_gpt.evaluate.alignment import alignment_r2, better_half, mean_ci95
from rl_gpt.supervised.evaluate import evaluate_classifiers
from rl_gpt.supervised.models import classifier_layout
from rl_gpt.sweep.compare import (
    _achieved,
    _one_step_per_init,
    compare_reports,
    format_comparison,
)
from rl_gpt.train.modelfile import read_model_info

_REAL_LOAD = data.load_dataset_cached
_HALF = {"now": "A"}  # the half the test split is, for whatever loads it next


def halves(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two stratified halves (indices into digits' 360-image test split), fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    *_, y_test = _REAL_LOAD("digits", None)
    idx = torch.arange(len(y_test)).numpy()
    a, b = train_test_split(idx, test_size=0.5, stratify=y_test.numpy(), random_state=seed)
    return {"A": torch.as_tensor(sorted(a)), "B": torch.as_tensor(sorted(b))}


HALVES = halves()
_CUT: dict[tuple[str, str | None, str], Any] = {}


def _load_half(dataset: str, data_root: str | None) -> Any:
    x_tr, y_tr, x_te, y_te = _REAL_LOAD(dataset, data_root)
    if dataset != "digits":
        raise SystemExit("test_split_leak.py measures digits only")
    key = (dataset, data_root, _HALF["now"])
    if key not in _CUT:  # one tensor per half, as the real loader's cache gives one per data set
        idx = HALVES[_HALF["now"]]
        _CUT[key] = (x_tr, y_tr, x_te[idx].contiguous(), y_te[idx].contiguous())
    return _CUT[key]


for module in (
    data,
    rl_gpt.supervised.data_root,
    rl_gpt.supervised.metric,
    rl_gpt.sweep.audit,
    rl_gpt.collect.supervised_run,
):
    module.load_dataset_cached = _load_half  # every importer's name for the test split's loader


@contextlib.contextmanager
def scored_on(half: str) -> Iterator[None]:
    """Within the block the sweep scores what it generated (and the baselines) on ``half``; the
    generator's input m (``start_metric``), calibration and ranking keep the half the labels came from."""
    evaluate_flat, classifier_metrics = sweep_run.evaluate_flat, sweep_run.classifier_metrics

    def switched(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            before, _HALF["now"] = _HALF["now"], half
            try:
                return fn(*args, **kwargs)
            finally:
                _HALF["now"] = before

        return call

    sweep_run.evaluate_flat, sweep_run.classifier_metrics = switched(evaluate_flat), switched(classifier_metrics)
    try:
        yield
    finally:
        sweep_run.evaluate_flat, sweep_run.classifier_metrics = evaluate_flat, classifier_metrics


def heldout_finals(experiment: Path) -> dict[str, dict[str, float]]:
    """Mean test loss / error of the held-out runs' last checkpoints on each half (nothing chose them)."""
    ds = CheckpointDataset(experiment / "dataset")
    test_runs = read_model_info(experiment / "model")["meta"]["test_runs"]
    slices = ds.run_slices()
    rows = torch.tensor([slices[r].stop - 1 for r in test_runs])
    params = ds.data["params"][rows].float()
    x_tr, y_tr, x_te, y_te = _REAL_LOAD("digits", None)
    layout = classifier_layout("digits_mlp")
    out = {}
    for half, idx in HALVES.items():
        loss, error = evaluate_classifiers(params, layout, "digits_mlp", x_te[idx], y_te[idx])
        out[half] = {"test_loss": float(loss.mean()), "test_error": float(error.mean()), "runs": len(test_runs)}
    return out


def fold(out: Path, label_half: str, overrides: list[str]) -> dict[str, Any]:
    """Labels on ``label_half``: the demo there, then the same sweep scored on each half."""
    other = "B" if label_half == "A" else "A"
    _HALF["now"] = label_half
    experiment = out / f"labels_{label_half}"
    common = ["collect.workers=1", "wandb.mode=disabled", *overrides]
    if rl_gpt_main(["demo", "--task", "digits", "--out", str(experiment), *common]) != 0:
        raise SystemExit(f"the demo with labels on half {label_half} failed")
    # the demo's own sweep settings (the model's config.yaml), with this script's sweep.* overrides
    sweep = ["sweep", "--model", str(experiment / "model"), "wandb.mode=disabled"]
    sweep += [o for o in overrides if o.startswith("sweep.")]
    reports = {}
    for half in (label_half, other):
        with scored_on(half):
            folder = experiment / f"sweep_scored_on_{half}"
            if rl_gpt_main([*sweep, "--out", str(folder)]) != 0:
                raise SystemExit(f"the sweep scored on half {half} failed")
            reports[half] = folder / "report.json"
    same = [json.loads(p.read_text()) for p in (experiment / "report.json", reports[label_half])]
    if same[0]["achieved"] != same[1]["achieved"]:  # the demo's sweep, again: the draws must repeat
        raise SystemExit("the sweep did not repeat the demo's draws; the pairing below would be meaningless")
    rows = compare_reports([str(reports[label_half]), str(reports[other])])
    print(format_comparison(rows))
    return {
        "label_half": label_half,
        "reports": {h: str(p) for h, p in reports.items()},
        "comparison": format_comparison(rows),
        "heldout_final": heldout_finals(experiment),
        "scored": {h: _summary(json.loads(p.read_text())) for h, p in reports.items()},
    }


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    one = report["one_step"]
    return {
        "r2": report["prompt_alignment_r2"],
        "r2_better_half": report["prompt_alignment_r2_better_half"],
        "one_step_loss": one["mean_return"],
        "one_step_error": one["classifier"]["test_error"],
        "retrieval_one_step": report["baselines"]["retrieval"]["one_step"]["mean_return"],
        "unranked_r2": report["rerank"]["without_rerank"]["prompt_alignment_r2"] if "rerank" in report else None,
    }


def per_init_leak(folds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the label half buys, per init (the folds' generators differ, their inits do not), with a t
    interval over inits.

    A linear measure (a loss) is the mean over folds of (unseen half - label half): an easier half adds
    +d in one fold and -d in the other, which cancels. R² does not cancel so: it is quadratic in the
    error, and a shift of +d or -d lowers it in both folds alike. So the R² rows are the measured change
    less what the halves' difference alone would do: that per-prompt shift, estimated as the mean over
    both generators of (B - A), applied to each label-half score, with no leak in it.
    """
    reports = [
        {side: json.loads(Path(f["reports"][half]).read_text()) for side, half in _sides(f).items()} for f in folds
    ]
    scored = [{side: _achieved(r) for side, r in pair.items()} for pair in reports]  # (prompts, (K, P, S))
    diffs = [pair["unseen"][1] - pair["label"][1] for pair in scored]  # (K, P, S), unseen - label
    b_minus_a = [d if f["label_half"] == "A" else -d for d, f in zip(diffs, folds, strict=True)]
    shift = torch.stack([d.mean((0, 2)) for d in b_minus_a]).mean(0)  # (P,): B - A, over both generators

    def r2(prompts: torch.Tensor, achieved: torch.Tensor, half: bool) -> torch.Tensor:
        if not half:
            return alignment_r2(prompts, achieved)
        keep = better_half(prompts, higher_is_better=False)
        return alignment_r2(prompts[keep], achieved[:, keep])

    out: dict[str, dict[str, Any]] = {}
    for name, half in (("r2", False), ("r2_better_half", True)):
        measured, shift_only = [], []
        for f, pair in zip(folds, scored, strict=True):
            (prompts, label), (_, unseen) = pair["label"], pair["unseen"]
            to_unseen = shift if f["label_half"] == "A" else -shift  # the harder or easier half, no leak
            measured.append(r2(prompts, unseen, half) - r2(prompts, label, half))
            shift_only.append(r2(prompts, label + to_unseen[None, :, None], half) - r2(prompts, label, half))
        out[name] = _interval(torch.stack(measured).mean(0) - torch.stack(shift_only).mean(0))
        out[name]["measured"] = _interval(torch.stack(measured).mean(0))
    out["loss_all_prompts"] = _interval(torch.stack([d.mean((1, 2)) for d in diffs]).mean(0))
    per_fold = [_one_step_per_init(p["unseen"]) - _one_step_per_init(p["label"]) for p in reports]
    out["one_step_loss"] = _interval(torch.stack(per_fold).mean(0))
    return out


def _sides(fold_record: dict[str, Any]) -> dict[str, str]:
    label = fold_record["label_half"]
    return {"label": label, "unseen": "B" if label == "A" else "A"}


def _interval(values: torch.Tensor) -> dict[str, Any]:
    return {"mean": float(values.nanmean()), "ci95": list(mean_ci95(values)), "inits": int(values.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for both folds' experiments and leak.json")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the wiring, not the leak")
    parser.add_argument("--summarise", action="store_true", help="only re-read the folds' leak.json and reports")
    args = parser.parse_args()
    quick = ["runs=16", "train.steps=50", "sweep.inits=4", "sweep.recursive=1"] if args.quick else []
    out = Path(args.out)
    if args.summarise:
        folds = json.loads((out / "leak.json").read_text())["folds"]
    else:
        folds = [fold(out, label_half, quick) for label_half in ("A", "B")]
    leak = {}  # fold means of the linear measures (R², quadratic, is in per_init_leak only)
    for key in ("one_step_loss", "one_step_error", "retrieval_one_step"):
        per_fold = [f["scored"][_sides(f)["unseen"]][key] - f["scored"][f["label_half"]][key] for f in folds]
        leak[key] = {"per_fold": per_fold, "mean": sum(per_fold) / len(per_fold)}
    paired = per_init_leak(folds)
    result = {"halves": {h: len(i) for h, i in HALVES.items()}, "folds": folds, "unseen_minus_label": leak}
    result["per_init"] = paired
    (out / "leak.json").write_text(json.dumps(result, indent=2))
    for key, value in leak.items():
        each = ", ".join(f"{v:+.4f}" for v in value["per_fold"])
        print(f"{key}: unseen half - label half = {value['mean']:+.4f} (folds {each})")
    for key, value in paired.items():
        low, high = value["ci95"]
        said = f"{key}, unseen - label over {value['inits']} inits: {value['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
        if "measured" in value:  # R²: less what the halves' difference alone would do
            m, (ml, mh) = value["measured"]["mean"], value["measured"]["ci95"]
            said += f" after the halves' own difference; as measured {m:+.4f} [{ml:+.4f}, {mh:+.4f}]"
        print(said)
    for f in folds:
        print(f"labels on {f['label_half']}: held-out runs' final checkpoints {json.dumps(f['heldout_final'])}")
    print(f"written: {out / 'leak.json'}")


if __name__ == "__main__":
    main()
