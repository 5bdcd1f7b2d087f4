import pyro.distributions as dist
import pytest
import torch

from ppmodels.distributions import BernoulliLogits


def test_bernoulli_logits_equals_pyros_independent_bernoulli():
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 4, 7)).requires_grad_()
    x = torch.bernoulli(torch.rand(4, 7))  # broadcasts against the particle dim
    ours, pyros = BernoulliLogits(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert ours.batch_shape == pyros.batch_shape and ours.event_shape == pyros.event_shape
    a, b = ours.log_prob(x), pyros.log_prob(x)
    assert a.shape == (3, 4) and torch.allclose(a, b, atol=1e-5)
    ga, gb = (torch.autograd.grad(v.sum(), logits)[0] for v in (a, b))
    assert torch.allclose(ga, gb, atol=1e-6)
    assert torch.allclose(ours.entropy(), pyros.entropy(), atol=1e-5)
    assert torch.allclose(ours.mean, pyros.mean)
    wide = BernoulliLogits(logits[0]).expand((5, 4))
    assert wide.batch_shape == (5, 4) and wide.sample((2,)).shape == (2, 5, 4, 7)
    assert torch.allclose(wide.log_prob(x)[2], a[0])
    assert bool(ours.support.check(x).all()) and not bool(ours.support.check(x + 0.5).any())


def test_bernoulli_logits_needs_an_event_dim():
    with pytest.raises(ValueError, match="event dimension"):
        BernoulliLogits(torch.tensor(0.0))
