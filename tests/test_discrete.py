"""Discrete-latent estimators against exact gradients: a Bernoulli model small enough to enumerate.

``BernoulliBelief`` has 8 binary latents per datapoint: p(z) factorized Bernoulli with learned
logits, p(x | z) Gaussian around a linear map of z, q(z | x) factorized Bernoulli with logits
linear in x (one stochastic layer, a linear sigmoid belief net in miniature). Its ELBO is a sum
over the 2^8 latent states, so its gradient is exact by autograd; every estimator is z-tested
against it (fixed seeds, R replicates, the bound from ``helpers.Z_BOUND``), with a power check
that a biased variant fails the same test.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppmodels.analysis import replicate_gradients
from ppmodels.models.conjugate import BernoulliBelief, CategoricalGaussian
from ppmodels.objectives import make
from ppmodels.objectives.disarm import Disarm
from ppmodels.utils import PPModelsError

from helpers import Z_BOUND, assert_unbiased

R = 2000
D, X = 8, 4


@pytest.fixture
def belief():
    torch.manual_seed(1)
    m = BernoulliBelief(D, X)
    x = torch.randn(3, X)
    return m, x


def exact_gradient(m, x):
    grads = torch.autograd.grad(-m.exact_elbo(x).sum(), list(m.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("name,K", [("arm", 2), ("disarm", 2), ("disarm", 4), ("rloo", 2), ("reinforce", 2)])
def test_bernoulli_estimators_are_unbiased_against_the_enumerated_gradient(belief, name, K):
    m, x = belief
    options = {"num_particles": K, **({"baseline": "none"} if name == "reinforce" else {})}
    grads, _ = replicate_gradients(make(name, **options), m, (x,), list(m.parameters()), R, seed=3)
    assert_unbiased(grads, exact_gradient(m, x), what=f"{name} K={K}")


def test_disarm_has_less_guide_variance_than_arm_and_than_reinforce_at_equal_evaluations(belief):
    m, x = belief
    guide = [m.A, m.c]

    def variance(name, **options):
        grads, _ = replicate_gradients(make(name, num_particles=2, **options), m, (x,), guide, R, seed=4)
        return float(grads.var(0).sum())

    disarm, arm, reinforce = variance("disarm"), variance("arm"), variance("reinforce", baseline="none")
    assert disarm < arm < reinforce, (disarm, arm, reinforce)


def test_power_disarm_without_its_sigmoid_factor_is_detected(belief):
    class Unweighted(Disarm):
        def pair_gradient(self, f, f_tilde, b, b_tilde, u, logits):
            return 0.5 * (f - f_tilde) * (1.0 - 2.0 * b_tilde) * (b != b_tilde).to(f.dtype)

    m, x = belief
    grads, _ = replicate_gradients(Unweighted(num_particles=2), m, (x,), list(m.parameters()), R, seed=3)
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(grads, exact_gradient(m, x), what="disarm without sigma(|alpha|)")


def test_antithetic_pairs_are_drawn_from_one_uniform(belief):
    """Within a pair b = 1[u < p] and b~ = 1[1 - u < p]: where p < 1/2 both cannot be 1, and
    where p > 1/2 both cannot be 0."""
    from ppmodels.objectives.disarm import _Antithetic

    m, x = belief
    obj = make("disarm", num_particles=2)
    found = obj.facts(m.model, m.guide, (x,), {})
    _, pairs = obj.draw(m.model, m.guide, (x,), {}, guide_handler=lambda: _Antithetic(2, found.max_plate_nesting))
    site = pairs[0][1].nodes["z"]
    b, b_tilde = site["value"][0], site["value"][1]
    p = torch.sigmoid(x @ m.A.T + m.c)
    assert not ((b * b_tilde)[p < 0.5] > 0).any() and not (((1 - b) * (1 - b_tilde))[p > 0.5] > 0).any()


class _OneHotGaussian(CategoricalGaussian):
    """``CategoricalGaussian`` written with one-hot values, as the discrete VAE writes its codes:
    the guide's site is ``OneHotCategorical`` inside a second plate of two groups (an event dim
    after ``.to_event(1)``), each group its own class."""

    def model(self, x):
        pyro.module("categorical_gaussian", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=self.prior_logits).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Normal((z @ self.locs).sum(-2) / 2, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("categorical_gaussian", self)
        logits = x @ self.A.T + self.c
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=torch.stack([logits, -logits], -2)).to_event(1))

    def exact_elbo(self, x):
        C = self.num_classes
        log_q = torch.log_softmax(torch.stack([x @ self.A.T + self.c, -(x @ self.A.T + self.c)], -2), -1)  # (N, 2, C)
        prior = torch.log_softmax(self.prior_logits, -1)
        total = 0.0
        for i, j in itertools.product(range(C), repeat=2):
            q = log_q[:, 0, i] + log_q[:, 1, j]
            lik = dist.Normal((self.locs[i] + self.locs[j]) / 2, self.sigma).log_prob(x).sum(-1)
            total = total + q.exp() * (prior[i] + prior[j] + lik - q)
        return total


@pytest.mark.parametrize("model", ["index", "one-hot"])
@pytest.mark.parametrize("name,K", [("arm", 2), ("disarm", 2), ("disarm", 4)])
def test_arm_and_disarm_on_categoricals_are_unbiased_by_stick_breaking(model, name, K):
    """Categorical sites, index-coded (``Categorical``) or one-hot under a second plate: the
    stick-breaking coupling against the enumerated gradient, every parameter."""
    torch.manual_seed(0)
    m = CategoricalGaussian(4, 2, seed=2) if model == "index" else _OneHotGaussian(4, 2, seed=2)
    x = torch.randn(3, 2) * 2
    grads, _ = replicate_gradients(make(name, num_particles=K), m, (x,), list(m.parameters()), R, seed=5)
    assert_unbiased(grads, exact_gradient(m, x), what=f"{name} K={K} {model}")


def test_power_a_categorical_pair_without_the_stick_chain_rule_is_detected():
    """The sticks' gradient put on the class logits directly (the first C - 1, as if each stick
    were its class's own Bernoulli) fails the same z-test."""
    import ppmodels.objectives.disarm as arm

    def naive(fn):
        base = arm._categorical(fn)
        logits = base.logits.expand(fn.batch_shape + fn.event_shape + base.logits.shape[-1:])
        return logits[..., :-1]

    torch.manual_seed(0)
    m, x = CategoricalGaussian(4, 2, seed=2), torch.randn(3, 2) * 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arm, "stick_logits", naive)
        grads, _ = replicate_gradients(make("disarm", num_particles=2), m, (x,), list(m.parameters()), R, seed=5)
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(grads, exact_gradient(m, x), what="disarm, sticks without the chain rule")


def test_the_stick_breaking_draws_are_the_guides_categorical():
    """Over 20,000 pairs both halves' classes follow q(z | x) (chi-square-sized error), and within
    a pair the two classes differ more often than two independent draws would."""
    from ppmodels.objectives.disarm import first_success, stick_logits

    logits = torch.tensor([0.3, -1.0, 1.2, 0.0])
    fn = dist.Categorical(logits=logits).expand([20000])
    p = torch.sigmoid(stick_logits(fn))
    u = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0))
    c, c_tilde = first_success((u < p).float()), first_success((1 - u < p).float())
    q = torch.softmax(logits, -1)
    for classes in (c, c_tilde):
        freq = torch.bincount(classes, minlength=4) / 20000.0
        assert ((freq - q).abs() < 4 * (q * (1 - q) / 20000).sqrt()).all(), (freq, q)
    assert (c != c_tilde).float().mean() > 1 - (q**2).sum()


def test_arm_and_disarm_refuse_what_they_cannot_do():
    with pytest.raises(PPModelsError, match="even integer"):
        make("disarm", num_particles=3)
    with pytest.raises(PPModelsError, match="vectorize_particles=False cannot pair"):
        make("arm", vectorize_particles=False)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            n = pyro.sample("n", dist.Poisson(3.0))
            pyro.sample("x", dist.Normal(n[:, None].expand(x.shape), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("n", dist.Poisson(pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)))

    with pytest.raises(PPModelsError, match="neither Bernoulli nor categorical.*rloo"):
        make("disarm").loss(model, guide, torch.randn(4, 2))


# -- the relaxed estimators show their bias ---------------------------------------------------------
def _bias_z(m, x, objective, reps=1000):
    grads, _ = replicate_gradients(objective, m, (x,), list(m.parameters()), reps, seed=6)
    exact = exact_gradient(m, x)
    se = (grads.var(0) / reps).sqrt()
    return float(((grads.mean(0) - exact) / se).abs().max()), float((grads.mean(0) - exact).norm()), grads


def test_gumbel_softmax_is_biased_and_its_bias_shrinks_with_the_temperature(belief):
    m, x = belief
    z_hot, bias_hot, _ = _bias_z(m, x, make("gumbel", temperature=2.0))
    z_cold, bias_cold, cold = _bias_z(m, x, make("gumbel", temperature=0.1))
    assert z_hot > 2 * Z_BOUND  # the z-test the unbiased estimators pass rejects it
    assert bias_cold < 0.5 * bias_hot, (bias_cold, bias_hot)
    _, _, hot = _bias_z(m, x, make("gumbel", temperature=2.0))
    assert cold.var(0).sum() > hot.var(0).sum()  # and the variance grows as it cools


def test_straight_through_values_are_unbiased_elbo_estimates_and_its_gradient_is_not(belief):
    m, x = belief
    obj = make("st-gumbel", temperature=0.5)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        values = obj.with_particles(4000).log_weights(m.model, m.guide, x).log_w.sum(-1)  # 4000 hard draws
    exact = float(m.exact_elbo(x).sum())
    assert abs(float(values.mean()) - exact) < Z_BOUND * float(values.std()) / 4000 ** 0.5
    z, _, _ = _bias_z(m, x, obj)
    assert z > Z_BOUND


def test_gumbel_refuses_an_index_coded_categorical_and_a_bad_temperature():
    c = CategoricalGaussian()
    with pytest.raises(PPModelsError, match="no one-hot or binary value to relax"):
        make("gumbel").loss(c.model, c.guide, torch.randn(4, 2))
    with pytest.raises(PPModelsError, match="temperature must be a finite number > 0"):
        make("gumbel", temperature=0)


def test_temperature_annealing_sets_the_temperature_each_step(belief):
    from ppmodels.callbacks import TemperatureAnnealing
    from ppmodels.fit import fit

    m, x = belief
    obj = make("gumbel", temperature=1.0)
    history = fit(m, torch.randn(40, X), objective=obj, steps=20, batch_size=4, device="cpu",
                  callbacks=[TemperatureAnnealing(start=1.0, end=0.2, rate=0.1)])
    assert obj.temperature == pytest.approx(max(0.2, math.exp(-0.1 * 19)))
    assert history["temperature"].iloc[-1] == pytest.approx(max(0.2, math.exp(-0.1 * 19)))
    with pytest.raises(PPModelsError, match="end 2.0 must not exceed start"):
        TemperatureAnnealing(start=1.0, end=2.0)
    with pytest.raises(PPModelsError, match="has no temperature"):
        fit(m, torch.randn(40, X), objective="elbo", steps=1, batch_size=4, device="cpu",
            callbacks=[TemperatureAnnealing()])


class OneHotMixture(nn.Module):
    """x ~ N(W z, 1) with z one-hot over 4 states, learned prior logits, q(z | x) one-hot with
    logits linear in x; three datapoints in a plate. Its ELBO is a sum over the 4 states."""

    def __init__(self):
        super().__init__()
        self.prior = nn.Parameter(torch.tensor([0.2, -0.3, 0.0, 0.4]))
        self.W = nn.Parameter(0.3 * torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 0.5]]))
        self.A = nn.Parameter(torch.tensor([[1.3, -0.2], [-0.5, 1.4], [1.0, 0.0], [0.1, -1.6]]))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=self.prior))
            pyro.sample("x", dist.Normal(z @ self.W.T, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=x @ self.A.T))

    def exact_elbo(self, x):
        log_q = torch.log_softmax(x @ self.A.T, -1)                                      # (N, 4)
        log_joint = torch.log_softmax(self.prior, -1) + dist.Normal(self.W.T, 1.0).log_prob(x[:, None]).sum(-1)
        return (log_q.exp() * (log_joint - log_q)).sum(-1)


def test_gumbel_at_one_hot_sites_keeps_the_kl_terms_pathwise_gradient(monkeypatch):
    """Cold (tau = 0.05) Gumbel-softmax at a one-hot site is nearly unbiased, with the log-densities
    of q and p linear in the relaxed value; with torch's argmax log-density (no gradient in the
    value, so no entropy gradient) the same z-test fails."""
    from ppmodels.objectives import gumbel

    torch.manual_seed(0)
    m, x = OneHotMixture(), torch.randn(3, 2)
    exact = exact_gradient(m, x)
    grads, _ = replicate_gradients(make("gumbel", temperature=0.05), m, (x,), list(m.parameters()), R, seed=8)
    assert_unbiased(grads, exact, what="gumbel tau=0.05 at one-hot sites")
    monkeypatch.setattr(gumbel, "_LinearDensities", pyro.poutine.messenger.Messenger)
    grads, _ = replicate_gradients(make("gumbel", temperature=0.05), m, (x,), list(m.parameters()), R, seed=8)
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(grads, exact, what="gumbel with argmax densities")


@pytest.mark.parametrize("objective", ["reinforce", "rloo", "vimco", "gumbel", "st-gumbel"])
def test_every_categorical_estimator_trains_the_discrete_vae(objective):
    """The G x C categorical VAE's one-hot site takes the score-function estimators and the
    relaxations alike: two steps change the encoder and the decoder, with a finite loss."""
    from ppmodels.fit import fit
    from ppmodels.models import DiscreteVAE

    torch.manual_seed(0)
    m = DiscreteVAE("categorical", x_dim=16, groups=3, classes=4, hidden=(8,))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.bernoulli(torch.full((32, 16), 0.3), generator=torch.Generator().manual_seed(0))
    history = fit(m, x, objective=objective, num_particles=2, steps=2, batch_size=16, lr=1e-2, device="cpu")
    assert len(history) == 1 and math.isfinite(history["train_loss"].iloc[-1])
    changed = {k.split(".")[0] for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"encoder", "decoder"}


def test_arm_and_disarm_train_the_discrete_vaes_categoricals():
    from ppmodels.fit import fit
    from ppmodels.models import DiscreteVAE

    x = torch.bernoulli(torch.full((32, 16), 0.3), generator=torch.Generator().manual_seed(0))
    for objective in ("arm", "disarm"):
        torch.manual_seed(0)
        m = DiscreteVAE("categorical", x_dim=16, groups=3, classes=4, hidden=(8,))
        before = {k: v.clone() for k, v in m.state_dict().items()}
        history = fit(m, x, objective=objective, num_particles=2, steps=2, batch_size=16, device="cpu")
        assert math.isfinite(history["train_loss"].iloc[-1])
        changed = {k.split(".")[0] for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
        assert "encoder" in changed, changed
