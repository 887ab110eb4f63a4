"""``rl-gpt info``: what a folder holds (a dataset, a model, a sweep, generate's output, an experiment
or a folder of experiments), told from the files that mark it. Called by :mod:`rl_gpt.cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["cmd_info"]


def cmd_info(args: argparse.Namespace) -> None:
    """``rl-gpt info PATH``: what a dataset, model, sweep, generate output or experiment folder holds."""
    from rl_gpt.dataset.info import describe
    from rl_gpt.train.info import describe_model

    folder = Path(args.folder)
    if folder.is_file() and folder.name == "report.json":
        print(_sweep_table(folder))
        return
    if folder.is_file() and folder.name in ("spec.json", "model.json"):
        folder = folder.parent  # the file that marks what the folder holds
    if not folder.is_dir():
        what = "a file" if folder.is_file() else "no folder"
        raise FileNotFoundError(
            f"{what} {folder}; give a dataset, a model, a sweep or an experiment folder (out=, or a sweep's --out)"
        )
    if (folder / "model.json").is_file():
        parts = [describe_model(folder)]
    elif (folder / "generated.json").is_file() and not any((folder / n).exists() for n in ("spec.json", *EXPERIMENT)):
        parts = [_generated_lines(folder / "generated.json")]
    elif (folder / "report.json").is_file() and not any((folder / n).exists() for n in ("spec.json", *EXPERIMENT)):
        parts = [_sweep_table(folder)]
    else:  # an experiment folder: its dataset, its model and its sweeps; else the folder as a dataset
        dataset, model = folder / "dataset", folder / "model"
        parts = [describe(dataset, show_spec=args.spec)] if (dataset / "spec.json").is_file() else []
        parts += [describe_model(model)] if (model / "model.json").is_file() else []
        if parts:
            parts += [_sweep_line(p) for p in sorted(folder.glob("report.json")) + sorted(folder.glob("*/report.json"))]
        if not parts and not (folder / "spec.json").exists():
            parts = _experiments_index(folder)
        parts = parts or [describe(folder, show_spec=args.spec)]
    print("\n\n".join(parts))


def _sweep_table(path: Path) -> str:
    """A sweep's table and settings; a report whose fields are not what a sweep writes is one error line."""
    from rl_gpt.sweep.compare import ReportError, load_report
    from rl_gpt.sweep.table import format_table

    try:
        report = load_report(path)
        return format_table(report) + "\n" + _sweep_settings(report)
    except ReportError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as exc:
        raise ReportError(
            f"{path} is not a well-formed sweep report ({type(exc).__name__}: {exc}); rerun `rl-gpt sweep`"
        ) from None


def _experiments_index(folder: Path) -> list[str]:
    """For a folder of experiments (``runs/``): one line each with what it holds; [] if it holds none."""
    lines = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        markers = {
            "dataset": "dataset/spec.json",
            "model": "model/model.json",
            "a dataset": "spec.json",  # a dataset or model folder of its own (dataset=, train's model_dir)
            "a model": "model.json",
        }
        held = [name for name, marker in markers.items() if (child / marker).is_file()]
        sweeps = len(list(child.glob("report.json")) + list(child.glob("*/report.json")))
        held += [f"{sweeps} sweep{'s' * (sweeps != 1)}"] if sweeps else []
        if held:
            lines.append(f"  {child.name:<24} {', '.join(held)}")
    if not lines:
        return []
    what = f"{len(lines)} experiment{'s' * (len(lines) != 1)}"
    return [f"{folder} holds {what}; `rl-gpt info {folder}/NAME` describes one:\n" + "\n".join(lines)]


def _generated_lines(path: Path) -> str:
    """What ``rl-gpt generate`` wrote in a folder: its start, and each target beside what was achieved."""
    from rl_gpt.dataset import DatasetError

    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        name = rec.get("metric", "return")
        model = _recorded_model(rec | {"_path": path}) or rec.get("model")
        lines = [
            f"generated  {rec.get('task')} ({rec.get('env_id')}) by {model}",
            f"start      {rec.get('start')}: {name} {_number(rec.get('start_return'))}",
        ]
        if isinstance(rec.get("target_return"), list):  # several targets: a folder each
            each = rec.get("policies_per_target")
            rows = zip(rec["target_return"], rec["achieved_mean"], rec["folders"], strict=False)
            for target, achieved, folder in rows:
                lines.append(f"target {_number(target):<8} achieved {_number(achieved)} (mean of {each}; {folder}/)")
        else:
            target = _number(rec["target_return"])
            for policy in rec.get("policies", []):
                file = policy.get("file") or "not written: its weights were not finite"
                lines.append(f"target {target:<8} achieved {_number(policy.get('achieved_return'))} ({file})")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a readable generate record ({type(exc).__name__}: {exc})") from None
    return "\n".join(lines)


def _number(value: Any) -> str:
    """A recorded number as info prints it; null (an undefined one, such as a broken network's) as nan."""
    return "nan" if value is None else f"{float(value):.4g}"


EXPERIMENT = ("dataset", "model")  # what makes a folder an experiment's (out=), not a sweep's --out


def _sweep_line(path: Path) -> str:
    """One line on a sweep report found in an experiment folder (the demo's sits in the folder itself)."""
    from rl_gpt.sweep.compare import ReportError, load_report

    try:
        r = load_report(path)
    except ReportError as exc:
        return f"sweep {path}: unreadable ({exc})"
    k, p = len(r["r2_per_init"]), len(r["prompts"])
    one = r.get("one_step", {}).get("mean_return", float("nan"))
    r2 = r.get("prompt_alignment_r2", float("nan"))
    return f"sweep {path}: R2 {r2:.3f}, one-step {one:.4g} ({k} inits x {p} prompts)\n" + _sweep_settings(r)


def _sweep_settings(r: dict) -> str:
    """How a sweep drew and scored its networks, and whether the model it swept has been saved again since."""
    from rl_gpt.io import SAVE_ID
    from rl_gpt.sweep.compare import measurement_settings

    m = measurement_settings(r)
    prompts = [float(v) for v in r["prompts"]]
    text = (
        f"  guidance {m['guidance']}, {m['sampling steps']} sampling steps, mean of {m['average']}, "
        f"rerank {m['rerank']}, {'calibrated' if m['calibrated'] else 'not calibrated'}, prompts "
        f"{min(prompts):.4g} to {max(prompts):.4g}"
    )
    if r.get("model_step") is not None:
        text += f", the model at step {r['model_step']}"
    swept = r.get("model_save_id")
    model = _recorded_model(r)
    if not isinstance(swept, str) or model is None:
        return text
    try:
        now = json.loads((model / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return text
    if isinstance(now, dict) and now.get(SAVE_ID) not in (None, swept):
        step = (now.get("meta") or {}).get("step")
        text += f"\n  {model} has been saved again since (now at step {step}): these numbers are not its; sweep again"
    return text


def _recorded_model(r: dict) -> Path | None:
    """The model folder a report (or generated.json) names, found from where the file is now: by the relative path it
    recorded (a copied or moved experiment finds its own model), else by the absolute one."""
    relative = r.get("model_relative")
    here = Path(r["_path"]).parent
    for folder in (here / relative if isinstance(relative, str) else None, Path(str(r.get("model")))):
        if folder is not None and (folder / "model.json").is_file():
            return folder.resolve()
    return None
