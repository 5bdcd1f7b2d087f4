"""Every objective's gradient against the exact gradient of its expectation.

R replicate estimates (vectorized where the objective has per-datapoint units), fixed seeds,
per-coordinate z-scores bounded by 5 standard errors of the replicate mean. The power tests
run the same check on known-biased estimators and require it to fail.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppmodels.analysis import flat_grad, replicate_gradients
from ppmodels.analysis.replicates import _jacobian
from ppmodels.models.conjugate import CategoricalGaussian, LinearGaussian
from ppmodels import objectives
from ppmodels.objectives import make
from ppmodels.utils import PPModelsError

from helpers import assert_unbiased, z_scores

R = 2000
LARGEST_Z: dict[str, float] = {}


def exact_grad(loss, params):
    return flat_grad(torch.autograd.grad(loss, params, allow_unused=True), params)


@pytest.fixture(scope="module")
def lg():
    torch.manual_seed(0)
    m = LinearGaussian(5, 2, seed=0)
    return m, m.sample_data(4, seed=1)


@pytest.fixture(scope="module")
def cg():
    m = CategoricalGaussian(3, 2, seed=0)
    g = torch.Generator().manual_seed(1)
    x = m.locs.detach()[torch.tensor([0, 1, 2])] + torch.randn(3, 2, generator=g)
    return m, x


def params_of(m):
    return m.model_parameters() + m.guide_parameters()


def iwae_f(K):
    return lambda lw: torch.logsumexp(lw, 0) - math.log(K)


def renyi_f(K, alpha):
    return lambda lw: (torch.logsumexp((1 - alpha) * lw, 0) - math.log(K)) / (1 - alpha)


# -- LinearGaussian: ELBO-family estimators against the closed-form ELBO gradient -------------
@pytest.mark.parametrize("name,options", [
    ("elbo", {}), ("elbo", {"num_particles": 3}), ("meanfield", {}), ("stl", {}), ("stl", {"num_particles": 2}),
    ("iwae", {"num_particles": 1}), ("renyi", {"num_particles": 1, "alpha": 0.5}),
    ("dreg", {"num_particles": 1}),
])
def test_linear_gaussian_elbo_gradients_are_unbiased(lg, name, options):
    m, x = lg
    params = params_of(m)
    exact = exact_grad(-m.elbo(x).sum(), params)
    grads, bounds = replicate_gradients(make(name, **options), m, (x,), params, R, seed=1)
    LARGEST_Z[f"{name}{options} × LinearGaussian"] = assert_unbiased(grads, exact, what=name)
    se = bounds.std() / R**0.5
    assert abs(bounds.mean() - m.elbo(x).sum()) < 5 * se


def test_meanfield_has_lower_variance_than_elbo(lg):
    m, x = lg
    params = m.guide_parameters()
    g1, _ = replicate_gradients("elbo", m, (x,), params, R, seed=2)
    g2, _ = replicate_gradients("meanfield", m, (x,), params, R, seed=2)
    assert g2.var(0).sum() < g1.var(0).sum()


# -- LinearGaussian at the exact posterior ------------------------------------------------------
@pytest.fixture(scope="module")
def lg_post():
    m = LinearGaussian.with_diagonal_posterior(5, 2, seed=3)
    m.set_guide_to_posterior()
    return m, m.sample_data(4, seed=4)


@pytest.mark.parametrize("name,options", [
    ("iwae", {"num_particles": 1}), ("iwae", {"num_particles": 7}),
    ("renyi", {"num_particles": 5, "alpha": 0.5}), ("renyi", {"num_particles": 5, "alpha": -2.0}),
    ("dreg", {"num_particles": 5}), ("elbo", {"num_particles": 3}), ("stl", {"num_particles": 3}),
])
def test_at_exact_posterior_every_bound_is_log_marginal(lg_post, name, options):
    m, x = lg_post
    log_px = m.log_marginal(x).sum()
    obj = make(name, **options)
    assert abs(-obj.loss(m.model, m.guide, x) - log_px.item()) < 1e-3
    # model gradient: unbiased for grad log p(x)
    exact = exact_grad(-log_px, m.model_parameters())
    grads, _ = replicate_gradients(obj, m, (x,), m.model_parameters(), R, seed=5)
    LARGEST_Z[f"{name}{options} × LinearGaussian@posterior (model)"] = assert_unbiased(grads, exact, what=name)


@pytest.mark.parametrize("name", ["stl", "dreg"])
def test_stl_and_dreg_guide_gradients_vanish_at_the_posterior(lg_post, name):
    m, x = lg_post
    grads, _ = replicate_gradients(make(name, num_particles=5), m, (x,), m.guide_parameters(), 200, seed=6)
    assert grads.abs().max() < 1e-4  # every replicate, not just on average


def test_iwae_guide_gradient_at_posterior_is_noisy_but_centred(lg_post):
    m, x = lg_post
    grads, _ = replicate_gradients(make("iwae", num_particles=5), m, (x,), m.guide_parameters(), R, seed=7)
    assert grads.std(0).max() > 1e-2
    assert_unbiased(grads, torch.zeros(grads.shape[1]), what="iwae guide @ posterior")


def test_dreg_and_iwae_agree_in_expectation_away_from_posterior(lg):
    """Both are unbiased for the IWAE-K gradient (no closed form here): a two-sample z-test."""
    m, x = lg
    params = params_of(m)
    a, _ = replicate_gradients(make("iwae", num_particles=5), m, (x,), params, R, seed=8)
    b, _ = replicate_gradients(make("dreg", num_particles=5), m, (x,), params, R, seed=9)
    z = (a.mean(0) - b.mean(0)) / ((a.var(0) + b.var(0)) / R).sqrt()
    assert z.abs().max() < 5
    # DReG's guide gradient has lower variance than IWAE's
    k = sum(p.numel() for p in m.model_parameters())
    assert b[:, k:].var(0).sum() < a[:, k:].var(0).sum()


# -- CategoricalGaussian: discrete latent, exact K-particle bounds by enumerating C^K tuples --
@pytest.mark.parametrize("name,options,f", [
    ("elbo", {}, lambda K: (lambda lw: lw[0])),
    ("reinforce", {"baseline": "none"}, lambda K: (lambda lw: lw[0])),
    ("reinforce", {"baseline": "decaying"}, lambda K: (lambda lw: lw[0])),
    ("reinforce", {"baseline": "neural"}, lambda K: (lambda lw: lw[0])),
    ("iwae", {"num_particles": 3}, iwae_f),
    ("renyi", {"num_particles": 3, "alpha": 0.5}, lambda K: renyi_f(K, 0.5)),
    ("vimco", {"num_particles": 3}, iwae_f),
    ("vimco", {"num_particles": 4}, iwae_f),
    ("rloo", {"num_particles": 2}, lambda K: (lambda lw: lw[0])),
    ("rloo", {"num_particles": 4}, lambda K: (lambda lw: lw[0])),
])
def test_discrete_latent_gradients_are_unbiased(cg, name, options, f):
    m, x = cg
    K = options.get("num_particles", 1) if name != "rloo" else 1  # rloo: the ELBO, whatever its K
    params = params_of(m)
    exact = exact_grad(-m.exact_bound(x, K, f(K)).sum(), params)
    reps = R if make(name, **options).per_term else R // 2  # the loop path is slower
    grads, _ = replicate_gradients(make(name, **options), m, (x,), params, reps, seed=10)
    LARGEST_Z[f"{name}{options} × CategoricalGaussian (R={reps})"] = assert_unbiased(grads, exact, what=name)


def test_enum_gradient_is_exact(cg):
    m, x = cg
    params = params_of(m)
    exact = exact_grad(-m.exact_elbo(x).sum(), params)
    grads, _ = replicate_gradients("enum", m, (x,), params, 5, seed=11)
    assert torch.allclose(grads, exact.expand_as(grads), atol=1e-4)


def test_rloo_has_lower_guide_variance_than_reinforce_at_the_same_particles(cg):
    m, x = cg
    a, _ = replicate_gradients(make("reinforce", baseline="none", num_particles=4), m, (x,), m.guide_parameters(), R,
                               seed=13)
    b, _ = replicate_gradients(make("rloo", num_particles=4), m, (x,), m.guide_parameters(), R, seed=13)
    assert b.var(0).sum() < 0.5 * a.var(0).sum()


def test_power_a_baseline_that_sees_its_own_particle_is_detected(cg):
    """The same z-test rejects the 'batch average including itself' baseline, which scales the
    score-function part by (K-1)/K: biased."""
    from ppmodels.objectives.elbo import elbo_surrogate
    from ppmodels.objectives.rloo import Rloo

    class WithSelf(Rloo):
        def surrogate_terms(self, model, guide, *args, **kwargs):
            lw, _ = self.draw(model, guide, args, kwargs)
            signal = (lw.log_w - lw.log_w.mean(0, keepdim=True)).detach()
            return lw.scale * lw.log_w.mean(0), lw.scale * (lw.pathwise + lw.score * signal).mean(0)

    m, x = cg
    exact = exact_grad(-m.exact_bound(x, 1, lambda lw: lw[0]).sum(), m.guide_parameters())
    grads, _ = replicate_gradients(WithSelf(num_particles=2), m, (x,), m.guide_parameters(), R, seed=10)
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(grads, exact, what="rloo with its own particle in the baseline")


def test_vimco_has_lower_guide_variance_than_plain_iwae_score_function(cg):
    m, x = cg
    a, _ = replicate_gradients(make("iwae", num_particles=4), m, (x,), m.guide_parameters(), R, seed=12)
    b, _ = replicate_gradients(make("vimco", num_particles=4), m, (x,), m.guide_parameters(), R, seed=12)
    assert b.var(0).sum() < a.var(0).sum()


# -- power: the same test at the same R rejects known-biased estimators ------------------------
def test_power_pyro_renyi_alpha0_guide_gradient_is_detected(cg):
    m, x = cg
    K = 3
    exact = exact_grad(-m.exact_bound(x, K, iwae_f(K)).sum(), m.guide_parameters())
    elbo = pyro.infer.RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    grads = []
    pyro.set_rng_seed(13)
    for _ in range(200):
        for p in m.guide_parameters():
            p.grad = None
        elbo.loss_and_grads(m.model, m.guide, x)
        grads.append(flat_grad([p.grad for p in m.guide_parameters()], m.guide_parameters()))
    z = z_scores(torch.stack(grads), exact)
    assert z.abs().max() > 5  # Pyro's estimator: zero guide gradient at a discrete site


def test_power_elbo_gradient_taken_as_iwae_gradient_is_detected(cg):
    m, x = cg
    K = 3
    exact = exact_grad(-m.exact_bound(x, K, iwae_f(K)).sum(), params_of(m))
    grads, _ = replicate_gradients(make("elbo", num_particles=K), m, (x,), params_of(m), R, seed=14)
    assert z_scores(grads, exact).abs().max() > 5


def test_power_iwae_gradient_without_its_score_term_is_detected(cg):
    """Dropping the score term at discrete sites (what Pyro's RenyiELBO does) is caught by the
    same test that passes ppmodels' iwae."""
    m, x = cg
    K = 3
    exact = exact_grad(-m.exact_bound(x, K, iwae_f(K)).sum(), params_of(m))
    obj = make("iwae", num_particles=K)
    pyro.set_rng_seed(15)
    bound, _ = obj.surrogate_terms(m.model, m.guide, x.repeat(R, 1))
    grads = _jacobian(-bound.reshape(R, -1).sum(1), params_of(m))  # pathwise part only
    assert z_scores(grads, exact).abs().max() > 5


# -- values, particles, subsampling -----------------------------------------------------------
@pytest.mark.parametrize("name,options", [
    ("elbo", {}), ("meanfield", {}), ("stl", {}), ("iwae", {"num_particles": 4}),
    ("renyi", {"num_particles": 4, "alpha": 0.3}), ("dreg", {"num_particles": 4}),
    ("vimco", {"num_particles": 4}),
])
def test_loss_and_differentiable_loss_agree_in_value(lg, name, options):
    m, x = lg
    obj = make(name, **options)
    pyro.set_rng_seed(0)
    a = obj.loss(m.model, m.guide, x)
    pyro.set_rng_seed(0)
    b = obj.differentiable_loss(m.model, m.guide, x).item()
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("name", ["elbo", "iwae", "dreg", "vimco", "renyi"])
def test_vectorized_and_sequential_particles_agree(lg, name):
    """Same estimator either way: torch draws a (K, B) block in a different order than K (1, B)
    blocks, so the check is statistical: the bound estimates' means agree (two-sample z < 5)
    and their spreads agree within 20%."""
    m, x = lg
    vec = make(name, num_particles=4)
    seq = make(name, num_particles=4, vectorize_particles=False)
    pyro.set_rng_seed(1)
    a = torch.tensor([vec.loss(m.model, m.guide, x) for _ in range(400)])
    b = torch.tensor([seq.loss(m.model, m.guide, x) for _ in range(400)])
    z = (a.mean() - b.mean()) / ((a.var() + b.var()) / 400).sqrt()
    assert abs(z) < 5
    assert 0.8 < a.std() / b.std() < 1.25
    # and the sequential path's gradient is the same estimator (unbiased for the same target)
    pyro.set_rng_seed(2)
    loss = seq.differentiable_loss(m.model, m.guide, x)
    assert torch.isfinite(loss) and all(g is not None for g in torch.autograd.grad(loss, params_of(m)))


class Subsampled:
    """LinearGaussian over a dataset of N rows, with the data plate subsampled."""

    def __init__(self, m, data):
        self.m, self.data = m, data

    def model(self, idx=None):
        with pyro.plate("data", len(self.data), subsample=idx) as i:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.m.W.T + self.m.b, (0.5 * self.m.log_psi).exp()).to_event(1),
                        obs=self.data[i])

    def guide(self, idx=None):
        with pyro.plate("data", len(self.data), subsample=idx) as i:
            pyro.sample("z", dist.Normal(self.data[i] @ self.m.A.T + self.m.c, self.m.log_s.exp()).to_event(1))


def test_iwae_under_subsampling_scales_outside_the_log(lg):
    m, _ = lg
    data = m.sample_data(20, seed=3)
    idx = torch.tensor([1, 5, 7, 11])
    obj = make("iwae", num_particles=6)
    pyro.set_rng_seed(2)
    sub = -obj.loss(m.model, m.guide, data[idx])  # the 4 rows as a full batch
    pyro.set_rng_seed(2)
    scaled = -make("iwae", num_particles=6).loss(Subsampled(m, data).model, Subsampled(m, data).guide, idx)
    assert scaled == pytest.approx(20 / 4 * sub, rel=1e-5)


# -- errors ------------------------------------------------------------------------------------
def test_errors_say_what_to_use_instead(lg, cg):
    with pytest.raises(PPModelsError, match="unknown objective 'iwea'.*iwae"):
        make("iwea")
    with pytest.raises(PPModelsError, match="alpha = 1 is the ELBO"):
        make("renyi", alpha=1)
    with pytest.raises(PPModelsError, match="num_particles must be an integer >= 1"):
        make("iwae", num_particles=0)
    with pytest.raises(PPModelsError, match="does not take option"):
        make("elbo", alpha=0.5)
    with pytest.raises(PPModelsError, match="vimco.*>= 2"):
        make("vimco", num_particles=1)
    m, x = lg
    with pytest.warns(UserWarning, match="no discrete site to enumerate.*runs as TraceEnum_ELBO"):
        make("enum").loss(m.model, m.guide, x)  # as Pyro runs it: a warning, not a refusal
    c, xc = cg
    with pytest.raises(PPModelsError, match="reparameterizable.*vimco"):
        make("dreg", num_particles=3).differentiable_loss(c.model, c.guide, xc)
    with pytest.raises(PPModelsError, match="reparameterizable"):
        make("stl").differentiable_loss(c.model, c.guide, xc)


def test_global_latents_under_subsampling_is_a_clear_error():
    data = torch.randn(10, 2)

    def model(idx):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", 10, subsample=idx) as i:
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=data[i])

    def guide(idx):
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("mu", dist.Normal(loc, 1.0).to_event(1))

    with pytest.raises(PPModelsError, match="global latents \\['mu'\\] lie outside the batch plate"):
        make("iwae", num_particles=3).loss(model, guide, torch.tensor([0, 1]))
    # full batch: the whole-batch bound is defined
    assert math.isfinite(make("iwae", num_particles=3).loss(model, guide, torch.arange(10)))


def test_report_largest_z(capsys):
    """Prints the largest |z| per objective × model pair seen above (for the issue note)."""
    with capsys.disabled():
        for k, v in sorted(LARGEST_Z.items()):
            print(f"  max|z| {v:5.2f}  {k}")


@pytest.mark.cuda
@pytest.mark.parametrize("name,options", [("elbo", {}), ("stl", {}), ("dreg", {"num_particles": 1}),
                                          ("iwae", {"num_particles": 1})])
def test_linear_gaussian_gradients_on_cuda(name, options):
    m = LinearGaussian(5, 2, seed=0).cuda()
    x = m.sample_data(4, seed=1).cuda()
    params = params_of(m)
    exact = exact_grad(-m.elbo(x).sum(), params)
    grads, _ = replicate_gradients(make(name, **options), m, (x,), params, R, seed=1)
    assert grads.is_cuda
    assert_unbiased(grads, exact, what=f"{name} on cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name,options,f", [("reinforce", {"baseline": "neural"}, lambda K: (lambda lw: lw[0])),
                                            ("vimco", {"num_particles": 3}, iwae_f)])
def test_discrete_latent_gradients_on_cuda(name, options, f):
    m = CategoricalGaussian(3, 2, seed=0).cuda()
    x = (m.locs.detach()[torch.tensor([0, 1, 2], device="cuda")] + 0.5)
    K = options.get("num_particles", 1) if name != "rloo" else 1  # rloo: the ELBO, whatever its K
    params = params_of(m)
    exact = exact_grad(-m.exact_bound(x, K, f(K)).sum(), params)
    grads, _ = replicate_gradients(make(name, **options), m, (x,), params, R, seed=10)
    assert_unbiased(grads, exact, what=f"{name} on cuda")


def test_closed_form_elbo_matches_a_precise_monte_carlo_estimate(lg):
    """2M particles: a standard error of 0.004-0.015 nats per datapoint, so the 5-sigma test
    detects an error of about 0.05 nats in the closed form."""
    m, x = lg
    obj = make("elbo", num_particles=2_000_000)
    pyro.set_rng_seed(0)
    lw = obj.log_weights(m.model, m.guide, x).local.detach()  # (K, B)
    mc, se = lw.mean(0), lw.std(0) / lw.shape[0] ** 0.5
    closed = m.elbo(x).detach()
    assert ((mc - closed).abs() / se).max() < 5


@pytest.mark.parametrize("name", objectives.names())
def test_with_particles_keeps_a_given_plate_nesting_and_a_call_sets_none(name, lg):
    given = objectives.make(name, max_plate_nesting=2).with_particles(4)  # 4: valid for every estimator
    assert (given.num_particles, given.max_plate_nesting) == (4, 2)
    fresh = objectives.make(name, **({"num_particles": 2} if name in ("vimco", "rloo", "arm", "disarm") else {}))
    m, x = lg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fresh.loss(m.model, m.guide, x)
        except PPModelsError:
            pass  # an objective this model does not suit: what matters is what the call left behind
    assert fresh.max_plate_nesting is None  # the program's nesting is a fact of the program, not kept here
    assert fresh.with_particles(4).max_plate_nesting is None
