"""How the SVI step time grows with batch size and with K, ppmodels beside hand-written PyTorch
(log-log plot), and the largest particle chunk the IS evaluation fits in one pass.

    python benchmarks/scaling.py [--device auto]
"""

import argparse
import os
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402
from common import RESULTS, environment, interleaved, ppmodels_step, print_table, write_csv  # noqa: E402

from ppmodels.evaluate import memory_budget  # noqa: E402
from ppmodels.fit import make_optimizer  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.objectives import make  # noqa: E402
from ppmodels import program  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--device", default="auto")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--rounds", type=int, default=3)
args = p.parse_args()
device = resolve_device(args.device)
pyro.enable_validation(False)

rows = []
sweeps = [("batch", B, 1) for B in (16, 64, 256, 1024)] + [("K", 128, K) for K in (1, 5, 20, 50)]
for sweep, B, K in sweeps:
    torch.manual_seed(0)
    ours = theirs = VAE.preset("burda").to(device)  # one instance for both paths (memory layout)
    o1 = o2 = make_optimizer(list(ours.parameters()))
    x = torch.bernoulli(torch.rand(B, 784, device=device) * 0.3)
    name = "elbo" if sweep == "batch" else "iwae"
    obj = make(name, num_particles=K)
    step, _ = ppmodels_step(ours, obj, x, o1)
    times = interleaved({
        "ppmodels": lambda: [step((x,)) for _ in range(args.steps)],
        "torch": lambda: [handwritten.step(theirs, o2, x, name, K) for _ in range(args.steps)],
    }, rounds=args.rounds, device=device)
    rows.append({"sweep": sweep, "batch": B, "K": K, "objective": name,
                 "ppmodels_ms": 1e3 * min(times["ppmodels"]) / args.steps,
                 "torch_ms": 1e3 * min(times["torch"]) / args.steps})

vae = VAE.preset("burda").to(device)
x1 = torch.bernoulli(torch.rand(8, 784, device=device) * 0.3)
bytes_per_row = 16 * program.facts(vae.model, vae.guide, (x1,)).numel_per_row  # bytes per (particle, datapoint)
largest_chunk = memory_budget(device) // bytes_per_row
if device.type == "cuda":
    free = torch.cuda.mem_get_info(device)[0]
else:  # MemAvailable (free + reclaimable cache) where Linux reports it
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
env = environment(device)
print(env)
print_table(rows)
print(f"IS evaluation, burda VAE: ~{bytes_per_row} bytes per (particle, datapoint). One chunk's budget "
      f"({memory_budget(device) / 2**20:.0f} MiB) holds {largest_chunk} particle-datapoints; the device's free "
      f"memory ({free / 2**30:.1f} GiB) would hold K = {free // bytes_per_row} for one image in a single pass. "
      "Any K runs, in particle chunks.")
write_csv([{**r, **env} for r in rows], f"scaling-{device.type}.csv")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, sweep, xlabel in ((axes[0], "batch", "batch size (elbo, K = 1)"), (axes[1], "K", "K (iwae, batch 128)")):
    sel = [r for r in rows if r["sweep"] == sweep]
    xs = [r["batch"] if sweep == "batch" else r["K"] for r in sel]
    ax.plot(xs, [r["ppmodels_ms"] for r in sel], "o-", label="ppmodels")
    ax.plot(xs, [r["torch_ms"] for r in sel], "s--", label="hand-written torch")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms per SVI step")
    ax.grid(True, which="both", alpha=0.3)
axes[0].legend()
fig.suptitle(f"SVI step time, burda VAE ({env['device']})", fontsize=10)
fig.tight_layout()
RESULTS.mkdir(exist_ok=True)
fig.savefig(RESULTS / f"scaling-{device.type}.png", dpi=110)
print("wrote", RESULTS / f"scaling-{device.type}.png")
