"""Whole training epochs through ``ppmodels.fit`` against a hand-written PyTorch loop.

Both sides train the same model instance (Burda et al.'s one-layer VAE, 784-200-200-50, tanh)
on the same batches with the same dynamic binarization (the data set's own batch iterator,
same seed); the hand-written side is the plain ``zero_grad / loss / backward / step`` loop
over :mod:`handwritten`'s ELBO. Each round is one ``fit`` call with its data check, parameter
collection, callbacks and history row; the loss's trace is the one the warm-up round made,
re-checked and reused, as in any repeated ``fit`` call on one model. ``--first-call``: every
round on a fresh copy of the initial model (both sides), so ``fit`` also traces the loss and
the graph executor warms up, as in a script's single ``fit`` call.
Interleaved rounds; the ratio is the median of the per-round ratios (ppmodels / torch).

    python benchmarks/epoch.py [--images 60000] [--batch 20,128] [--rounds 5] [--first-call] [--device auto]

Target: <= 1.10 at batch 20 and at batch 128.
"""

import argparse
import copy
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402
from common import environment, interleaved, print_table, ratio, write_csv  # noqa: E402

from ppmodels.data import TensorData, mnist, synthetic_images  # noqa: E402
from ppmodels.fit import fit, make_optimizer  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="auto")
p.add_argument("--images", type=int, default=60000, help="training images per epoch (default: all of MNIST)")
p.add_argument("--batch", default="20,128", help="comma-separated batch sizes")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--no-jit", action="store_true", help="fit with the plain (untraced) loss")
p.add_argument("--first-call", action="store_true", help="each round on a fresh copy of the model (fit traces anew)")
args = p.parse_args()
device = resolve_device(args.device)
pyro.enable_validation(False)

try:
    train = mnist(binarize="dynamic", device=device, download=False)["train"]
    label = "MNIST"
except Exception:  # no cached MNIST: synthetic images of the same shape
    images, _ = synthetic_images(60000, seed=0)
    train = TensorData(images, binarize="dynamic").to(device)
    label = "synthetic"
train = train.subset(min(args.images, len(train)))
label = f"{label} {len(train)}"

torch.manual_seed(0)
initial = VAE.preset("burda").to(device)
rows = []
for B in (int(b) for b in args.batch.split(",")):
    # one instance for both sides of a round: the same one throughout, or (--first-call) a fresh
    # copy each round, made before the round's timings
    copies = [copy.deepcopy(initial) for _ in range(1 + args.rounds)] if args.first_call else None
    now = {"model": initial, "opt": make_optimizer(list(initial.parameters()), lr=1e-3, eps=1e-4)}

    def run_ours(B=B, copies=copies, now=now):
        if copies:
            now["model"] = copies.pop()
            now["opt"] = make_optimizer(list(now["model"].parameters()), lr=1e-3, eps=1e-4)
        fit(now["model"], train, epochs=1, batch_size=B, lr=1e-3, eps=1e-4, device=device, progress=False,
            jit=False if args.no_jit else None)

    def run_theirs(B=B, now=now):
        g = torch.Generator().manual_seed(0)
        gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(0)
        for (x,) in train.batches(B, generator=g, drop_last=True, binarize_generator=gd):
            handwritten.step(now["model"], now["opt"], x, "elbo")

    times = interleaved({"ppmodels": run_ours, "torch": run_theirs}, rounds=args.rounds, device=device, warmup=1)
    med, lo, hi = ratio(times["ppmodels"], times["torch"])
    steps = len(train) // B
    rows.append({"bench": f"epoch ({label}){', first call' if args.first_call else ''}", "batch": B, "steps": steps,
                 "ppmodels_s": min(times["ppmodels"]), "torch_s": min(times["torch"]),
                 "ppmodels_us_step": 1e6 * min(times["ppmodels"]) / steps, "torch_us_step": 1e6 * min(times["torch"]) / steps,
                 "ratio_median": med, "ratio_min": lo, "ratio_max": hi})

env = environment(device)
print(env)
print_table(rows)
suffix = ("-nojit" if args.no_jit else "") + ("-first" if args.first_call else "")
print("wrote", write_csv([{**r, **env} for r in rows], f"epoch-{device.type}{suffix}.csv"))
