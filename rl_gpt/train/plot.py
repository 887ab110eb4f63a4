"""The figure of a training run: its loss against the step, drawn at every checkpoint."""

from __future__ import annotations

import warnings
from pathlib import Path

from rl_gpt.io import atomic_save_figure

__all__ = ["load_plotting", "plot_training"]


def _running_mean(values: list[float], width: int) -> list[float]:
    """The mean of each value and up to ``width - 1`` before it: a trend through one-batch losses."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def load_plotting() -> None:
    """Import matplotlib (Agg) now: it takes about a second, which a training should spend at its start,
    not inside its first checkpoint, where a SIGTERM could cut the import and leave the module half made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def plot_training(history: list[dict[str, float]], path: str | Path, title: str) -> Path | None:
    """Plot each logged step's loss (one batch: noisy) and its running mean, on a log scale, with the
    x0 error and the function-space term where they were logged; the learning rate on the right axis.

    A failure (a full disk, a broken font cache) is a warning, not an error: the figure is a view of the
    training state, which is saved already. Returns None then."""
    try:
        return _plot_training(history, path, title)
    except Exception as exc:  # noqa: BLE001 - any plotting failure, see above
        warnings.warn(f"{path} not drawn ({type(exc).__name__}: {exc}); the training state is saved", stacklevel=2)
        return None


def _plot_training(history: list[dict[str, float]], path: str | Path, title: str) -> Path:
    load_plotting()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    steps = [h["step"] for h in history]
    width = max(1, len(history) // 20)
    for i, (key, label) in enumerate(
        (("loss", "loss"), ("mse_x0", "x0 error (MSE)"), ("function_loss", "function-space term"))
    ):
        values = [h.get(key) for h in history]
        if any(v is None for v in values) or not values:
            continue
        ax.plot(steps, values, color=f"C{i}", alpha=0.25, lw=0.8)
        trend = f" (running mean of {width})" if width > 1 else ""
        ax.plot(steps, _running_mean(values, width), color=f"C{i}", lw=1.5, label=label + trend)
    if history and all(h.get("loss", 0) > 0 for h in history):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("per-batch value")
    if history and all("lr" in h for h in history):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [h["lr"] for h in history], color="0.5", ls=":", lw=1)
        lr_ax.set_ylabel("learning rate (dotted)", color="0.4")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return atomic_save_figure(fig, path)
