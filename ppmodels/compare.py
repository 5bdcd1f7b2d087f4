"""Side by side: the final metrics, settings and learning curves of several run directories.

:func:`compare_runs` reads each run's ``history.csv``, ``report.json`` and checkpoint (its
objective and CLI settings) into one row; :func:`plot_runs` draws every run's learning curves
(train loss, test ELBO, and the KL term where recorded) in one figure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .rundir import CHECKPOINT, load_checkpoint
from .utils import PPModelsError

__all__ = ["compare_runs", "plot_runs", "CURVES"]

#: history columns drawn by :func:`plot_runs`, where a run has them
CURVES = ("train_loss", "test_elbo", "kl")
SETTINGS = ("model", "preset", "objective", "num_particles", "kl_weight", "kl_warmup", "epochs", "batch_size", "lr", "seed")


def _history(run: Path) -> pd.DataFrame:
    path = run / "history.csv"
    if not path.exists():
        raise PPModelsError(f"compare: {run} has no history.csv; is it a run directory?")
    return pd.read_csv(path)


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: ``run``, its settings (from the checkpoint), the last history row's
    numbers and the report's figures (``test_nll``, ``active_units``, ...)."""
    if not run_dirs:
        raise PPModelsError("compare: give at least one run directory")
    rows = []
    for run in map(Path, run_dirs):
        history = _history(run)
        row: dict = {"run": str(run)}
        if (run / CHECKPOINT).exists():
            ckpt = load_checkpoint(run)
            args = ckpt.get("meta", {}).get("args", {})
            row.update({k: args[k] for k in SETTINGS if k in args and args[k] not in ("None", None)})
            row["objective"] = ckpt.get("objective", {}).get("name", row.get("objective"))
        if len(history):
            row.update({k: v for k, v in history.iloc[-1].items() if k not in ("lr",)})
        report = run / "report.json"
        if report.exists():
            row.update({k: v for k, v in json.loads(report.read_text()).items() if isinstance(v, (int, float, str))})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_runs(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Learning curves of every run against epochs, one panel per recorded curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {str(run): _history(Path(run)) for run in run_dirs}
    curves = [c for c in CURVES if any(c in h.columns for h in histories.values())]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        for name, h in histories.items():
            if curve in h.columns:
                ax.plot(h["epoch"], h[curve], marker=".", label=Path(name).name)
        ax.set_xlabel("epoch")
        ax.set_title(curve.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
