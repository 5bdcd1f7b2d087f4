"""Two-way interoperability with Pyro, RNG hygiene and natural objectives."""

import math
import random

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from ppmodels.analysis import gradient_study
from ppmodels.evaluate import log_likelihood
from ppmodels.fit import fit
from ppmodels.models import CategoricalGaussian, GaussianMixture, LinearGaussian
from ppmodels.objectives import PyroElbo, make


@pytest.mark.parametrize("name,options", [("elbo", {}), ("iwae", {"num_particles": 5}), ("dreg", {"num_particles": 3}),
                                          ("meanfield", {})])
def test_a_ppmodels_objective_trains_in_pyros_svi(name, options):
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(64, seed=1)
    exact_before = m.log_marginal(x).sum().item()
    svi = SVI(m.model, m.guide, Adam({"lr": 0.03}), loss=make(name, **options))
    losses = [svi.step(x) for _ in range(150)]
    assert math.isfinite(losses[-1])
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 5
    assert m.log_marginal(x).sum().item() > exact_before  # the decoder was trained too


@pytest.mark.parametrize("elbo", [Trace_ELBO(), TraceMeanField_ELBO(), TraceGraph_ELBO(),
                                  RenyiELBO(alpha=0.5, num_particles=2)], ids=lambda e: type(e).__name__)
def test_pyros_elbos_train_in_fit_and_match_pyro_svi(elbo):
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(64, seed=1)
    history = fit(m, x, objective=elbo, epochs=30, batch_size=64, lr=0.03, device="cpu")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] - 0.5
    assert history.attrs["objective"].startswith("PyroElbo")


def test_the_loss_and_grads_adapter_reproduces_pyros_gradient_and_keeps_grads():
    m = CategoricalGaussian(3, 2, seed=0)
    x = torch.randn(6, 2)
    params = list(m.parameters())
    for p in params:
        p.grad = torch.ones_like(p)  # the caller's buffers survive the adapter
    pyro.set_rng_seed(3)
    TraceGraph_ELBO().loss_and_grads(m.model, m.guide, x)
    direct = [p.grad.clone() - 1 for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    pyro.set_rng_seed(3)
    loss = make(TraceGraph_ELBO()).differentiable_loss(m.model, m.guide, x)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in params)
    grads = torch.autograd.grad(loss, params)
    for a, b in zip(grads, direct):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradient_study_takes_pyros_elbos_next_to_ours():
    m = CategoricalGaussian(3, 2, seed=0)
    g = torch.Generator().manual_seed(1)
    x = m.locs.detach()[torch.tensor([0, 1, 2])] + torch.randn(3, 2, generator=g)
    df = gradient_study(m.model, m.guide, x, objectives=["elbo", Trace_ELBO(), TraceEnum_ELBO(max_plate_nesting=1),
                                                          RenyiELBO(alpha=0.0, num_particles=3)],
                        num_particles=(3,), replicates=300, device="cpu", progress=False)
    rows = df.set_index(["objective", "group"])
    assert rows.loc[("pyro:Trace_ELBO", "guide"), "max_abs_z"] < 5
    assert rows.loc[("pyro:TraceEnum_ELBO", "guide"), "max_abs_z"] < 5
    # Pyro's RenyiELBO drops the score function: its encoder gradient is identically zero
    assert rows.loc[("pyro:RenyiELBO[alpha=0.0]", "guide"), "mean_norm"] == 0
    assert rows.loc[("pyro:RenyiELBO[alpha=0.0]", "guide"), "bias_norm"] > 0.1


def test_fit_restores_the_callers_random_state():
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    m = LinearGaussian(5, 2, seed=0)
    fit(m, m.sample_data(32, seed=1), epochs=2, batch_size=16, device="cpu", seed=9)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_fitting_another_model_does_not_replay_the_first_ones_noise():
    a, b = LinearGaussian(5, 2, seed=0), LinearGaussian(5, 2, seed=1)
    x = a.sample_data(50, seed=1)
    fit(a, x, epochs=1, batch_size=25, device="cpu", seed=0)
    first = log_likelihood(a, x, 50)
    fit(b, x, epochs=1, batch_size=25, device="cpu", seed=0)
    second = log_likelihood(a, x, 50)
    assert not torch.equal(first, second)  # a fresh Monte-Carlo draw, not a replay


def test_a_zoo_model_trains_with_fits_defaults():
    gmm = GaussianMixture(2, dim=2, covariance="diag")
    assert gmm.default_objective == "enum"
    x = torch.cat([torch.randn(50, 2) - 3, torch.randn(50, 2) + 3])
    history = fit(gmm, x, epochs=3, batch_size=100, device="cpu")
    assert "Enum" in history.attrs["objective"]


def test_an_objective_module_is_pyros_elbo_module():
    m = LinearGaussian(5, 2, seed=0)
    loss_module = make("iwae", num_particles=4)(m.model, m.guide)
    assert isinstance(loss_module, torch.nn.Module)
    assert loss_module(m.sample_data(8, seed=1)).requires_grad
    assert isinstance(make(Trace_ELBO()), PyroElbo)


@pytest.mark.parametrize("shape_name", ["delta_guide_map", "auto_normal_local", "no_model_params", "empty_guide",
                                        "gmm_subsampled", "seq_plate_local", "not_broadcast_safe_discrete"])
def test_gradient_study_runs_on_shapes_we_did_not_write(shape_name):
    """Delta and Bayesian guides, AutoGuides, a side without parameters, subsampling, sequential
    plates, a program written for one sample: the study runs, and agrees with Pyro's Trace_ELBO."""
    from conformance_shapes import VALID

    shape = next(s for s in VALID if s.name == shape_name)
    pyro.clear_param_store()
    Trace_ELBO().loss(shape.model, shape.guide, *shape.args)
    loop = {} if shape.vectorizable else {"vectorize_particles": False}
    df = gradient_study(shape.model, shape.guide, *shape.args, objectives=[make("elbo", num_particles=2, **loop), Trace_ELBO()],
                        num_particles=(2,), replicates=100, exact=None, device="cpu", progress=False)
    assert not df.empty, df.attrs["skipped"]
    assert set(df["objective"]) == {make("elbo", **loop).label, "pyro:Trace_ELBO"}, df.attrs["skipped"]


def test_evaluate_takes_an_explicit_data_plate():
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("rows", len(x)), pyro.plate("cols", x.shape[1], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x.T)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.3))
        with pyro.plate("rows", len(x)), pyro.plate("cols", x.shape[1], dim=-2):
            pyro.sample("z", dist.Normal(loc, 1.0))

    from ppmodels.protocol import ModelGuide

    x = torch.randn(7, 3)
    by_row = log_likelihood(ModelGuide(model, guide), x, 50, data_plate="rows")
    assert by_row.shape == (7,)
    # each row's exact log p(x_row) = sum over its 3 entries of log N(x; 0, 2)
    exact = torch.distributions.Normal(0.0, 2 ** 0.5).log_prob(x).sum(-1)
    assert (by_row - exact).abs().max() < 0.5
