r"""Pareto-smoothed importance sampling (PSIS) diagnostics of per-datapoint importance weights.

For one datapoint, S log weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s \mid x)` with
:math:`z_s \sim q`. ArviZ's :func:`arviz.psislw` fits a generalized Pareto distribution to the
largest :math:`\lceil\min(S/5, 3\sqrt S)\rceil` weights; its shape :math:`\hat k` says how
heavy the weights' tail is: the importance-sampled :math:`\log\hat p(x)` is reliable for
:math:`\hat k` up to :func:`khat_threshold` (Vehtari et al., *Pareto smoothed importance
sampling*, JMLR 25(72), 2024). ``psislw`` takes the log weights themselves (log importance
ratios, as ``loo::psis`` does; PSIS-LOO passes minus the log-likelihood because its ratios are
:math:`1/p(y_i \mid \theta)`), smooths along the last axis, and returns the smoothed,
normalized log weights and :math:`\hat k` per row. ``tests/test_psis.py`` checks that
convention on weights with a known Pareto tail.

The effective sample size is :math:`1/\sum_s \tilde w_s^2` of the normalized *smoothed*
weights: it is the one the paper reports for the PSIS estimate; with :math:`k \ge 1/2` the raw
weights' :math:`\sum w^2` has infinite variance, so their ESS is itself unstable and tends to
overstate. Where no tail fit is made (:math:`\hat k = \infty`, too few draws), the smoothed
weights are the raw ones. An ESS is only as credible as its :math:`\hat k`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .utils import PPModelsError

__all__ = ["khat_threshold", "pareto_smooth", "effective_sample_size", "summarize", "plot_khat", "MIN_DRAWS",
           "FLAT_SPAN"]

#: The fewest draws a Pareto fit is made from: ArviZ fits the ceil(min(S/5, 3 sqrt S)) largest
#: weights and needs at least 5 (with fewer it returns k = inf).
MIN_DRAWS = 21
#: Log weights of one datapoint that all lie within this many nats of each other are flat: the
#: estimate is exact to that, whatever their tail, and k-hat is -inf (a guide at the exact
#: posterior gives weights equal up to rounding, which a Pareto fit would read as a tail).
FLAT_SPAN = 1e-3


def khat_threshold(num_samples: int) -> float:
    r"""The sample-size aware bound :math:`\min(1 - 1/\log_{10} S,\ 0.7)` (Vehtari et al. 2024,
    Sec. 3): above it, S draws are too few for a reliable estimate at that tail. 0.7 from
    S = 2154 on; 0.5 at S = 100; not above 0 for S <= 10 (-inf at S = 1)."""
    if num_samples < 1:
        raise PPModelsError(f"khat_threshold: num_samples must be >= 1, got {num_samples}")
    if num_samples == 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _psislw() -> Any:
    import arviz

    fn = getattr(arviz, "psislw", None)
    if fn is None:
        raise PPModelsError(f"arviz {getattr(arviz, '__version__', '?')} has no psislw; install arviz<1 "
                            "(pip install 'arviz>=0.20,<1')")
    return fn


def pareto_smooth(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""``(smoothed log weights, khat)`` for (B, S) raw log weights, one datapoint a row: the
    smoothed log weights normalized per row (their exponentials sum to 1), shape (B, S), and
    :math:`\hat k`, shape (B,), from :func:`arviz.psislw` (relative efficiency 1: independent
    draws). Rows whose S log weights lie within :data:`FLAT_SPAN` of each other (a guide at the
    exact posterior, up to rounding) have :math:`\hat k = -\infty`: bounded weights, not fitted
    (ArviZ would fit the rounding, or find no tail and say inf); rows with a NaN or +inf, or no
    positive weight, get NaN."""
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2 or lw.shape[1] < 1:
        raise PPModelsError(f"pareto_smooth: expected (datapoints, draws) log weights, got shape {lw.shape}")
    bad = np.isnan(lw).any(1) | np.isposinf(lw).any(1) | np.isneginf(lw).all(1)
    with np.errstate(invalid="ignore"):  # inf - inf in the rows already marked bad
        flat = ~bad & (lw.max(1) - lw.min(1) <= FLAT_SPAN)
    fit = ~bad & ~flat
    if fit.all():  # the usual case: no copy of the rows
        smoothed, khat = _psislw()(lw, reff=1.0)  # smooths the last axis, normalizes
        return smoothed, np.asarray(khat, dtype=np.float64)
    smoothed = np.full_like(lw, np.nan)
    khat = np.full(len(lw), np.nan)
    smoothed[flat] = -math.log(lw.shape[1])
    khat[flat] = -np.inf
    if fit.any():
        smoothed[fit], khat[fit] = _psislw()(lw[fit], reff=1.0)  # smooths the last axis, normalizes
    return smoothed, khat


def effective_sample_size(normalized_log_weights: np.ndarray) -> np.ndarray:
    r""":math:`1/\sum_s \tilde w_s^2` per row of normalized log weights (B, S): between 1 and S."""
    lw = np.asarray(normalized_log_weights, dtype=np.float64)
    top = lw.max(1, keepdims=True)
    return np.exp(-2 * top[:, 0] - np.log(np.exp(2 * (lw - top)).sum(1)))


def summarize(khat: np.ndarray, log_lik: np.ndarray, num_samples: int) -> dict[str, Any]:
    r"""The summary of a diagnostics table: draws, threshold, the fraction of datapoints whose
    :math:`\hat k` is above it (NaN counts as above), the NLL (nats per datapoint) over all
    datapoints and over the reliable ones (None if none is), the median and largest
    :math:`\hat k`."""
    khat, log_lik = np.asarray(khat, dtype=np.float64), np.asarray(log_lik, dtype=np.float64)
    threshold = khat_threshold(num_samples)
    reliable = khat <= threshold
    finite = khat[~np.isnan(khat)]
    return {
        "num_data": int(len(khat)),
        "num_samples": int(num_samples),
        "khat_threshold": threshold,
        "frac_above_threshold": float(1.0 - reliable.mean()) if len(khat) else float("nan"),
        "nll": float(-log_lik.mean()) if len(khat) else float("nan"),
        "nll_reliable": float(-log_lik[reliable].mean()) if reliable.any() else None,
        "num_reliable": int(reliable.sum()),
        "khat_median": float(np.median(finite)) if len(finite) else float("nan"),
        "khat_max": float(finite.max()) if len(finite) else float("nan"),
    }


def plot_khat(khat: np.ndarray, num_samples: int, path: str | Path, title: str = "") -> Path:
    r"""A histogram of the finite :math:`\hat k` with the threshold marked, as a PNG at ``path``
    (written through a temporary file and one rename)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    khat = np.asarray(khat, dtype=np.float64)
    threshold = khat_threshold(num_samples)
    shown = khat[np.isfinite(khat)]
    above = float(np.mean(~(khat <= threshold))) if len(khat) else float("nan")
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    ax.hist(shown, bins=min(60, max(20, int(2 * np.sqrt(len(shown))))), color="0.6")
    ax.axvline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:.3g} (S = {num_samples})")
    hidden = len(khat) - len(shown)
    ax.set_xlabel(r"Pareto $\hat k$ per datapoint" + (f" ({hidden} not finite, not shown)" if hidden else ""))
    ax.set_ylabel("datapoints")
    ax.set_title(title or f"{above:.1%} of {len(khat)} datapoints above the threshold", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .rundir import write_figure

    return write_figure(Path(path), fig, dpi=120)
