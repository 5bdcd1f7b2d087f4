"""RELAX and reweighted wake-sleep against exact gradients and Pyro, and the Pyro adapter's plate nesting.

The models are the enumerable ones of ``test_discrete``: ``BernoulliBelief`` (8 binary latents per
datapoint, an ELBO summed over 2^8 states) and a one-hot mixture over 4 states. Every estimator is
z-tested against the exact gradient (fixed seeds, R replicates, ``helpers.Z_BOUND``), with a power
check that a deliberately biased variant fails the same test.
"""

import itertools

import pyro
import pytest
import torch
from pyro.infer import ReweightedWakeSleep, Trace_ELBO, TraceGraph_ELBO

from ppmodels.analysis import replicate_gradients
from ppmodels.fit import fit, load_checkpoint
from ppmodels.models.conjugate import BernoulliBelief, CategoricalGaussian
from ppmodels.objectives import make
from ppmodels.objectives.relax import Relax
from ppmodels.objectives.rws import Rws
from ppmodels.utils import PPModelsError

from helpers import Z_BOUND, assert_unbiased
from test_discrete import D, R, X, OneHotMixture, belief, exact_gradient  # noqa: F401 (belief: a fixture)


# -- the Pyro adapter's plate nesting -------------------------------------------------------------
@pytest.mark.parametrize("kind", [Trace_ELBO, TraceGraph_ELBO], ids=lambda k: k.__name__)
def test_a_pyro_elbo_with_vectorized_particles_runs_on_a_plate_at_dim_minus_one(belief, kind):
    """Pyro puts its particle plate at dim -max_plate_nesting, and adds the particle plate's 1 only
    to a nesting it guesses: given the program's own nesting (1), the particle plate would collide
    with the data plate. The loss must be an unbiased estimate of minus the exact ELBO."""
    m, x = belief
    wrapped = make(kind(num_particles=4, vectorize_particles=True))
    pyro.set_rng_seed(0)
    losses = torch.tensor([wrapped.loss(m.model, m.guide, x) for _ in range(50)])
    exact = -float(m.exact_elbo(x).sum().detach())
    z = (losses.mean() - exact) / (losses.std() / 50 ** 0.5)
    assert abs(float(z)) < Z_BOUND, (float(losses.mean()), exact)


# -- RELAX ------------------------------------------------------------------------------------------
def guide_gradient(m, x):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(-m.exact_elbo(x).sum(), [m.A, m.c])])


class Uncorrected(Relax):
    """RELAX without the control variate's correction: the score term alone, with c(z~) subtracted."""

    def site_gradient(self, coefficient, score, correction):
        return coefficient * score


def trained_surrogate(m, x, steps=80, lr=0.03):
    """Train only RELAX's surrogate (the model held fixed) on the batch repeated 16 times."""
    obj = make("relax")
    obj.init_state(m.model, m.guide, (x,), {})
    store = pyro.get_param_store()
    params = [store[n] for n in obj.state_names]
    optimizer = torch.optim.Adam(params, lr=lr)
    pyro.set_rng_seed(11)
    for _ in range(steps):
        optimizer.zero_grad()
        obj.differentiable_loss(m.model, m.guide, x.repeat(16, 1)).backward(inputs=params)
        optimizer.step()
    return obj


def block_variance(grads, blocks=20):
    """The summed per-coordinate variance of R replicates, and its standard error from ``blocks`` blocks."""
    per_block = torch.stack([g.var(0).sum() for g in grads.chunk(blocks)])
    return float(per_block.mean()), float(per_block.std() / blocks ** 0.5)


@pytest.mark.parametrize("K,rebar", [(1, True), (3, True), (1, False)])
def test_relax_is_unbiased_against_the_enumerated_gradient_for_every_parameter(belief, K, rebar):
    """Model and guide parameters alike: REBAR's term depends on the model, whose parameters must
    not receive the surrogate's variance gradient (with it they fail this test)."""
    m, x = belief
    pyro.clear_param_store()
    grads, _ = replicate_gradients(make("relax", num_particles=K, rebar=rebar), m, (x,), list(m.parameters()), R,
                                   seed=3)
    assert_unbiased(grads, exact_gradient(m, x), what=f"relax K={K} rebar={rebar}")


def test_rebars_term_lowers_relaxs_variance_before_any_training(belief):
    """At initialisation the surrogate is REBAR's term alone: the guide gradient's variance is
    several standard errors below that of the surrogate without it (measured: about 2,700 against
    20,500, the latter as REINFORCE without a baseline), and the estimator stays unbiased."""
    m, x = belief
    variances = {}
    for rebar in (True, False):
        pyro.clear_param_store()
        grads, _ = replicate_gradients(make("relax", rebar=rebar), m, (x,), [m.A, m.c], R, seed=3)
        variances[rebar] = block_variance(grads)
    (v, s), (v0, s0) = variances[True], variances[False]
    assert v + 4 * (s ** 2 + s0 ** 2) ** 0.5 < v0 / 3, variances


def test_relax_at_one_hot_sites_is_unbiased_for_every_parameter():
    torch.manual_seed(0)
    m, x = OneHotMixture(), torch.randn(3, 2)
    pyro.clear_param_store()
    grads, _ = replicate_gradients(make("relax", num_particles=2), m, (x,), list(m.parameters()), R, seed=8)
    assert_unbiased(grads, exact_gradient(m, x), what="relax at one-hot sites")


def test_relaxs_trained_surrogate_lowers_the_variance_stays_unbiased_and_its_correction_is_needed(belief):
    """80 variance-minimising steps on the surrogate alone: the guide gradient's variance falls by
    more than 4 standard errors (measured: about 2,700 to 1,900), the estimator stays unbiased, and
    without the correction term the same z-test fails (the trained c(z~) biases the score term)."""
    m, x = belief
    exact = guide_gradient(m, x)
    pyro.clear_param_store()
    before, _ = replicate_gradients(make("relax"), m, (x,), [m.A, m.c], R, seed=3)
    pyro.clear_param_store()
    obj = trained_surrogate(m, x)
    after, _ = replicate_gradients(obj, m, (x,), [m.A, m.c], R, seed=4)
    (vb, sb), (va, sa) = block_variance(before), block_variance(after)
    assert va + 4 * (sa ** 2 + sb ** 2) ** 0.5 < vb, (vb, sb, va, sa)
    assert_unbiased(after, exact, what="relax, trained surrogate")
    biased, _ = replicate_gradients(Uncorrected(), m, (x,), [m.A, m.c], R, seed=4)  # the same trained surrogate
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(biased, exact, what="relax without its correction")


def test_relaxs_surrogate_is_trained_by_fit_saved_and_resumed_bit_identically(tmp_path):
    torch.manual_seed(2)
    data = BernoulliBelief(D, X, seed=0).sample_data(40, seed=1)
    settings = dict(batch_size=20, device="cpu", objective="relax", num_particles=2, lr=0.01)
    fit(BernoulliBelief(D, X, seed=0), data, epochs=1, out=tmp_path / "one", **settings)
    one = load_checkpoint(tmp_path / "one")["params"]
    fit(BernoulliBelief(D, X, seed=0), data, epochs=2, out=tmp_path / "a", **settings)
    fit(BernoulliBelief(D, X, seed=0), data, epochs=1, out=tmp_path / "b", **settings)
    fit(BernoulliBelief(D, X, seed=0), data, epochs=2, out=tmp_path / "b", resume=True, **settings)
    a, b = load_checkpoint(tmp_path / "a")["params"], load_checkpoint(tmp_path / "b")["params"]
    names = [f"param.{n}" for n in Relax().state_names]
    assert set(names) <= set(a) and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["param.relax_surrogate.w1"], one["param.relax_surrogate.w1"])  # trained in epoch 2
    obj = make("relax")  # the objective's state_dict is the param store's copy of the same tensors
    pyro.clear_param_store()
    obj.load_state_dict({n[len("param."):]: a[n] for n in names})
    assert all(torch.equal(v, a[f"param.{k}"]) for k, v in obj.state_dict().items())


def test_relax_refuses_bad_input_in_one_line(belief):
    m, x = belief
    for options, match in [({"hidden": 0}, "hidden must be an integer >= 1"),
                           ({"temperature": 0.0}, "temperature .* must be a finite number > 0"),
                           ({"rebar": "yes"}, "rebar must be true or false")]:
        with pytest.raises(PPModelsError, match=match):
            make("relax", **options)
    c = CategoricalGaussian()
    pyro.clear_param_store()
    with pytest.raises(PPModelsError, match="'z' .* neither Bernoulli nor one-hot.*rloo"):
        make("relax").differentiable_loss(c.model, c.guide, torch.randn(4, 2))
    obj = make("relax")
    pyro.clear_param_store()
    obj.init_state(m.model, m.guide, (x,), {})
    held = obj.state_dict()
    with pytest.raises(PPModelsError, match="'reinforce_baseline_avg' is not its state"):
        obj.load_state_dict({"reinforce_baseline_avg": torch.zeros(())})
    bad = {**{k: v + 1 for k, v in held.items()}, "relax_surrogate.w1": torch.zeros(3, 3)}
    with pytest.raises(PPModelsError, match="has shape .* for the same program"):
        obj.load_state_dict(bad)
    assert all(torch.equal(v, held[k]) for k, v in obj.state_dict().items())  # a failed load changes nothing


class BinaryOnly(BernoulliBelief):
    """A model that refuses values other than 0 and 1 (as a program indexing with its latent would)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Bernoulli(logits=self.prior_logits).to_event(1))
            if not bool(((z == 0) | (z == 1)).all()):
                raise ValueError("binary values only")
            pyro.sample("x", pyro.distributions.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)


def test_relax_on_a_program_that_cannot_take_relaxed_values_says_to_drop_rebars_term():
    m, x = BinaryOnly(D, X, seed=0), torch.randn(3, X)
    pyro.clear_param_store()
    with pytest.raises(PPModelsError, match="does not run at relaxed values .*ValueError: binary values only.*"
                                            "relax:rebar=false"):
        make("relax").differentiable_loss(m.model, m.guide, x)
    assert not [n for n in pyro.get_param_store().keys() if n.startswith("relax_surrogate.")]  # made, then removed
    make("relax", rebar=False).differentiable_loss(m.model, m.guide, x).backward()


# -- reweighted wake-sleep --------------------------------------------------------------------------
class UniformWeights(Rws):
    """RWS with 1/K in place of the self-normalized weights (a wrong estimator)."""

    def weights(self, log_w):
        return torch.full_like(log_w, 1.0 / log_w.shape[0])


def exact_rws_gradient(m, x, K):
    """Minus the gradient of E[sum_k w~_k (log p(x, z_k) + log q(z_k))] on the one-hot mixture, by
    summing over its 4^K particle tuples per datapoint (weights and tuple probabilities held fixed)."""
    log_q = torch.log_softmax(x @ m.A.T, -1)                                           # (N, 4)
    log_joint = torch.log_softmax(m.prior, -1) + pyro.distributions.Normal(m.W.T, 1.0).log_prob(x[:, None]).sum(-1)
    tuples = torch.tensor(list(itertools.product(range(4), repeat=K)), device=x.device).T              # (K, T)
    lq, lj = log_q[:, tuples], log_joint[:, tuples]                                    # (N, K, T)
    weights = torch.softmax((lj - lq).detach(), 1)
    expected = (lq.sum(1).exp().detach() * (weights * (lj + lq)).sum(1)).sum()
    return -torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected, list(m.parameters()))])


def test_rws_is_unbiased_for_its_expected_update_and_uniform_weights_are_detected():
    torch.manual_seed(0)
    m, x = OneHotMixture(), torch.randn(3, 2)
    exact = exact_rws_gradient(m, x, 3)
    grads, _ = replicate_gradients(make("rws", num_particles=3), m, (x,), list(m.parameters()), R, seed=5)
    assert_unbiased(grads, exact, what="rws K=3")
    wrong, _ = replicate_gradients(UniformWeights(num_particles=3), m, (x,), list(m.parameters()), R, seed=5)
    with pytest.raises(AssertionError, match="max \\|z\\|"):
        assert_unbiased(wrong, exact, what="rws with uniform weights")


def test_rws_has_the_expected_gradient_of_pyros_reweighted_wake_sleep(belief):
    """On one datapoint (no minibatch: Pyro's whole-batch weights are ours): a two-sample z-test of
    the mean gradients, every model and guide parameter; uniform weights fail the same test."""
    m, x = belief
    x = x[:1]
    params = list(m.parameters())
    pyro_grads, _ = replicate_gradients(make(ReweightedWakeSleep(num_particles=3)), m, (x,), params, 200, seed=6)
    ours, _ = replicate_gradients(make("rws", num_particles=3), m, (x,), params, R, seed=7)
    wrong, _ = replicate_gradients(UniformWeights(num_particles=3), m, (x,), params, R, seed=7)

    def z(a, b):
        se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt().clamp_min(1e-12)
        return float(((a.mean(0) - b.mean(0)) / se).abs().max())

    assert z(ours, pyro_grads) < Z_BOUND
    assert z(wrong, pyro_grads) > Z_BOUND


def test_rws_trains_a_model_in_fit_with_minibatches():
    truth = BernoulliBelief(D, X, seed=0)
    data = truth.sample_data(200, seed=1)
    m = BernoulliBelief(D, X, seed=3)

    def log_marginal(model):
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))
        with torch.no_grad():
            prior = pyro.distributions.Bernoulli(logits=model.prior_logits).log_prob(states).sum(-1)
            lik = pyro.distributions.Normal(states @ model.W.T + model.b, model.noise).log_prob(data[:, None]).sum(-1)
            return float(torch.logsumexp(prior + lik, -1).mean())

    before = log_marginal(m)
    history = fit(m, data, objective="rws", num_particles=5, epochs=4, batch_size=20, lr=0.02, device="cpu")
    assert len(history) == 4 and history.attrs["objective"].startswith("Rws")
    after = log_marginal(m)
    assert after > before + 1.0, (before, after)


def test_rws_refuses_bad_input_in_one_line():
    with pytest.raises(PPModelsError, match="num_particles must be >= 2"):
        make("rws", num_particles=1)
    with pytest.raises(PPModelsError, match="does not take option.*reparameterized"):
        make("rws", reparameterized=True)
    c = CategoricalGaussian(subsample_size=2)

    def global_guide(x):  # a latent outside the data plate: the batch is one term, and it is subsampled
        pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))
        c.guide(x)

    def global_model(x):
        pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))
        c.model(x)

    with pytest.raises(PPModelsError, match="per-datapoint terms under subsampling"):
        make("rws").loss(global_model, global_guide, torch.randn(6, 2))


@pytest.mark.cuda
def test_relax_and_rws_on_cuda():
    """The same z-tests on the GPU: RELAX against the enumerated ELBO gradient (its surrogate's
    params created on the device), RWS against its enumerated expected update."""
    torch.manual_seed(1)
    m, x = BernoulliBelief(D, X).cuda(), torch.randn(3, X, device="cuda")
    pyro.clear_param_store()
    grads, _ = replicate_gradients(make("relax", num_particles=2), m, (x,), [m.A, m.c], R, seed=3)
    assert_unbiased(grads, guide_gradient(m, x), what="relax on cuda")
    assert all(v.is_cuda for v in make("relax").state_dict().values())
    torch.manual_seed(0)
    m, x = OneHotMixture().cuda(), torch.randn(3, 2, device="cuda")
    grads, _ = replicate_gradients(make("rws", num_particles=3), m, (x,), list(m.parameters()), R, seed=5)
    assert_unbiased(grads, exact_rws_gradient(m, x, 3), what="rws on cuda")


def test_the_variance_lab_takes_relax_and_rws_and_refuses_an_empty_study_in_one_line(tmp_path, capsys):
    from ppmodels.cli import main

    args = ["variance", "--model", "bernoulli-belief", "--num-particles", "2", "--replicates", "20",
            "--batch-size", "4", "--out", str(tmp_path / "lab")]
    assert main([*args, "--objectives", "disarm,relax,rws"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["relax"], ["rws"])]
    assert sorted((r[0], r[2]) for r in rows) == [("relax", "guide"), ("relax", "model"), ("rws", "guide"), ("rws", "model")]
    assert main([*args[:4], "1", *args[5:], "--objectives", "rws"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no objective ran; rws K=1" in err[0] and "num_particles must be >= 2" in err[0], err


def test_the_lab_on_a_relax_run_measures_the_surrogate_it_trained(fake_mnist, tmp_path, capsys):
    """`ppmodels variance --model RUN --objectives relax` puts the run's trained surrogate in the
    param store (the CLI way to study RELAX as trained): the study starts from it, and leaves the
    store as it started."""
    from ppmodels.cli import main

    run = tmp_path / "sbn"
    assert main(["train", "sbn", "--objective", "relax", "-K", "2", "--steps", "6", "--batch-size", "20", "--out",
                 str(run), "--quiet", "--train-subset", "100", "--eval-subset", "10", "--num-samples", "4"]) == 0
    saved = load_checkpoint(run)["params"]
    pyro.clear_param_store()
    capsys.readouterr()
    assert main(["variance", "--model", str(run), "--objectives", "relax", "--num-particles", "2", "--replicates",
                 "6", "--batch-size", "4", "--out", str(tmp_path / "lab")]) == 0
    assert "relax" in capsys.readouterr().out
    store = pyro.get_param_store()
    for name in ("w1", "b1", "w2", "b2", "log_temperature"):
        assert torch.equal(store[f"relax_surrogate.{name}"].detach(), saved[f"param.relax_surrogate.{name}"])
    assert not torch.equal(saved["param.relax_surrogate.b1"], torch.zeros_like(saved["param.relax_surrogate.b1"]))
