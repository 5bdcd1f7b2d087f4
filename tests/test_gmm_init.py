"""GaussianMixture starts from the data (k-means++ then Lloyd, as scikit-learn's
``init_params="kmeans"``) on the first ``fit`` of a fresh model, so that ``fit`` reaches EM's
optimum from every seed (issue 22)."""

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from ppmodels.fit import fit
from ppmodels.models import GaussianMixture
from ppmodels.models.mixture import COVARIANCES

SEEDS = range(8)
STEPS = 25  # from the data's k-means partition the MAP fit is within 0.003% of EM after these
MEANS = np.array([[0.0, 0.0], [8.0, 2.0], [3.0, 9.0]])


def clusters(seed=0):
    """Three well-separated 2-D clusters, 200 points each."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(MEANS[0], 1.0, (200, 2)), rng.normal(MEANS[1], [1.5, 0.8], (200, 2)),
                           rng.normal(MEANS[2], 1.2, (200, 2))]).astype(np.float32)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors of 600 x 3 x 2: a second thread only waits (and, on a busy machine, a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X = clusters()
x = torch.tensor(X)


def em_log_likelihood(covariance):
    sk = SKGaussianMixture(n_components=3, covariance_type=covariance, random_state=0).fit(X)
    return sk.score(X) * len(X)


def gap(gm, best):
    """How much worse than EM's optimum ``best`` the model's exact data log-likelihood is."""
    ours = gm.log_likelihood(x).sum().item()
    return (best - ours) / abs(best)


def fitted(covariance, seed, steps=STEPS, locs=None, **kw):
    torch.manual_seed(seed)
    gm = GaussianMixture(3, 2, covariance, **kw)
    if locs is not None:
        with torch.no_grad():
            gm.locs.copy_(locs())
    fit(gm, x, steps=steps, lr=0.05, batch_size=len(x), seed=seed, device="cpu", progress=False)
    return gm


@pytest.mark.parametrize("covariance", COVARIANCES)  # our names are scikit-learn's
def test_fit_reaches_em_optimum_from_every_seed(covariance):
    best = em_log_likelihood(covariance)
    gaps = {seed: gap(fitted(covariance, seed), best) for seed in SEEDS}
    assert max(gaps.values()) < 0.01, gaps


def test_power_check_the_old_random_init_misses_for_some_seed():
    """locs = randn(K, D), what the constructor draws, kept (set by hand, the model is not
    fresh): under the settings above some seed misses the 1% bound; trained 20 times longer,
    it still ends in a worse local optimum."""
    best = em_log_likelihood("full")
    randn = lambda: torch.randn(3, 2)  # noqa: E731
    assert any(gap(fitted("full", seed, locs=randn), best) > 0.01 for seed in SEEDS)
    assert any(gap(fitted("full", seed, steps=20 * STEPS, locs=randn), best) > 0.01 for seed in SEEDS)


def test_the_initialisation_is_the_data_s_clusters():
    gm = GaussianMixture(3, 2, "full")
    assert gm.init_from_data(x, torch.Generator().manual_seed(0))
    est = gm.point_estimate()
    order = est["locs"][:, 0].argsort()  # the clusters' first coordinates: 0, 3, 8
    assert torch.allclose(est["locs"][order], torch.tensor(MEANS[[0, 2, 1]], dtype=torch.float32), atol=0.25)
    assert torch.allclose(est["weights"], torch.full((3,), 1 / 3), atol=0.01)
    assert gap(gm, em_log_likelihood("full")) < 1e-3  # before any training step


def test_only_a_fresh_model_is_initialised():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    gm = GaussianMixture(3, 2, "tied")
    assert gm.is_fresh() and gm.double().is_fresh()
    gm.float()
    assert gm.init_from_data(x, g()) and not gm.is_fresh()
    assert not gm.init_from_data(x, g())  # once
    assert gm.init_from_data(x, g(), force=True)
    other = GaussianMixture(3, 2, "tied")
    other.load_state_dict(gm.state_dict())
    assert not other.is_fresh()
    # locations set by hand are kept by fit (one Adam step of lr 0.05 moves them by at most 0.05)
    mine = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    gm = GaussianMixture(3, 2, "diag")
    with torch.no_grad():
        gm.locs.copy_(mine)
    fit(gm, x, steps=1, lr=0.05, batch_size=len(x), device="cpu", progress=False)
    assert (gm.locs.detach() - mine).abs().max() <= 0.05 + 1e-6
    # a second fit continues from the first one's parameters
    gm = fitted("diag", 0, steps=5)
    before = gm.locs.detach().clone()
    assert not gm.init_from_data(x, g())
    fit(gm, x, steps=1, lr=1e-4, batch_size=len(x), device="cpu", progress=False)
    assert (gm.locs.detach() - before).abs().max() <= 2e-4  # one step of 1e-4 (float32 rounding)


def test_deterministic_given_fit_seed_and_the_global_rng_untouched():
    a, b = GaussianMixture(3, 2, "full"), GaussianMixture(3, 2, "full")  # different constructor draws
    state = torch.get_rng_state()
    a.init_from_data(x, torch.Generator().manual_seed(4))
    b.init_from_data(x, torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    a, b = fitted("spherical", 1, steps=3), fitted("spherical", 1, steps=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_resume_restores_and_does_not_initialise_again(tmp_path, monkeypatch):
    calls = []
    original = GaussianMixture.init_from_data

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GaussianMixture, "init_from_data", spy)
    settings = dict(lr=0.05, batch_size=len(x), seed=2, device="cpu", progress=False)  # one step an epoch
    whole = GaussianMixture(3, 2, "full")
    fit(whole, x, steps=6, **settings)
    fit(GaussianMixture(3, 2, "full"), x, steps=3, out=tmp_path / "run", **settings)
    assert len(calls) == 2
    resumed = GaussianMixture(3, 2, "full")  # fresh, but its parameters come from the checkpoint
    fit(resumed, x, steps=6, out=tmp_path / "run", resume=True, **settings)
    assert len(calls) == 2
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bayesian_guide_starts_from_the_data_too():
    gm = fitted("diag", 0, steps=4 * STEPS, guide="bayes")  # its noisy ELBO settles more slowly than MAP
    assert gap(gm, em_log_likelihood("diag")) < 0.01
    assert torch.allclose(gm.point_estimate()["weights"], torch.full((3,), 1 / 3), atol=0.02)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_degenerate_data_give_finite_parameters(covariance):
    for data in (torch.ones(5, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0]])):
        gm = GaussianMixture(3, 2, covariance)
        assert gm.init_from_data(data, torch.Generator().manual_seed(0))
        assert all(torch.isfinite(p).all() for p in gm.parameters())
        assert torch.isfinite(gm.log_likelihood(data)).all()
        assert gm.point_estimate()["weights"].sum().item() == pytest.approx(1.0)


@pytest.mark.cuda
def test_on_cuda_the_same_start_as_on_the_cpu():
    cpu, gpu = GaussianMixture(3, 2, "full"), GaussianMixture(3, 2, "full").cuda()
    cpu.init_from_data(x, torch.Generator().manual_seed(3))
    gpu.init_from_data(x.cuda(), torch.Generator().manual_seed(3))  # the CPU generator: the same draws
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert torch.allclose(p, q.cpu(), atol=1e-4)
    gm = GaussianMixture(3, 2, "full")
    fit(gm, x, steps=STEPS, lr=0.05, batch_size=len(x), seed=0, device="cuda", progress=False)
    assert gap(gm.cpu(), em_log_likelihood("full")) < 0.01
