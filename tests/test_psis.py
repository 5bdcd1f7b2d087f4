r"""Per-datapoint PSIS diagnostics (``ppmodels.psis``, ``evaluate.importance_diagnostics``).

The closed-form case: a Gaussian target and a Gaussian proposal of the same mean with
:math:`\sigma_q = \rho\,\sigma_p` give log weights :math:`c + (1 - \rho^2)\,u/2` with
:math:`u = \sum_i (z_i - \mu_i)^2/\sigma_{q,i}^2 \sim \chi^2_d`. With d = 2 latents,
:math:`u/2 \sim \mathrm{Exp}(1)`, so the weights are *exactly* Pareto with shape
:math:`k = 1 - \rho^2`: 0.75 at ρ = 1/2, 0.51 at ρ = 0.7; for ρ > 1 they are bounded (k < 0).
Every datapoint's weights have that law (only c depends on x), so the N datapoints are N
independent replicates of the fit, and the standard error of the mean k-hat is sd/√N.

ArviZ's estimate has a small finite-S bias: on exactly-Pareto(0.75) draws, S = 1000, it reads
0.721 ± 0.004 (0.518 at k = 0.51); its prior pulls k toward 0.5 by 10/(n + 10) with n = 95 tail
draws, -0.024 of it. The closed-form checks allow :data:`BIAS` = 0.05 on top of 4 standard
errors, and check that this tolerance separates the two heavy tails (the power check).
"""

import json
import math

import numpy as np
import pytest
import torch

from ppmodels import evaluate, psis
from ppmodels.models.conjugate import LinearGaussian
from ppmodels.utils import PPModelsError

S, N = 1000, 300
#: allowance for the finite-S bias of ArviZ's k-hat (measured -0.03 at S = 1000; see above)
BIAS = 0.05


def _lg(scale: float, device: str = "cpu") -> tuple[LinearGaussian, torch.Tensor]:
    """The linear-Gaussian model (2 latents, diagonal posterior), its guide at the exact posterior
    mean with ``scale`` times the posterior's standard deviations, and N datapoints."""
    m = LinearGaussian.with_diagonal_posterior(5, 2, seed=0)
    m.set_guide_to_posterior()
    with torch.no_grad():
        m.log_s.add_(math.log(scale))
    return m.to(device), m.sample_data(N, seed=1).to(device)


def _within(khat: np.ndarray, k: float) -> tuple[bool, float, float]:
    """``(mean k-hat within 4 SE + BIAS of k, mean, tolerance)``."""
    mean, se = float(np.mean(khat)), float(np.std(khat) / math.sqrt(len(khat)))
    tol = 4 * se + BIAS
    return abs(mean - k) <= tol, mean, tol


def test_arviz_takes_the_log_weights_themselves_along_the_last_axis():
    """Known heavy tail: w = exp(0.75 E), E ~ Exp(1), is Pareto with k = 0.75. ArviZ reads it so
    from the log weights; from their negation (what a wrong sign convention would pass) it sees
    1/w, bounded, and reads k < 0. Rows are datapoints: the batched call equals row-by-row."""
    rng = np.random.default_rng(0)
    lw = 0.75 * rng.exponential(size=(N, S))
    smoothed, khat = psis.pareto_smooth(lw)
    ok, mean, tol = _within(khat, 0.75)
    assert ok, (mean, tol)
    _, wrong = psis.pareto_smooth(-lw)
    assert np.mean(wrong) < 0 and not _within(wrong, 0.75)[0]
    assert smoothed.shape == (N, S) and khat.shape == (N,)
    np.testing.assert_allclose(np.exp(smoothed).sum(1), 1.0, rtol=1e-9)  # normalized per row
    one, k0 = psis.pareto_smooth(lw[3:4])
    np.testing.assert_allclose(k0, khat[3:4]) and np.testing.assert_allclose(one, smoothed[3:4])


def test_the_threshold_is_sample_size_aware():
    assert psis.khat_threshold(100) == pytest.approx(0.5)
    assert psis.khat_threshold(1000) == pytest.approx(2 / 3)
    assert psis.khat_threshold(10) == pytest.approx(0.0)
    assert psis.khat_threshold(2000) == pytest.approx(1 - 1 / math.log10(2000)) and psis.khat_threshold(2000) < 0.7
    assert psis.khat_threshold(5000) == psis.khat_threshold(10**6) == 0.7
    assert psis.khat_threshold(1) == -math.inf
    values = [psis.khat_threshold(s) for s in (2, 5, 21, 100, 500, 1000, 2154, 10**5)]
    assert values == sorted(values)
    with pytest.raises(PPModelsError, match="num_samples"):
        psis.khat_threshold(0)


def test_flat_and_broken_rows_beside_fitted_ones():
    """A flat row (within FLAT_SPAN) reads -inf, a row with a NaN or +inf or no positive weight
    NaN; the fitted rows beside them read what they read alone."""
    rng = np.random.default_rng(1)
    lw = 0.75 * rng.exponential(size=(5, 200))
    lw[1] = 3.0 + 1e-5 * rng.random(200)
    lw[2, 7] = np.nan
    lw[3, 0] = np.inf
    lw[4] = -np.inf
    smoothed, khat = psis.pareto_smooth(lw)
    alone, k0 = psis.pareto_smooth(lw[:1])
    assert khat[0] == pytest.approx(k0[0]) and np.allclose(smoothed[0], alone[0])
    assert khat[1] == -np.inf and np.allclose(smoothed[1], -math.log(200))
    assert np.isnan(khat[2:]).all() and np.isnan(smoothed[2:]).all()


def test_ess_of_normalized_weights():
    flat = np.full((1, 50), -math.log(50))
    assert psis.effective_sample_size(flat)[0] == pytest.approx(50)
    one = np.log(np.array([[1 - 1e-12] + [1e-12 / 49] * 49]))
    assert psis.effective_sample_size(one)[0] == pytest.approx(1.0)
