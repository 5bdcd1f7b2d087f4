"""ppmodels' SVI step vs a hand-written PyTorch step, and ppmodels' IS-NLL evaluation vs a
hand-written batched evaluator and a one-datapoint-at-a-time loop. Interleaved in one process.

    python benchmarks/svi_step.py [--device auto] [--quick]

Targets: SVI step ratio <= 1.10 at batch 128 and <= 1.30 at batch 16; IS-NLL ratio <= 1.20 and
>= 50x faster than the per-datapoint loop. Ratios are ppmodels / hand-written (lower is better).
"""

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402
from common import environment, interleaved, ppmodels_step, print_table, ratio, write_csv  # noqa: E402

from ppmodels import evaluate  # noqa: E402
from ppmodels.data import synthetic_images  # noqa: E402
from ppmodels.fit import fit, make_optimizer  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.objectives import make  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--device", default="auto")
p.add_argument("--quick", action="store_true", help="fewer cases and rounds")
p.add_argument("--steps", type=int, default=20, help="steps per timed block")
p.add_argument("--rounds", type=int, default=7)
p.add_argument("--nll-images", type=int, default=None)
p.add_argument("--no-jit", action="store_true", help="time the plain (untraced) loss and evaluation")
p.add_argument("--pyro-bernoulli", action="store_true",
               help="VAE likelihood as Pyro's Bernoulli(logits).to_event(1), not BernoulliLogits (times that lever)")
p.add_argument("--only", choices=["svi", "nll", "epoch"], action="append", help="run only these parts (repeatable)")
args = p.parse_args()
device = resolve_device(args.device)
pyro.enable_validation(False)
if args.pyro_bernoulli:
    import pyro.distributions as dist

    VAE.likelihood_dist = lambda self, z: dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1)


def batch_of(n: int) -> torch.Tensor:
    images, _ = synthetic_images(n, seed=n)
    return torch.bernoulli(images.float().div(255)).to(device)


def svi_rows() -> list[dict]:
    cases = [("pyro", B, "elbo", 1) for B in (16, 128, 1024)] + [("burda", B, "elbo", 1) for B in (16, 128, 1024)]
    cases += [("burda", 128, name, K) for name in ("iwae", "dreg") for K in (5, 50)]
    if args.quick:
        cases = [c for c in cases if c[1] in (16, 128) and c[3] in (1, 5)]
    rows = []
    for preset, B, name, K in cases:
        # One model and one optimizer serve both paths: timings on this CPU depend on where the
        # parameter tensors sit in memory (two instances can differ by 1.5x), not only on code.
        torch.manual_seed(0)
        ours = theirs = VAE.preset(preset).to(device)
        opt_ours = opt_theirs = make_optimizer(list(ours.parameters()))
        objective = make(name, num_particles=K)
        x = batch_of(B)
        step, kind = ppmodels_step(ours, objective, x, opt_ours, "plain" if args.no_jit else "graph")  # as fit does

        def run_ours():
            for _ in range(args.steps):
                step((x,))

        def run_theirs():
            for _ in range(args.steps):
                handwritten.step(theirs, opt_theirs, x, name, K)

        times = interleaved({"ppmodels": run_ours, "torch": run_theirs}, rounds=args.rounds, device=device, warmup=2)
        med, lo, hi = ratio(times["ppmodels"], times["torch"])
        rows.append({"bench": f"svi_step ({kind})", "preset": preset, "batch": B,
                     "objective": name, "K": K,
                     "ppmodels_ms": 1e3 * min(times["ppmodels"]) / args.steps,
                     "torch_ms": 1e3 * min(times["torch"]) / args.steps,
                     "ratio_median": med, "ratio_min": lo, "ratio_max": hi})
    return rows


def nll_rows() -> list[dict]:
    n = args.nll_images or (10000 if device.type == "cuda" else 100)
    K = 5000
    torch.manual_seed(0)
    vae = VAE.preset("burda").to(device)
    x = batch_of(n)
    # the hand-written evaluator gets the chunk sizes ppmodels picks (a fair comparison)
    bs, chunk = evaluate.chunk_sizes(vae, (x[:8],), K, n)
    print(f"IS evaluation chunks: {bs} datapoints x {chunk} particles")
    loop_n = min(n, 10)

    def run_ours():
        evaluate.log_likelihood(vae, x, K, jit=False if args.no_jit else None)

    def run_batched():
        handwritten.log_likelihood(vae, x, K, batch_size=bs, particle_chunk=chunk)

    def run_loop():  # per datapoint: time loop_n images, scaled to n below
        handwritten.log_likelihood_per_datapoint(vae, x[:loop_n], K, particle_chunk=100)  # as pythae: 100 a pass

    rounds = 5 if not args.quick else 2
    times = interleaved({"ppmodels": run_ours, "batched": run_batched, "loop": run_loop}, rounds=rounds, device=device)
    loop_scaled = [t * n / loop_n for t in times["loop"]]
    med, lo, hi = ratio(times["ppmodels"], times["batched"])
    lmed, llo, lhi = ratio(loop_scaled, times["ppmodels"])
    return [
        {"bench": f"is_nll K={K}", "preset": "burda", "batch": n, "objective": "vs hand-written batched", "K": K,
         "ppmodels_ms": 1e3 * min(times["ppmodels"]), "torch_ms": 1e3 * min(times["batched"]),
         "ratio_median": med, "ratio_min": lo, "ratio_max": hi},
        {"bench": f"is_nll K={K}", "preset": "burda", "batch": n, "objective": f"loop speed-up (per-datapoint, {loop_n} timed)",
         "K": K, "ppmodels_ms": 1e3 * min(times["ppmodels"]), "torch_ms": 1e3 * min(loop_scaled),
         "ratio_median": lmed, "ratio_min": llo, "ratio_max": lhi},
    ]


def epoch_rows() -> list[dict]:
    """One training epoch of the demo configuration (pyro preset, batch 128, dynamic binarization):
    ppmodels.fit vs the same loop written by hand over the same in-memory batches."""
    import time

    from ppmodels.data import TensorData, mnist
    from ppmodels.fit import fit

    try:
        train = mnist(binarize="dynamic", device=device, download=False)["train"]
        label = "MNIST 60k"
    except Exception:  # no cached MNIST: a synthetic set of the same size
        images, _ = synthetic_images(60000, seed=0)
        train = TensorData(images, binarize="dynamic").to(device)
        label = "synthetic 60k"
    if args.quick:
        train = train.subset(10000)
        label += " (first 10k)"
    torch.manual_seed(0)
    ours, theirs = VAE.preset("pyro").to(device), VAE.preset("pyro").to(device)
    theirs.load_state_dict(ours.state_dict())
    opt = make_optimizer(list(theirs.parameters()), lr=1e-3)  # fit makes its own model's optimizer

    def run_ours():
        fit(ours, train, epochs=1, batch_size=128, lr=1e-3, device=device, progress=False, jit=not args.no_jit)

    def run_theirs():
        g = torch.Generator().manual_seed(0)
        gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(0)
        for (x,) in train.batches(128, generator=g, drop_last=True, binarize_generator=gd):
            handwritten.step(theirs, opt, x, "elbo")

    times = interleaved({"ppmodels": run_ours, "torch": run_theirs}, rounds=3, device=device, warmup=0)
    med, lo, hi = ratio(times["ppmodels"], times["torch"])
    return [{"bench": f"epoch ({label})", "preset": "pyro", "batch": 128, "objective": "elbo", "K": 1,
             "ppmodels_ms": 1e3 * min(times["ppmodels"]), "torch_ms": 1e3 * min(times["torch"]),
             "ratio_median": med, "ratio_min": lo, "ratio_max": hi}]


env = environment(device)
print(env)
parts = {"svi": svi_rows, "nll": nll_rows, "epoch": epoch_rows}
rows = [row for name, part in parts.items() if not args.only or name in args.only for row in part()]
print_table(rows)
suffix = "".join(f"-{name}" for name in args.only or []) + ("-quick" if args.quick else "") + ("-nojit" if args.no_jit else "") + ("-pyrobernoulli" if args.pyro_bernoulli else "")
print("wrote", write_csv([{**r, **env} for r in rows], f"svi_step-{device.type}{suffix}.csv"))
