import numpy as np
import pyro
import pytest
import torch
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from ppmodels.fit import fit
from ppmodels.models import GaussianMixture
from ppmodels.objectives import make
from ppmodels.utils import PPModelsError


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.6], [0.6, 0.8]])
    return np.concatenate([rng.multivariate_normal([0, 0], cov, 250), rng.normal([4, 3], 0.5, (150, 2)),
                           rng.normal([-3, 4], [0.3, 1.0], (100, 2))])


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_exact_log_likelihood_equals_sklearn(covariance):
    X = blobs()
    sk = SKGaussianMixture(3, covariance_type=covariance, random_state=0).fit(X)
    gm = GaussianMixture(3, 2, covariance).double()
    gm.set_parameters(sk.weights_, sk.means_, sk.covariances_)
    ours = gm.log_likelihood(torch.tensor(X)).numpy()
    np.testing.assert_allclose(ours, sk.score_samples(X), atol=1e-5)
    np.testing.assert_allclose(gm.responsibilities(torch.tensor(X)).numpy(), sk.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_fitted_log_likelihood_within_one_percent_of_em(covariance):
    X = blobs(1).astype(np.float32)
    sk = SKGaussianMixture(3, covariance_type=covariance, random_state=0, n_init=5).fit(X)
    gm = GaussianMixture(3, 2, covariance, weight_concentration=1.0, loc_scale=1e4, scale_prior=(0.0, 1e4))
    values = gm.fit_map(torch.tensor(X), restarts=16, steps=800)
    assert values.shape == (16,)
    ours = gm.log_likelihood(torch.tensor(X)).sum().item()
    best = sk.score(X) * len(X)
    assert ours > best - 0.01 * abs(best)


def test_pyro_tutorial_map_estimate():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    gm = GaussianMixture(2, 1, "tied")  # shared scale; Dirichlet(0.5), Normal(0, 10), LogNormal(0, 2)
    gm.fit_map(x, restarts=32, steps=600)
    est = gm.point_estimate()
    order = est["locs"][:, 0].argsort(descending=True)
    assert torch.allclose(est["weights"][order], torch.tensor([0.625, 0.375]), atol=0.01)
    assert torch.allclose(est["locs"][order, 0], torch.tensor([10.98, 0.50]), atol=0.02)
    assert est["scales"].item() == pytest.approx(0.651, abs=0.01)
    # the Pyro program's enumerated ELBO with the MAP (delta) guide is exactly the MAP objective
    loss = make("enum").loss(gm.model, gm.guide, x)
    assert loss == pytest.approx(-gm.map_objective(x, est["weights"], est["locs"], est["scales"]).item(), rel=1e-5)


def test_enum_training_and_bayesian_guide_to_arviz():
    import arviz as az

    x = torch.tensor(blobs(2)[:, :1], dtype=torch.float32)
    gm = GaussianMixture(3, 1, "diag", guide="bayes")
    with torch.no_grad():
        gm.locs.copy_(torch.tensor([[-3.0], [0.0], [4.0]]))
    h = fit(gm, x, objective="enum", steps=300, batch_size=len(x), lr=0.05, device="cpu")
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    idata = gm.to_inference_data(500)
    summary = az.summary(idata, kind="stats")
    assert {"mean", "sd"} <= set(summary.columns) and "r_hat" not in summary.columns
    assert len(summary) == 3 + 3 + 3  # weights, locs, scales


def test_assignment_is_enumerated_and_bad_shapes_are_refused():
    x = torch.randn(20, 1)
    gm = GaussianMixture(2, 1)
    trace = pyro.poutine.trace(gm.model).get_trace(x)
    assert trace.nodes["assignment"]["infer"]["enumerate"] == "parallel"
    with pytest.raises(PPModelsError, match=r"GaussianMixture.model: site 'obs' expects a batch of shape \(N, 1\)"):
        make("enum").loss(gm.model, gm.guide, torch.randn(20))


def test_sample_shape():
    gm = GaussianMixture(3, 2, "full")
    assert gm.sample(7).shape == (7, 2)
