"""Forms of the Bernoulli log-likelihood sum_i x_i l_i - softplus(l_i), forward and backward.

    python benchmarks/bernoulli_forms.py

BernoulliLogits uses the first (BCE-with-logits, summed then negated); the others are the
alternatives weighed against it. Fastest of 6 repeats, ms; one process.
"""

import time

import torch
from torch.nn import functional as F

FORMS = {
    "bce (BernoulliLogits)": lambda l, x: -F.binary_cross_entropy_with_logits(l, x.expand_as(l), reduction="none").sum(-1),
    "x*l - softplus": lambda l, x: (l * x).sum(-1) - F.softplus(l).sum(-1),
    "einsum - softplus": lambda l, x: torch.einsum("...d,...d->...", l, x.expand_as(l)) - F.softplus(l).sum(-1),
    "matmul - softplus": lambda l, x: (l.unsqueeze(-2) @ x.unsqueeze(-1)).reshape(l.shape[:-1]) - F.softplus(l).sum(-1),
}

print(f"{'K x B':>10}  {'form':24}  {'forward ms':>10}  {'fwd+bwd ms':>10}")
for K, B in [(64, 47), (5, 128), (1, 1024), (50, 128)]:
    torch.manual_seed(0)
    l0, x = torch.randn(K, B, 784), torch.bernoulli(torch.rand(B, 784))
    ref = FORMS["bce (BernoulliLogits)"](l0, x)
    for name, f in FORMS.items():
        assert torch.allclose(f(l0, x), ref, atol=1e-3), name
        fwd, both = [], []
        for _ in range(6):
            t0 = time.perf_counter()
            with torch.no_grad():
                f(l0, x)
            fwd.append(time.perf_counter() - t0)
            l = l0.clone().requires_grad_()
            t0 = time.perf_counter()
            f(l, x).sum().backward()
            both.append(time.perf_counter() - t0)
        print(f"{f'{K} x {B}':>10}  {name:24}  {1e3 * min(fwd):10.2f}  {1e3 * min(both):10.2f}")
