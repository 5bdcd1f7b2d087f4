"""The fast path (``ppmodels.compiled``) against hand-written eager PyTorch, and NumPyro as the anchor.

One model instance for both sides in one process (the VAE preset "pyro": 784-400-50, softplus;
the same batches and dynamic binarization). The hand-written loop runs with the optimizer
``fit`` uses (``make_optimizer``: torch's fused Adam), the ``ratio`` column, and with
``torch.optim.Adam(params, lr=1e-3)`` as a script would write it (on the CPU, torch's default is
its per-tensor loop), the ``ratio_default_adam`` column:

- ``steady``: one ``fit`` call of ``--epochs`` epochs (``compile_min_steps=1``: the step compiled)
  against as many epochs of the plain ``zero_grad / loss / backward / step`` loop; the epoch times
  after the first (compilation is in the first), ratio of medians, per batch size.
- ``first``: one epoch of a fresh copy of the model through ``fit`` with its default policy (set-up
  included: the probe, parameters, the fast path's choice) against one epoch of the loop on a fresh
  copy; the median of the per-round ratios.
- ``multi``: IWAE and DReG steps at K = 5 and 50 (batch 128, the Burda preset), the compiled step
  against the hand-written one, interleaved.
- ``nll``: ``evaluate.log_likelihood`` at K = 5000 against a hand-written batched evaluator.
- ``numpyro``: the same VAE in NumPyro (``benchmarks/numpyro_vae.py``, its own process, when
  ``numpyro`` is installed: ``pip install -e '.[bench]'``), epochs alternating with ours.

    python benchmarks/fast_path.py [--images 12000] [--batch 20,128] [--epochs 3] [--rounds 2]
                                   [--only steady,first,multi,nll,numpyro] [--nll-images 1000] [--device auto]
                                   [--no-cuda-graphs]

Targets (issue 21): steady <= 0.80 at batch 20 and <= 0.90 at batch 128; first <= 1.10; against
NumPyro <= 1.2 at batch 128; IWAE-50 and DReG-50 <= 0.85.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402
from common import environment, interleaved, ppmodels_step, print_table, ratio, sync, write_csv  # noqa: E402

from ppmodels import evaluate  # noqa: E402
from ppmodels.data import TensorData, synthetic_images  # noqa: E402
from ppmodels.fit import fit, make_optimizer  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.objectives import make  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="auto")
p.add_argument("--images", type=int, default=12000)
p.add_argument("--batch", default="20,128")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--steps", type=int, default=30, help="steps per round in 'multi'")
p.add_argument("--nll-images", type=int, default=1000)
p.add_argument("--only", default="steady,first,multi,nll,numpyro")
p.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, 'multi' compiles without CUDA graphs")
args = p.parse_args()
device = resolve_device(args.device)
only = set(args.only.split(","))
pyro.enable_validation(False)
images, _ = synthetic_images(args.images, seed=0)
train = TensorData(images, binarize="dynamic").to(device)
rows = []


def add(row: dict) -> None:
    """Keep a result and print it at once, so that a run stopped early still shows what it measured."""
    rows.append(row)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def hand_epoch(model, optimizer, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    for (x,) in train.batches(B, generator=g, drop_last=True, binarize_generator=gd):
        handwritten.step(model, optimizer, x, "elbo")


def timed(fn):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def steady_epochs(model, B):
    """ppmodels' epoch times after the first, within one fit call, and its fast path."""
    h = fit(model, train, epochs=args.epochs, batch_size=B, lr=1e-3, device=device, progress=False, compile_min_steps=1)
    seconds = [h["seconds"].iloc[0], *h["seconds"].diff().iloc[1:]]
    return seconds[1:], h.attrs


for B in (int(b) for b in args.batch.split(",")):
    steps = len(train) // B
    if "steady" in only:
        torch.manual_seed(0)
        model = VAE.preset("pyro").to(device)
        ours, theirs, default, attrs = [], [], [], {}
        for _ in range(args.rounds):
            e, attrs = steady_epochs(model, B)
            ours += e
            opt = make_optimizer(list(model.parameters()), lr=1e-3)
            theirs += [timed(lambda: hand_epoch(model, opt, B)) for _ in range(args.epochs)][1:]
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            default += [timed(lambda: hand_epoch(model, opt, B)) for _ in range(args.epochs)][1:]
        add({"bench": "steady epoch", "batch": B, "steps": steps, "ppmodels_s": statistics.median(ours),
                     "torch_s": statistics.median(theirs), "ratio": statistics.median(ours) / statistics.median(theirs),
                     "ratio_default_adam": statistics.median(ours) / statistics.median(default),
                     "fast_path": attrs["fast_path"], "compile_s": attrs["compile_seconds"]})
    if "first" in only:
        torch.manual_seed(0)
        initial = VAE.preset("pyro").to(device)
        r, rd, kinds = [], [], set()
        for i in range(args.rounds):
            a, b, c = copy.deepcopy(initial), copy.deepcopy(initial), copy.deepcopy(initial)
            t_ours = timed(lambda: kinds.add(fit(a, train, epochs=1, batch_size=B, lr=1e-3, device=device,
                                                 progress=False).attrs["fast_path"]))
            loops = [(r, b, make_optimizer(list(b.parameters()), lr=1e-3)),
                     (rd, c, torch.optim.Adam(c.parameters(), lr=1e-3))]
            for out, m, opt in loops[:: 1 if i % 2 == 0 else -1]:  # the two hand loops' order alternates
                out.append(t_ours / timed(lambda: hand_epoch(m, opt, B)))
        add({"bench": "first-call epoch", "batch": B, "steps": steps, "ratio": statistics.median(r),
                     "ratio_default_adam": statistics.median(rd), "fast_path": ",".join(sorted(kinds))})

if "multi" in only:
    for name in ("iwae", "dreg"):
        for K in (5, 50):
            torch.manual_seed(0)
            model = VAE.preset("burda").to(device)
            opt = make_optimizer(list(model.parameters()))
            x = torch.bernoulli(torch.rand(128, 784, device=device) * 0.3)
            step, kind = ppmodels_step(model, make(name, num_particles=K), x, opt, "compiled",
                                       cuda_graphs=not args.no_cuda_graphs)
            times = interleaved({"ppmodels": lambda: [step((x,)) for _ in range(args.steps)],
                                 "torch": lambda: [handwritten.step(model, opt, x, name, K) for _ in range(args.steps)]},
                                rounds=args.rounds + 1, device=device, warmup=1)
            med, lo, hi = ratio(times["ppmodels"], times["torch"])
            add({"bench": f"{name} K={K} step", "batch": 128, "steps": args.steps, "ratio": med,
                         "fast_path": kind + (" (no CUDA graphs)" if args.no_cuda_graphs and device.type == "cuda" else ""),
                         "ppmodels_s": min(times["ppmodels"]) / args.steps,
                         "torch_s": min(times["torch"]) / args.steps})

if "nll" in only:
    torch.manual_seed(0)
    model = VAE.preset("pyro").to(device)
    x = torch.bernoulli(torch.as_tensor(synthetic_images(args.nll_images, seed=3)[0]).float().div(255)).to(device)
    t_ours = timed(lambda: evaluate.log_likelihood(model, x, 5000))
    t_hand = timed(lambda: handwritten.log_likelihood(model, x, 5000, batch_size=100, particle_chunk=500))
    add({"bench": f"IS NLL K=5000, {args.nll_images} images", "ppmodels_s": t_ours, "torch_s": t_hand,
                 "ratio": t_ours / t_hand})

if "numpyro" in only:
    try:
        import numpyro  # noqa: F401

        have = True
    except ImportError:
        have = False
        print("numpyro is not installed (pip install -e '.[bench]'): no anchor")
    if have and device.type == "cpu":
        torch.manual_seed(0)
        model = VAE.preset("pyro")
        ours, theirs = [], []
        for _ in range(args.rounds):
            e, _ = steady_epochs(model, 128)
            ours += e
            out = subprocess.run([sys.executable, str(Path(__file__).parent / "numpyro_vae.py"), "--images",
                                  str(args.images), "--epochs", str(args.epochs)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:])
                break
            theirs += json.loads(out.stdout.strip().splitlines()[-1])["epoch_seconds"][1:]
        if theirs:
            add({"bench": "steady epoch vs NumPyro", "batch": 128, "steps": len(train) // 128,
                         "ppmodels_s": statistics.median(ours), "numpyro_s": statistics.median(theirs),
                         "ratio": statistics.median(ours) / statistics.median(theirs)})

env = environment(device)
print(env)
first = ("bench", "batch", "steps")  # then the columns in the order the rows name them (not a set's order)
keys = [k for k in first if any(k in r for r in rows)] + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in first]
rows = [{k: r.get(k, "") for k in keys} for r in rows]
print_table(rows)
print("wrote", write_csv([{**r, **env} for r in rows], f"fast_path-{device.type}.csv"))
