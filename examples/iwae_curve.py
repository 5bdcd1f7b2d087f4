"""The NLL-against-passes curve of runs made by examples/reproduce_iwae.py, with the paper's
final values as horizontal lines; and (``--final``) each run's latest checkpoint evaluated by
the paper's protocol (K = 5000 on all 10,000 test images), written to its ``final.json``.

    python examples/iwae_curve.py runs/table1/vae-k1 runs/table1/iwae-k5 --final --out guides/figures/iwae-curve.png
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ppmodels import data, evaluate
from ppmodels.fit import load_checkpoint
from ppmodels.models import VAE

PAPER = {"VAE k=1": 86.76, "IWAE k=5": 85.54, "IWAE k=50": 84.78}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("runs", nargs="+")
p.add_argument("--final", action="store_true", help="evaluate each run's latest checkpoint on all test images")
p.add_argument("--num-samples", type=int, default=5000)
p.add_argument("--images", type=int, default=None, help="test images for --final (default: all)")
p.add_argument("--threads", type=int, default=None)
p.add_argument("--out", default="iwae-curve.png")
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

rows = []
for run in map(Path, args.runs):
    history = pd.read_csv(run / "history.csv")
    ckpt = load_checkpoint(run, map_location="cpu")
    objective = ckpt["objective"]
    label = f"{objective['name'].upper() if objective['name'] == 'iwae' else 'VAE'} k={objective['num_particles']}"
    for _, r in history.dropna(subset=["test_nll"]).iterrows():
        rows.append({"run": label, "passes": int(r["epoch"]), "nll": r["test_nll"], "images": "first 1000",
                     "active_units": r.get("active_units"), "train_hours": r["seconds"] / 3600})
    final = run / "final.json"
    report = run / "report.json"  # a finished run: reproduce_iwae.py's own final evaluation
    if report.exists():
        r = json.loads(report.read_text())
        final.write_text(json.dumps({"passes": r["passes"], "nll": r["test_nll"], "images": r["nll_images"],
                                     "num_samples": r["nll_samples"], "seconds": r["nll_seconds"],
                                     "active_units": r["active_units"],
                                     "train_hours": history["seconds"].iloc[-1] / 3600}))  # resumed parts too
    elif args.final and not (final.exists() and json.loads(final.read_text())["passes"] == ckpt["epoch"]):
        model = VAE(**ckpt["meta"]["config"])
        model.load_state_dict({k[len("module."):]: v for k, v in ckpt["params"].items() if k.startswith("module.")})
        test = data.mnist(binarize="dynamic", device="cpu")["test"]
        test = test.subset(args.images) if args.images else test
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        nll = -float(evaluate.log_likelihood(model, test, args.num_samples, generator=g).mean())
        final.write_text(json.dumps({"passes": ckpt["epoch"], "nll": nll, "images": len(test),
                                     "num_samples": args.num_samples, "seconds": time.perf_counter() - t0,
                                     "active_units": sum(evaluate.active_units(model, test, generator=g).values()),
                                     "train_hours": ckpt["seconds"] / 3600}, indent=2))
    if final.exists():
        f = json.loads(final.read_text())
        rows.append({"run": label, "passes": f["passes"], "nll": f["nll"], "images": f"all {f['images']}",
                     "active_units": f["active_units"], "train_hours": f["train_hours"]})

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 4))
for (label, part), color in zip(table.groupby("run"), ("C0", "C1", "C2")):
    ax.plot(part["passes"], part["nll"], "o-", color=color, label=f"ppmodels {label}")
    paper = PAPER.get(label)
    if paper:
        ax.axhline(paper, color=color, ls="--", lw=1, label=f"Burda et al. {label} (3280 passes)")
ax.set_xscale("log")
ax.set_xlabel("passes over the training set")
ax.set_ylabel("test NLL (nats, K = 5000)")
ax.set_title("1-layer MNIST model, Burda et al.'s recipe (schedule over 328 passes)")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print("wrote", args.out)
