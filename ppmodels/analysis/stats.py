r"""Array functions: streaming first and second moments of gradient replicates, and the
statistics of the estimator-variance study computed from them.

For R replicates :math:`g_r \in \mathbb R^P` with mean :math:`m` and per-coordinate standard
deviation :math:`s`, against a reference gradient :math:`g^*`:

- total variance :math:`\sum_p s_p^2` (the trace of the covariance),
- SNR :math:`\frac1P\sum_p |m_p| / s_p` (Rainforth et al. 2018), with :math:`|m_p|` debiased:
  :math:`\widehat{|E g_p|} = \sqrt{\max(m_p^2 - s_p^2/R,\, 0)}`, since :math:`E[m_p^2] = (E g_p)^2 + \sigma_p^2/R`
  (without it a coordinate whose true gradient is zero shows an SNR floor of about :math:`1/\sqrt R`),
- bias :math:`\|m - g^*\|`, z-scores :math:`(m_p - g^*_p) / (s_p/\sqrt R)` over the coordinates that
  vary across replicates, the number of constant coordinates that differ from :math:`g^*`
  (``constant_mismatch``: a deterministic estimator must be exact), cosine :math:`\cos(m, g^*)`.

The z-scores assume the replicate mean is near-normal (the central limit theorem at R). A
score-function estimator whose discrete latent takes some value with probability well below
1/R violates that: coordinates driven by that value are zero in almost every replicate, and
their z-scores are not meaningful (large z with a small bias norm is the sign).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Moments", "statistics"]


class Moments:
    """Running sums of replicate gradients (float64), one coordinate per column."""

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.sum = torch.zeros(size, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(size, dtype=torch.float64, device=device)

    def update(self, grads: Tensor) -> None:
        """Add a (r, P) block of replicates."""
        g = grads.to(torch.float64)
        self.n += g.shape[0]
        self.sum += g.sum(0)
        self.sumsq += (g * g).sum(0)

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n

    @property
    def var(self) -> Tensor:
        """Unbiased per-coordinate variance."""
        if self.n < 2:
            return torch.full_like(self.sum, float("nan"))
        return ((self.sumsq - self.n * self.mean**2) / (self.n - 1)).clamp_min(0.0)


def statistics(mean: Tensor, var: Tensor, n: int, reference: Tensor | None = None) -> dict[str, float]:
    """The study's statistics for one block of coordinates (see module docstring)."""
    sd = var.sqrt()
    noisy = var > 1e-10 * mean**2  # per coordinate; otherwise constant across replicates (rounding aside)
    noisy &= var > 0
    signal = (mean**2 - var / n).clamp_min(0.0).sqrt()  # debiased |E g|
    snr_terms = signal[noisy] / sd[noisy]
    out = {
        "mean_norm": float(mean.norm()),
        "total_variance": float(var.sum()),
        "snr": float(snr_terms.mean()) if noisy.any() else math.inf,
        "bias_norm": math.nan,
        "max_abs_z": math.nan,
        "constant_mismatch": math.nan,
        "cosine": math.nan,
    }
    if reference is not None:
        ref = reference.to(mean)
        diff = mean - ref
        se = sd / math.sqrt(n)
        scale = torch.maximum(ref.abs().max(), mean.abs().max()) if ref.numel() else ref.new_zeros(())
        exact_match = diff.abs() <= 1e-5 * (1 + scale)
        z = (diff / se.clamp_min(1e-300))[noisy]
        out["bias_norm"] = float(diff.norm())
        out["max_abs_z"] = float(z.abs().max()) if z.numel() else 0.0
        # coordinates equal in every replicate: no z-score; they must equal the reference
        out["constant_mismatch"] = int((~noisy & ~exact_match).sum())
        denom = mean.norm() * ref.norm()
        out["cosine"] = float(mean @ ref / denom) if denom > 0 else math.nan
    return out
