"""The IS evaluation's levers, one at a time: the chunk budget, and the traced chunk.

    python benchmarks/is_chunks.py [--device auto] [--images 50] [--rounds 4]

Times ``evaluate.log_likelihood`` (K = 5000) at several chunk budgets (the CPU default is
64 MiB), and at the default budget with and without the traced chunk, interleaved in one
process, for both VAE presets. Ratios are to the default (budget 64 MiB, traced).
"""

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, interleaved, print_table, ratio, write_csv  # noqa: E402

from ppmodels import evaluate  # noqa: E402
from ppmodels.data import synthetic_images  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--device", default="auto")
p.add_argument("--images", type=int, default=50)
p.add_argument("--rounds", type=int, default=4)
p.add_argument("-K", type=int, default=5000)
args = p.parse_args()
device = resolve_device(args.device)
pyro.enable_validation(False)

images, _ = synthetic_images(args.images, seed=args.images)
x = torch.bernoulli(images.float().div(255)).to(device)
default = evaluate.memory_budget(device)
rows = []
for preset in ("burda", "pyro"):
    torch.manual_seed(0)
    vae = VAE.preset(preset).to(device)
    cases = {"default (traced)": lambda: evaluate.log_likelihood(vae, x, args.K),
             "default, not traced": lambda: evaluate.log_likelihood(vae, x, args.K, jit=False)}
    for mib in (32, 128, 256, 1024):
        cases[f"{mib} MiB chunks (traced)"] = lambda b=mib << 20: evaluate.log_likelihood(vae, x, args.K, budget=b)
    times = interleaved(cases, rounds=args.rounds, device=device)
    for name, t in times.items():
        med, lo, hi = ratio(t, times["default (traced)"])
        rows.append({"preset": preset, "case": name, "images": args.images, "K": args.K,
                     "default_budget_MiB": default >> 20, "seconds": min(t),
                     "ratio_to_default": med, "ratio_min": lo, "ratio_max": hi})

env = environment(device)
print(env)
print_table(rows)
print("wrote", write_csv([{**r, **env} for r in rows], f"is_chunks-{device.type}.csv"))
