import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppmodels import evaluate, program
from ppmodels.data import TensorData
from ppmodels.models.conjugate import LinearGaussian


@pytest.fixture
def lg():
    m = LinearGaussian.with_diagonal_posterior(6, 3, seed=0)
    m.set_guide_to_posterior()
    with torch.no_grad():  # a guide near, not at, the posterior
        m.A.add_(0.15 * torch.randn(m.A.shape, generator=torch.Generator().manual_seed(1)))
        m.log_s.add_(0.3)
    return m, m.sample_data(300, seed=2)


def test_is_estimate_approaches_the_analytic_marginal(lg):
    m, x = lg
    exact = m.log_marginal(x).detach()
    gaps = {}
    for K in (1, 10, 100, 2000):
        est = evaluate.log_likelihood(m, x, K)
        diff = exact - est
        gaps[K] = (diff.mean().item(), (diff.std() / math.sqrt(len(x))).item())
    # the gap shrinks as K grows (each step by more than the noise) ...
    assert gaps[1][0] > gaps[10][0] + 3 * gaps[10][1]
    assert gaps[10][0] > gaps[2000][0]
    # ... and at K = 2000 the estimate agrees with log p(x) within its Monte-Carlo error
    assert abs(gaps[2000][0]) < 5 * gaps[2000][1] + 1e-3


def test_is_estimate_is_above_the_elbo_on_average(lg):
    m, x = lg
    est = evaluate.log_likelihood(m, x, 200)
    elbo = m.elbo(x).detach()
    diff = est - elbo
    assert diff.mean() > 5 * diff.std() / math.sqrt(len(x))
    mc_elbo = evaluate.elbo(m, x, num_particles=50)
    se = (mc_elbo - elbo).std() / math.sqrt(len(x))
    assert abs((mc_elbo - elbo).mean()) < 5 * se


def test_chunking_does_not_change_the_estimate(lg):
    m, x = lg
    a = evaluate.log_likelihood(m, x, 500)
    b = evaluate.log_likelihood(m, x, 500, batch_size=7, particle_chunk=33)
    d = a - b
    assert abs(d.mean()) < 5 * d.std() / math.sqrt(len(x)) + 1e-6


def test_chunk_sizes_follow_the_budget():
    from ppmodels.models import VAE

    vae = VAE(x_dim=20, z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((8, 20), 0.5))
    bytes_per_row = 16 * program.facts(vae.model, vae.guide, (x,)).numel_per_row  # bytes per (particle, datapoint)
    for units in (10, 640, 64 * 1000, 10**6):
        B, k = evaluate.chunk_sizes(vae, (x,), 5000, 1000, budget=units * bytes_per_row)
        assert 1 <= B <= 1000 and 1 <= k <= 5000
        assert B * k <= max(units, 1) or B == 1 and k == 1
        if units >= 64 * 1000:
            assert B == 1000  # every datapoint in one chunk once 64 particles each fit
        if units >= 640:
            assert k >= 64  # at least 64 particles a chunk when the budget allows
    assert evaluate.chunk_sizes(vae, (x,), 5000, 1000, budget=10**6 * bytes_per_row, batch_size=10) == (10, 5000)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_captured_evaluation_equals_the_plain_one(monkeypatch, device):
    """The fast path (full chunks through a captured graph) draws the same particles as the plain one."""
    from ppmodels.compiled import graph_of_call
    from ppmodels.models import VAE

    used = []

    def spy(fn, inputs, kind="graph", **kw):
        call, info = graph_of_call(fn, inputs, kind, **kw)
        used.append(call is not None)
        return call, info

    monkeypatch.setattr(evaluate, "graph_of_call", spy)
    torch.manual_seed(0)
    vae = VAE(x_dim=20, z_dim=3, hidden=(8,)).to(device)
    x = torch.bernoulli(torch.full((45, 20), 0.3)).to(device)  # batches of 10: a ragged last batch
    results = []
    for jit in (True, False):
        torch.manual_seed(5)
        results.append(evaluate.log_likelihood(vae, x, 100, batch_size=10, particle_chunk=30, jit=jit))
    assert used == [True, True]  # one graph per batch size: 10, and the ragged 5
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_user_defined_model_without_module_evaluates():
    x = torch.randn(50, 2) + 1.0

    class Model:
        def model(self, x):
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))  # exact posterior

    est = evaluate.log_likelihood(Model(), x, 10)
    exact = dist.Normal(torch.zeros(2), math.sqrt(2.0)).to_event(1).log_prob(x)
    assert torch.allclose(est, exact, atol=1e-4)


def test_active_units(lg):
    m, x = lg
    assert evaluate.active_units(m, x) == {"z": 3}
    with torch.no_grad():
        m.A[0].zero_()  # unit 0's posterior mean no longer depends on x
    assert evaluate.active_units(m, x) == {"z": 2}


def test_global_latent_models_are_refused_with_a_clear_error():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    from ppmodels.protocol import ModelGuide
    from ppmodels.utils import PPModelsError

    with pytest.raises(PPModelsError, match="global latents \\['mu'\\]"):
        evaluate.log_likelihood(ModelGuide(model, guide), torch.randn(10), 5)


def test_tensor_data_is_accepted(lg):
    m, x = lg
    assert evaluate.elbo(m, TensorData(x)).shape == (300,)


def test_is_log_likelihood_agrees_under_two_guides_of_one_decoder():
    """A diagonal Gaussian guide and an IAF guide (its log-determinants counted) of the same
    decoder: both IS estimates match log p(x) by quadrature over the 2-d latent."""
    import math

    from ppmodels.models import VAE
    from ppmodels.objectives import make

    torch.manual_seed(0)
    diag = VAE(x_dim=12, z_dim=2, hidden=(16,))
    iaf = VAE(x_dim=12, z_dim=2, hidden=(16,), guide="iaf", flow_layers=2)
    iaf.decoder.load_state_dict(diag.decoder.state_dict())
    x = (torch.rand(30, 12) > 0.5).float()
    grid = torch.linspace(-7, 7, 281)
    z = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        logits = diag.decoder(z)[:, None, :].expand(-1, len(x), -1)
        lik = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand(len(z), -1, -1), reduction="none").sum(-1)
        prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        exact = torch.logsumexp(lik + prior[:, None], 0) + 2 * math.log(float(grid[1] - grid[0]))
    estimates, elbos = [], []
    for m in (diag, iaf):  # fit each guide to the fixed decoder
        opt = torch.optim.Adam(list(m.encoder.parameters()) + list(m.flows.parameters()), lr=1e-2)
        objective = make("iwae", num_particles=8)
        for _ in range(300):
            opt.zero_grad()
            objective.differentiable_loss(m.model, m.guide, x).backward()
            opt.step()
        torch.manual_seed(1)
        estimates.append(evaluate.log_likelihood(m, x, 5000))
        elbos.append(evaluate.elbo(m, x, 200).mean())
    for est in estimates:
        assert (est - exact).abs().max() < 0.05
    assert abs(float(elbos[0] - elbos[1])) > 1e-3  # two different guides


@pytest.mark.parametrize("bad", [255.0, 0.5, -5.0, float("nan")])
def test_every_evaluation_entry_point_refuses_a_bad_row_as_fit_does(bad):
    """A row past the first batch holding a value outside a Bernoulli's support (or NaN) is a
    one-line error naming the row, in log_likelihood, elbo, importance_diagnostics,
    gradient_study and fit alike."""
    from ppmodels.analysis import gradient_study
    from ppmodels.fit import fit
    from ppmodels.models import VAE
    from ppmodels.utils import PPModelsError

    torch.manual_seed(0)
    vae = VAE(x_dim=20, z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((300, 20), 0.5))
    x[100, 7] = bad
    for run in (lambda: evaluate.log_likelihood(vae, x, num_samples=4),
                lambda: evaluate.elbo(vae, x),
                lambda: evaluate.importance_diagnostics(vae, x, num_samples=25),
                lambda: fit(vae, x, steps=1, batch_size=50, device="cpu")):
        with pytest.raises(PPModelsError, match="row 100") as e:
            run()
        assert "\n" not in str(e.value)
    with pytest.raises(PPModelsError, match="gradient_study's data, row 10") as e:
        gradient_study(vae.model, vae.guide, x[90:110], objectives=["elbo"], num_particles=(1,), replicates=2,
                       exact=None, device="cpu", progress=False)
    assert "\n" not in str(e.value)
    x[100, 7] = 1.0  # the same data with the row mended: every entry point runs
    assert torch.isfinite(evaluate.log_likelihood(vae, x, num_samples=4)).all()


def test_evaluation_samples_guide_sites_marked_for_enumeration_without_a_warning():
    """Importance sampling draws every guide site (M2's y, marked for enumeration): that is the
    method, not a lost enumeration, so evaluation says nothing; an objective that samples it
    still warns once."""
    import warnings

    from ppmodels.models import SemiSupervisedVAE
    from ppmodels.objectives import make

    torch.manual_seed(0)
    m = SemiSupervisedVAE(x_dim=12, z_dim=2, hidden=(8,), aux_loss=0.0)
    x = torch.bernoulli(torch.full((6, 12), 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate.elbo(m, x).shape == (6,)
        assert evaluate.log_likelihood(m, x, 4).shape == (6,)
    with pytest.warns(UserWarning, match="marked for enumeration"):
        make("elbo").loss(m.model, m.guide, x)
