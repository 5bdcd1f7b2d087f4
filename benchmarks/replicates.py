"""Vectorized replicate gradients vs the naive loop of R forward/backward passes.

    python benchmarks/replicates.py [--device auto] [--replicates 1000]

Targets (issue: estimator-variance lab): >= 10x for R = 1000 on LinearGaussian, >= 3x on the
MNIST VAE batch. Both paths run in one process, interleaved; the ratio is loop / vectorized.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, interleaved, print_table, ratio, write_csv  # noqa: E402

from ppmodels.analysis import replicate_gradients  # noqa: E402
from ppmodels.data import synthetic_images  # noqa: E402
from ppmodels.models import VAE, LinearGaussian  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--device", default="auto")
p.add_argument("--replicates", type=int, default=1000)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--vae-replicates", type=int, default=200)
args = p.parse_args()
device = resolve_device(args.device)

rows = []
lg = LinearGaussian(5, 2, seed=0).to(device)
x = lg.sample_data(4, seed=1).to(device)
vae = VAE.preset("pyro").to(device)
images, _ = synthetic_images(16, seed=0)
xv = torch.bernoulli(images.float().div(255)).to(device)
cases = [
    ("LinearGaussian (5, 2), batch 4, elbo", lg, x, list(lg.parameters()), args.replicates, "elbo"),
    ("LinearGaussian (5, 2), batch 4, iwae K=5", lg, x, list(lg.parameters()), args.replicates, "iwae"),
    ("VAE pyro preset, batch 16, elbo", vae, xv, list(vae.parameters()), args.vae_replicates, "elbo"),
    ("VAE pyro preset, batch 16, elbo, decoder output layer only", vae, xv, [vae.decoder[-1].bias], args.vae_replicates, "elbo"),
]
from ppmodels.objectives import make  # noqa: E402

for label, m, data, params, R, name in cases:
    obj = make(name, num_particles=5 if name == "iwae" else 1)
    times = interleaved({
        "vectorized": lambda: replicate_gradients(obj, m, (data,), params, R, seed=0),
        "loop": lambda: replicate_gradients(obj, m, (data,), params, R, seed=0, vectorize=False),
    }, rounds=args.rounds, device=device)
    med, lo, hi = ratio(times["loop"], times["vectorized"])
    rows.append({"case": label, "replicates": R, "vectorized_s": min(times["vectorized"]), "loop_s": min(times["loop"]),
                 "speedup_median": med, "speedup_min": lo, "speedup_max": hi})
env = environment(device)
print(env)
print_table(rows)
print("wrote", write_csv([{**r, **env} for r in rows], f"replicates-{device.type}.csv"))
