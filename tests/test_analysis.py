import math

import pyro
import pytest
import torch

from ppmodels.analysis import COLUMNS, gradient_study, parameter_groups, plot_study, replicate_gradients
from ppmodels.analysis.replicates import _jacobian, _repeat
from ppmodels.cli import main
from ppmodels.models.conjugate import CategoricalGaussian, LinearGaussian
from ppmodels.objectives import Elbo, make


@pytest.fixture(scope="module")
def lg():
    m = LinearGaussian(5, 2, seed=0)
    return m, m.sample_data(4, seed=1)


def test_parameter_groups_split_decoder_and_encoder(lg):
    m, x = lg
    groups = parameter_groups(m.model, m.guide, x)
    assert {id(p) for p in groups["model"]} == {id(p) for p in m.model_parameters()}
    assert {id(p) for p in groups["guide"]} == {id(p) for p in m.guide_parameters()}


def test_parameters_by_name_or_group(lg):
    m, x = lg
    df = gradient_study(m.model, m.guide, x, objectives=["elbo"], num_particles=[1], replicates=50,
                        params={"decoder": ["W", "b"], "noise": [m.log_psi]}, device="cpu")
    assert list(df["group"]) == ["decoder", "noise"] and df.attrs["groups"] == {"decoder": 15, "noise": 5}
    df = gradient_study(m.model, m.guide, x, objectives=["elbo"], num_particles=[1], replicates=50,
                        params=["A"], device="cpu")
    assert list(df["group"]) == ["A"]
    from ppmodels.utils import PPModelsError

    with pytest.raises(PPModelsError, match="no parameter named 'nope'"):
        gradient_study(m.model, m.guide, x, objectives=["elbo"], num_particles=[1], replicates=5, params=["nope"])


def test_study_table_and_unbiasedness_on_linear_gaussian(lg, tmp_path):
    m, x = lg
    df = gradient_study(m.model, m.guide, x, objectives=["elbo", "meanfield", "stl", "iwae", "dreg"],
                        num_particles=[1, 4], replicates=1500, device="cpu", seed=3)
    assert list(df.columns) == COLUMNS
    assert len(df) == 5 * 2 * 2
    assert {"model", "seed", "device", "replicates", "versions"} <= set(df.attrs)
    known = df[df["reference"] == "exact (closed form)"]
    # every estimator with a closed-form target: unbiased within 5 standard errors per coordinate
    assert len(known) == 2 * (3 * 2 + 2)
    assert (known["max_abs_z"] < 5).all(), known[["objective", "num_particles", "group", "max_abs_z"]]
    assert (known["constant_mismatch"] == 0).all()
    assert (known["cosine"] > 0.99).all()
    # no closed form for IWAE/DReG at K = 4 here: no bias figures, but variance and SNR
    unknown = df[df["reference"] != "exact (closed form)"]
    assert unknown["bias_norm"].isna().all() and (unknown["total_variance"] > 0).all()
    # DReG's guide gradient has less variance than IWAE's at K = 4
    v = df.set_index(["objective", "num_particles", "group"])["total_variance"]
    assert v["dreg", 4, "guide"] < v["iwae", 4, "guide"]
    plot_study(df, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


class MislabelledElbo(Elbo):
    """The ELBO gradient presented as the IWAE gradient: the study must flag its bias."""

    name = "iwae"

    @property
    def bound(self):  # claims the IWAE bound, so it is held to the IWAE gradient
        return ("renyi", 0.0, self.num_particles)


def test_study_detects_a_biased_estimator():
    m = CategoricalGaussian(3, 2, seed=0)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1)) * 2
    df = gradient_study(m.model, m.guide, x, objectives=[MislabelledElbo(3), make("iwae", num_particles=3)],
                        num_particles=[3], replicates=1500, device="cpu")
    assert (df["reference"] == "exact (closed form)").all()
    assert df["max_abs_z"].iloc[:2].max() > 5  # the mislabelled ELBO gradient
    assert df["max_abs_z"].iloc[2:].max() < 5  # the real IWAE gradient


def test_study_flags_a_deterministic_biased_estimator():
    """A zero-variance estimator that is wrong (Pyro's RenyiELBO(alpha=0) guide gradient at a
    discrete site is exactly 0) cannot hide behind its zero variance."""
    from ppmodels.objectives import Iwae

    class DropsScoreTerm(Iwae):  # the pathwise part only: zero guide gradient at discrete sites
        def surrogate_terms(self, model, guide, *args, **kwargs):
            bound, _ = super().surrogate_terms(model, guide, *args, **kwargs)
            return bound, bound

    m = CategoricalGaussian(3, 2, seed=0)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1)) * 2
    df = gradient_study(m.model, m.guide, x, objectives=[DropsScoreTerm(3)], num_particles=[3], replicates=300,
                        device="cpu")
    guide_row = df[df["group"] == "guide"].iloc[0]
    assert guide_row["constant_mismatch"] > 0 or guide_row["max_abs_z"] > 5


def test_reference_by_high_replicate_estimate(lg):
    m, x = lg
    df = gradient_study(m.model, m.guide, x, objectives=["dreg"], num_particles=[3], replicates=500,
                        exact=make("iwae", num_particles=3), reference_replicates=4000, device="cpu")
    assert df["reference"].str.startswith("estimate: Iwae(num_particles=3), R=4000").all()
    assert (df["max_abs_z"] < 6).all()  # the reference has its own noise (R = 4000)


@pytest.mark.parametrize("name,K", [("elbo", 1), ("iwae", 5), ("dreg", 5), ("vimco", 3)])
def test_vectorized_and_looped_replicates_give_the_same_statistics(name, K):
    m = CategoricalGaussian(3, 2, seed=0) if name == "vimco" else LinearGaussian(5, 2, seed=0)
    x = torch.randn(3, 2) if name == "vimco" else m.sample_data(4, seed=1)
    params = m.model_parameters() + m.guide_parameters()
    R = 1000
    a, _ = replicate_gradients(make(name, num_particles=K), m, (x,), params, R, seed=4)
    b, _ = replicate_gradients(make(name, num_particles=K), m, (x,), params, R, seed=4, vectorize=False)
    z = (a.mean(0) - b.mean(0)) / ((a.var(0) + b.var(0)) / R).sqrt()
    assert z.abs().max() < 5
    ratio = a.var(0).sum() / b.var(0).sum()
    assert 0.85 < ratio < 1.18


def test_both_batched_jacobians_equal_the_rows_one_by_one(lg):
    m, x = lg
    params = m.model_parameters() + m.guide_parameters()
    pyro.set_rng_seed(0)
    _, s = make("iwae", num_particles=3).surrogate_terms(m.model, m.guide, *_repeat((x,), 6))
    S = -s.reshape(6, -1).sum(1)
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(S[r], params, retain_graph=True)])
                        for r in range(6)])
    for method in ("double_backward", "rows"):
        assert torch.allclose(_jacobian(S, params, method), rows, atol=1e-4), method


def test_variance_cli(tmp_path, capsys):
    code = main(["variance", "--model", "categorical-gaussian", "--objectives", "reinforce:baseline=none,vimco,enum",
                 "--num-particles", "1,3", "--replicates", "200", "--batch-size", "3", "--out", str(tmp_path),
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "study.csv").exists() and (tmp_path / "study.png").exists()
    assert "reinforce[baseline=none]" in out and "skipped: vimco K=1" in out


@pytest.mark.parametrize("name,K", [("elbo", 1), ("iwae", 3), ("dreg", 3)])
def test_linear_layer_per_replicate_gradients_equal_the_rows(name, K):
    """For large networks replicate gradients come from per-layer inputs and output gradients;
    on the same draws they equal the per-replicate rows of autograd, exactly."""
    from ppmodels.models import VAE

    torch.manual_seed(0)
    vae = VAE(784, 8, (16,), "tanh")
    x = torch.bernoulli(torch.rand(3, 784) * 0.3)
    params = list(vae.parameters())
    assert sum(p.numel() for p in params) > 10_000  # the linear-layer path
    R = 5
    fast, _ = replicate_gradients(make(name, num_particles=K), vae, (x,), params, R, seed=2)
    pyro.set_rng_seed(2)
    _, s = make(name, num_particles=K).surrogate_terms(vae.model, vae.guide, *_repeat((x,), R))
    rows = _jacobian(-s.reshape(R, -1).sum(1), params, "rows")
    assert torch.allclose(fast, rows, rtol=1e-4, atol=1e-5)


def test_snr_is_debiased_for_zero_mean_coordinates():
    from ppmodels.analysis import Moments, statistics

    g = torch.Generator().manual_seed(0)
    R, P = 200, 2000
    zero = torch.randn(R, P, generator=g)  # E g = 0: true SNR 0
    one = 1.0 + torch.randn(R, P, generator=g)  # true SNR 1
    for samples, truth, tol in ((zero, 0.0, 0.03), (one, 1.0, 0.05)):
        m = Moments(P)
        m.update(samples)
        snr = statistics(m.mean, m.var, m.n)["snr"]
        assert abs(snr - truth) < tol, (truth, snr)
    # without the correction a zero-mean coordinate would show about sqrt(2 / pi) / sqrt(R) = 0.056
