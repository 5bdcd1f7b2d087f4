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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_khat_matches_the_closed_form_tails(device):
    """ρ = 1/2 and ρ = 0.7 give k = 0.75 and 0.51: each within its tolerance, and the tolerance
    is less than half their gap, so either check would reject the other's tail (power).
    The log weights' negation fails the check (sign). ρ = 1.5: bounded weights, k-hat < 0.
    The exact posterior: flat weights, k-hat = -inf, log p(x) exact, ESS = S."""
    results = {}
    for rho, k in ((0.5, 0.75), (0.7, 0.51)):
        m, x = _lg(rho, device)
        torch.manual_seed(0)
        table = evaluate.importance_diagnostics(m, x, S)
        ok, mean, tol = _within(table["khat"].to_numpy(), k)
        assert ok, (rho, mean, tol)
        assert tol < (0.75 - 0.51) / 2  # the check can tell the two tails apart
        results[rho] = table
        exact = m.log_marginal(x).detach().cpu().numpy()
        gap = exact - table["log_lik"].to_numpy()  # IS is unbiased in p, so log p-hat is low on average
        assert abs(gap.mean()) < 5 * gap.std() / math.sqrt(N) + 0.05
    assert results[0.5]["khat"].mean() > results[0.7]["khat"].mean() + 0.1
    assert (1 <= results[0.5]["ess"]).all() and (results[0.5]["ess"] < results[0.7]["ess"].median()).mean() > 0.5

    m, x = _lg(1.5, device)
    torch.manual_seed(0)
    bounded = evaluate.importance_diagnostics(m, x, S)["khat"].to_numpy()
    assert np.isfinite(bounded).all() and bounded.mean() < 0 and (bounded < psis.khat_threshold(S)).all()

    m, x = _lg(1.0, device)
    torch.manual_seed(0)
    table = evaluate.importance_diagnostics(m, x, S)
    assert (table["khat"] == -np.inf).all()
    np.testing.assert_allclose(table["log_lik"], m.log_marginal(x).detach().cpu().numpy(), atol=1e-3)
    np.testing.assert_allclose(table["ess"], S, rtol=1e-6)


def test_a_single_datapoint_agrees_with_pyros_psis_diagnostic():
    """With one datapoint the whole model's weights are that datapoint's: Pyro's k-hat, drawn
    under the same seed (the draws are shared: one vectorized particle plate), is ours."""
    from pyro.infer.importance import psis_diagnostic

    m, x = _lg(0.5)
    ours, theirs = [], []
    for seed in range(8):
        torch.manual_seed(seed)
        theirs.append(psis_diagnostic(m.model, m.guide, x[:1], num_particles=S, max_plate_nesting=1))
        torch.manual_seed(seed)
        ours.append(float(evaluate.importance_diagnostics(m, x[:1], S)["khat"].iloc[0]))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.std(ours) > 0.02  # eight different draws, not one number


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


def test_the_summary_counts_unfitted_rows_as_unreliable():
    khat = np.array([0.1, 0.5, 0.69, 0.71, np.inf, np.nan, -np.inf, 0.3])
    log_lik = -np.arange(1.0, 9.0)
    out = psis.summarize(khat, log_lik, 5000)  # threshold 0.7
    assert out["khat_threshold"] == 0.7 and out["num_data"] == 8 and out["num_reliable"] == 5
    assert out["frac_above_threshold"] == pytest.approx(3 / 8)
    assert out["nll"] == pytest.approx(4.5)
    assert out["nll_reliable"] == pytest.approx(np.mean([1, 2, 3, 7, 8]))
    assert psis.summarize(np.array([0.9]), np.array([-1.0]), 5000)["nll_reliable"] is None
    assert evaluate.importance_summary(__import__("pandas").DataFrame({"khat": khat, "log_lik": log_lik}),
                                       num_samples=5000) == out


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


def test_a_batch_holds_all_draws_of_its_rows_within_the_budget(monkeypatch):
    """All S log weights of a row go to ArviZ at once, (B, S), with B from the budget."""
    shapes = []
    smooth = psis.pareto_smooth
    monkeypatch.setattr(psis, "pareto_smooth", lambda lw: (shapes.append(lw.shape), smooth(lw))[1])
    m, x = _lg(0.5)
    x = x[:150]
    budget = evaluate.WEIGHT_BYTES_PER_DRAW * S * 50
    torch.manual_seed(0)
    small = evaluate.importance_diagnostics(m, x, S, budget=budget)
    assert {s[1] for s in shapes} == {S} and max(s[0] for s in shapes) == 50 and sum(s[0] for s in shapes) == len(x)
    shapes.clear()
    torch.manual_seed(0)
    chunked = evaluate.importance_diagnostics(m, x, S, batch_size=75, particle_chunk=400)
    assert [s[0] for s in shapes] == [75, 75] and len(chunked) == len(x)
    d = small["khat"].to_numpy() - chunked["khat"].to_numpy()  # other draws, the same law
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(x))


def test_too_few_draws_for_a_fit_is_one_line():
    m, x = _lg(0.5)
    with pytest.raises(PPModelsError, match="at least 21"):
        evaluate.importance_diagnostics(m, x, 20)
    with pytest.raises(PPModelsError, match="batch_size"):
        evaluate.importance_diagnostics(m, x, 100, batch_size=0)


def test_importance_nll_records_the_fraction_above_the_threshold():
    from ppmodels.callbacks import ImportanceNLL
    from ppmodels.fit import fit

    m, x = _lg(0.5)
    history = fit(m, x[:100], epochs=2, batch_size=50, device="cpu", lr=1e-3,
                  callbacks=[ImportanceNLL(x[:100], [1, 2], num_samples=200)])
    assert history["khat_above"].between(0, 1).all() and history["test_nll"].notna().all()
    history = fit(m, x[:40], epochs=1, batch_size=20, device="cpu",
                  callbacks=[ImportanceNLL(x[:40], [1], num_samples=8)])  # too few draws: no column
    assert "khat_above" not in history and history["test_nll"].notna().all()


def test_importance_nll_diagnostics_split_the_rows_across_ranks(monkeypatch):
    """Rank 1 of 2 (its all-reduce the identity): its block's NLL, and its block's count of rows
    above the threshold over all rows (what the sum over ranks divides)."""
    from ppmodels import distributed
    from ppmodels.callbacks import FitState, ImportanceNLL
    from ppmodels.data import TensorData

    group = distributed.Group(1, 2)
    monkeypatch.setattr(group, "sum", lambda values, device: [float(v) for v in values])
    m, x = _lg(0.5)
    data = TensorData(x[:40])
    state = FitState(model=m, objective=None, optimizer=None, params={}, total_steps=1, steps_per_epoch=1, group=group)
    torch.manual_seed(5)
    ImportanceNLL(data, [1], num_samples=300, seed=3).on_epoch_end(state)
    torch.manual_seed(5)
    block = evaluate.importance_diagnostics(m, data.subset(slice(20, 40)), 300)
    assert state.row["test_nll"] == pytest.approx(-block["log_lik"].mean(), abs=1e-6)
    above = (~(block["khat"] <= psis.khat_threshold(300))).sum()
    assert state.row["khat_above"] == pytest.approx(above / 40)


def test_evaluate_diagnostics_writes_its_key_and_figure(fake_mnist, tmp_path, capsys):
    from ppmodels.cli import main

    out_dir = tmp_path / "run"
    tiny = ["--epochs", "1", "--train-subset", "100", "--batch-size", "50", "--hidden", "16", "--z-dim", "2",
            "--quiet", "--num-samples", "5", "--eval-subset", "5", "--device", "cpu"]
    assert main(["train", "vae", "--out", str(out_dir), *tiny]) == 0
    before = json.loads((out_dir / "report.json").read_text())
    capsys.readouterr()
    evaluate_ = ["evaluate", str(out_dir), "--num-samples", "40", "--subset", "12", "--device", "cpu", "--diagnostics"]
    assert main(evaluate_) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)["importance_diagnostics"]
    assert printed["num_data"] == 12 and printed["khat_threshold"] == pytest.approx(1 - 1 / math.log10(40))
    assert 0 <= printed["frac_above_threshold"] <= 1 and "khat.png" in err
    report = json.loads((out_dir / "report.json").read_text())
    assert {k: v for k, v in report.items() if k != "importance_diagnostics"} == before  # nothing else touched
    assert report["importance_diagnostics"]["checkpoint.pt"]["figure"] == "khat.png"
    assert (out_dir / "khat.png").stat().st_size > 0
    assert main(evaluate_) == 0  # its own figure: replaced
    import shutil

    shutil.copyfile(out_dir / "checkpoint.pt", out_dir / "checkpoint-epoch1.pt")  # as a kept checkpoint
    assert main([evaluate_[0], str(out_dir / "checkpoint-epoch1.pt"), *evaluate_[2:]]) == 0
    capsys.readouterr()
    entries = json.loads((out_dir / "report.json").read_text())["importance_diagnostics"]
    assert set(entries) == {"checkpoint.pt", "checkpoint-epoch1.pt"}
    assert entries["checkpoint-epoch1.pt"]["figure"] == "khat-checkpoint-epoch1.png"
    assert (out_dir / "khat-checkpoint-epoch1.png").exists()

    (out_dir / "khat.png").rename(out_dir / "kept.png")
    (out_dir / "khat.png").write_bytes(b"someone else's")
    report.pop("importance_diagnostics")
    (out_dir / "report.json").write_text(json.dumps(report))
    for args, message in ((evaluate_, "was not written by evaluate --diagnostics"),
                          ([*evaluate_[:3], "20", *evaluate_[4:]], "at least 21")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert (out_dir / "khat.png").read_bytes() == b"someone else's"
    (out_dir / "report.json").unlink()
    (out_dir / "khat.png").unlink()
    assert main(evaluate_) == 2 and "has no report.json" in capsys.readouterr().err
