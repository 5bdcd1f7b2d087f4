"""The forms of ``ppmodels.cpu_forms`` against torch's own operations, each compiled by inductor,
at the shapes of the fast path's multi-particle step (the ``burda`` VAE, IWAE at K = 50, batch
128) and of the Pyro VAE at batch 128: the Bernoulli likelihood's forward (summed over pixels),
its ``log1p`` alone, a ``tanh`` layer and a softplus layer. Median ms over ``--repeats``
interleaved calls, the ratio of medians, and the largest difference between the two results in
one process.

    python benchmarks/cpu_forms.py [--repeats 40] [--device cpu]
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, interleaved, print_table, write_csv  # noqa: E402

from ppmodels import cpu_forms  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--repeats", type=int, default=40)
p.add_argument("--device", default="cpu")
args = p.parse_args()
device = torch.device(args.device)
g = torch.Generator().manual_seed(0)
x = torch.bernoulli(torch.full((128, 784), 0.3), generator=g).to(device)

CASES = [
    ("Bernoulli log-likelihood, 50 x 128 x 784, forward", (torch.randn(50, 128, 784, generator=g) * 3, x),
     lambda l, x: -F.binary_cross_entropy_with_logits(l, x.expand_as(l), reduction="none").sum(-1),
     lambda l, x: -cpu_forms.binary_cross_entropy_with_logits(l, x.expand_as(l), None, None, 0).sum(-1)),
    ("log(1 + u), u in [0, 1], 50 x 128 x 784", (torch.rand(50, 128, 784, generator=g),), torch.log1p,
     cpu_forms.log1p_unit),
    ("tanh, 6400 x 200", (torch.randn(6400, 200, generator=g) * 2,), torch.tanh, cpu_forms.tanh),
    ("softplus, 128 x 400", (torch.randn(128, 400, generator=g) * 3,), F.softplus, cpu_forms.softplus),
]

rows = []
for name, inputs, torchs, ours in CASES:
    inputs = tuple(t.to(device) for t in inputs)
    a, b = torch.compile(torchs, dynamic=False), torch.compile(ours, dynamic=False)
    diff = float((a(*inputs) - b(*inputs)).abs().max())
    times = interleaved({"torch": lambda: a(*inputs), "ours": lambda: b(*inputs)}, rounds=args.repeats, device=device,
                        warmup=2)
    t_torch, t_ours = statistics.median(times["torch"]), statistics.median(times["ours"])
    rows.append({"case": name, "torch_ms": round(1e3 * t_torch, 3), "cpu_forms_ms": round(1e3 * t_ours, 3),
                 "ratio": round(t_ours / t_torch, 3), "max_abs_difference": f"{diff:.1e}"})
    print(rows[-1], flush=True)

env = environment(device)
print(env)
print_table(rows)
print("wrote", write_csv([{**r, **env} for r in rows], f"cpu_forms-{device.type}.csv"))
