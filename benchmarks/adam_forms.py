"""Adam's three CPU forms on the VAE's parameters (preset "pyro", 689k): torch's per-tensor
default, multi-tensor (``foreach``) and ``fused``, with the hand-written ELBO step's forward and
backward beside them, each averaged over ``--steps`` steps after a warm-up. What made
``ppmodels.fit.make_optimizer`` choose the fused kernel.

    python benchmarks/adam_forms.py [--batch 20] [--steps 200]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402

from ppmodels.models import VAE  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--batch", type=int, default=20)
p.add_argument("--steps", type=int, default=200)
args = p.parse_args()
torch.manual_seed(0)
model = VAE.preset("pyro")
x = torch.bernoulli(torch.rand(args.batch, 784) * 0.3)
print(f"{sum(p.numel() for p in model.parameters())} parameters, batch {args.batch}, {torch.get_num_threads()} threads")
for name, form in [("per-tensor", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **form)
    forward = backward = update = 0.0
    for i in range(args.steps + 20):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = handwritten.loss(model, x, "elbo")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 20:
            forward, backward, update = forward + t1 - t0, backward + t2 - t1, update + t3 - t2
    ms = 1e3 / args.steps
    print(f"{name:10s}  forward {forward * ms:.3f} ms  backward {backward * ms:.3f} ms  Adam {update * ms:.3f} ms")
