"""Side by side: the final metrics, settings and learning curves of several run directories.

:func:`compare_runs` reads each run's ``history.csv``, ``report.json`` and checkpoint (its
objective and CLI settings) into one row; :func:`plot_runs` draws every run's learning curves
(train loss, test ELBO, and the KL term where recorded) in one figure. A file that is not a
run's (a history without an ``epoch`` column, a report that is not a JSON object, a foreign
checkpoint) is a one-line error naming it. :func:`write_comparison` writes the table and the
figure by :func:`ppmodels.rundir.write_artifact`: never over a run's or a sweep's own files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .rundir import CHECKPOINT, REPORT, check_writable, load_checkpoint, read_report, write_csv, write_figure
from .utils import PPModelsError

__all__ = ["compare_runs", "plot_runs", "write_comparison", "read_history", "CURVES"]

#: history columns drawn by :func:`plot_runs`, where a run has them
CURVES = ("train_loss", "test_elbo", "kl")
SETTINGS = ("model", "preset", "objective", "num_particles", "kl_weight", "kl_warmup", "epochs", "batch_size", "lr", "seed")


def read_history(run: str | os.PathLike) -> pd.DataFrame:
    """The ``history.csv`` of the run directory ``run``: a table with a numeric ``epoch``
    column; a one-line error naming the file otherwise."""
    path = Path(run) / "history.csv"
    if not path.is_file():
        raise PPModelsError(f"compare: {run} has no history.csv; is it a run directory?")
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise PPModelsError(f"compare: {path} is not a run's history ({type(e).__name__}: not a readable CSV "
                            "table)") from None
    if "epoch" not in history.columns or not pd.api.types.is_numeric_dtype(history["epoch"]):
        raise PPModelsError(f"compare: {path} is not a run's history (no numeric epoch column); give run "
                            "directories of ppmodels train")
    return history


def _row(run: Path, history: pd.DataFrame) -> dict:
    row: dict = {"run": str(run)}
    if (run / CHECKPOINT).exists():
        ckpt = load_checkpoint(run)
        meta = ckpt.get("meta", {})
        args = meta.get("args", {}) if isinstance(meta, dict) else None
        objective = ckpt.get("objective", {})
        if not isinstance(args, dict) or not isinstance(objective, dict):
            raise PPModelsError(f"compare: {run / CHECKPOINT} is not a run's checkpoint (its meta or objective is "
                                "not a record); give run directories of ppmodels train")
        row.update({k: args[k] for k in SETTINGS if k in args and args[k] not in ("None", None)})
        row["objective"] = objective.get("name", row.get("objective"))
    if len(history):
        row.update({k: v for k, v in history.iloc[-1].items() if k not in ("lr",)})
    if (run / REPORT).exists():
        row.update({k: v for k, v in read_report(run).items() if isinstance(v, (int, float, str))})
    return row


def compare_runs(run_dirs: Sequence[str | os.PathLike],
                 histories: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per run: ``run``, its settings (from the checkpoint), the last history row's
    numbers and the report's figures (``test_nll``, ``active_units``, ...). ``histories``: the
    runs' histories by run, if already read (:func:`read_history`)."""
    if not run_dirs:
        raise PPModelsError("compare: give at least one run directory")
    histories = histories or {str(run): read_history(run) for run in run_dirs}
    return pd.DataFrame([_row(Path(run), histories[str(run)]) for run in run_dirs])


def plot_runs(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike,
              histories: dict[str, pd.DataFrame] | None = None, owner: str = "compare") -> Path:
    """Learning curves of every run against epochs, one panel per recorded curve, written to
    ``path`` (as ``owner``'s file, see :func:`ppmodels.rundir.write_artifact`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = histories or {str(run): read_history(run) for run in run_dirs}
    curves = [c for c in CURVES if any(c in h.columns for h in histories.values())] or ["epoch"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        for name, h in histories.items():
            if curve in h.columns:
                ax.plot(h["epoch"], h[curve], marker=".", label=Path(name).name)
        ax.set_xlabel("epoch")
        ax.set_title(curve.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return write_figure(Path(path), fig, owner=owner, dpi=120)


def write_comparison(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """``ppmodels compare``: the table (``out`` with ``.csv``) and the figure (``out``, a .png),
    each run's files read once; neither written over a file that compare did not write."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PPModelsError(f"compare: --out {out} must end in .png")
    if not out.parent.is_dir():
        raise PPModelsError(f"compare: the folder of --out {out} does not exist; create it first")
    check_writable(out.with_suffix(".csv"), out, owner="compare")
    histories = {str(run): read_history(run) for run in run_dirs}
    table = compare_runs(run_dirs, histories)
    write_csv(out.with_suffix(".csv"), table, owner="compare")
    plot_runs(run_dirs, out, histories)
    return table
