"""Plots of a gradient study: variance and SNR against K, log-log, per objective and group."""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["plot_study"]


def plot_study(df: pd.DataFrame, path: str | os.PathLike | None = None, title: str | None = None):
    """One column per parameter group; rows: total variance, SNR, and (when a reference
    exists) bias norm, each against K on log-log axes. Saves a PNG when ``path`` is given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(df["group"]))
    has_bias = df["bias_norm"].notna().any()
    metrics = [("total_variance", "total variance"), ("snr", "SNR")] + ([("bias_norm", "bias ‖E g − g*‖")] if has_bias else [])
    fig, axes = plt.subplots(len(metrics), len(groups), figsize=(4.2 * len(groups), 3.2 * len(metrics)),
                             squeeze=False, sharex=True)
    for j, group in enumerate(groups):
        sub = df[df["group"] == group]
        for i, (col, label) in enumerate(metrics):
            ax = axes[i][j]
            for name, rows in sub.groupby("objective", sort=False):
                rows = rows.sort_values("num_particles")
                y = rows[col].where(rows[col] > 0)
                ax.plot(rows["num_particles"], y, marker="o", label=name)
            ax.set_xscale("log")
            if sub[col].gt(0).any():
                ax.set_yscale("log")
            ax.set_title(f"{group}: {label}", fontsize=10)
            if i == len(metrics) - 1:
                ax.set_xlabel("K (particles)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
