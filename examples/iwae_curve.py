"""The NLL-against-passes curve of runs made by examples/reproduce_iwae.py, with the paper's
final values as horizontal lines.

Each run's curve is on one image set, the first ``--curve-images`` test images (the points its
``--nll-at`` callback measured, and its latest checkpoint evaluated here the same way: K = 5000,
the test images binarized with seed 0); its final NLL on all 10,000 test images (the run's
``report.json``, or with ``--final`` its latest checkpoint evaluated here) is a separate marker,
and so are the checkpoints the run kept along the way (``checkpoint-epoch{N}.pt``, kept at the
``--nll-at`` passes), evaluated here on all 10,000 test images. Evaluations are cached in the
run's ``final.json``.

    python examples/iwae_curve.py runs/table1/vae-k1 runs/table1/iwae-k5 --final --out guides/figures/iwae-curve.png
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ppmodels import data, evaluate
from ppmodels.fit import load_run
from ppmodels.rundir import KEPT
from ppmodels.models import VAE

PAPER = {"VAE k=1": 86.76, "IWAE k=5": 85.54, "IWAE k=50": 84.78}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("runs", nargs="+")
p.add_argument("--final", action="store_true", help="evaluate an unfinished run's latest checkpoint on all test images")
p.add_argument("--num-samples", type=int, default=5000)
p.add_argument("--curve-images", type=int, default=1000, help="the test images of the curve (as --curve-images of the runs)")
p.add_argument("--threads", type=int, default=None)
p.add_argument("--out", default="iwae-curve.png")
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
test = data.mnist(binarize="dynamic", device="cpu")["test"]


def nll(model: VAE, images: int | None) -> tuple[float, float, int]:
    """(NLL, seconds, active units) on the first ``images`` test images (None: all)."""
    part = test.subset(images) if images else test
    g = torch.Generator().manual_seed(0)  # the binarization
    torch.manual_seed(0)  # the importance samples
    t0 = time.perf_counter()
    value = evaluate.mean_nll(model, part, args.num_samples, generator=g)
    return value, time.perf_counter() - t0, sum(evaluate.active_units(model, part, generator=g).values())


rows = []
for run in map(Path, args.runs):
    history = pd.read_csv(run / "history.csv")
    model, ckpt = load_run(run, device="cpu")
    objective = ckpt["objective"]
    label = f"{objective['name'].upper() if objective['name'] == 'iwae' else 'VAE'} k={objective['num_particles']}"
    hours = history["seconds"].iloc[-1] / 3600  # the run's training wall time, resumed parts included
    cache_path = run / "final.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cache.get("passes") != ckpt["epoch"]:  # the run went on; its kept checkpoints stay as they were
        cache = {"passes": ckpt["epoch"], "kept": cache.get("kept", {})}
    report = run / "report.json"  # a finished run: reproduce_iwae.py's own final evaluation
    if report.exists():
        r = json.loads(report.read_text())
        cache.update(nll=r["test_nll"], images=r["nll_images"], active_units=r["active_units"])
    elif args.final and "nll" not in cache:
        value, seconds, units = nll(model, None)
        cache.update(nll=value, images=len(test), active_units=units, seconds=seconds)
    if "curve_nll" not in cache:
        cache["curve_nll"], cache["curve_seconds"], _ = nll(model, args.curve_images)
    kept = cache.setdefault("kept", {})  # pass -> NLL etc. on all test images
    for path in run.iterdir():
        match = KEPT.fullmatch(path.name)
        if not match or match.group(2) or match.group(1) in kept or int(match.group(1)) >= ckpt["epoch"]:
            continue
        early, state = load_run(path, device="cpu")
        passes = str(state["epoch"])
        value, seconds, units = nll(early, None)
        kept[passes] = {"nll": value, "images": len(test), "active_units": units, "seconds": seconds}
        cache_path.write_text(json.dumps(cache, indent=2))
    cache_path.write_text(json.dumps(cache, indent=2))

    for _, r in history.dropna(subset=["test_nll"]).iterrows():
        rows.append({"run": label, "passes": int(r["epoch"]), "nll": r["test_nll"], "images": f"first {args.curve_images}",
                     "active_units": r.get("active_units"), "train_hours": r["seconds"] / 3600})
    rows.append({"run": label, "passes": ckpt["epoch"], "nll": cache["curve_nll"], "images": f"first {args.curve_images}",
                 "active_units": None, "train_hours": hours})
    trained = history.set_index("epoch")["seconds"] / 3600
    for passes, k in sorted(kept.items(), key=lambda item: int(item[0])):
        rows.append({"run": label, "passes": int(passes), "nll": k["nll"], "images": f"all {k['images']}",
                     "active_units": k["active_units"], "train_hours": trained.get(int(passes))})
    if "nll" in cache:
        rows.append({"run": label, "passes": ckpt["epoch"], "nll": cache["nll"], "images": f"all {cache['images']}",
                     "active_units": cache["active_units"], "train_hours": hours})

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6.4, 4.2))
for (label, part), color in zip(table.groupby("run", sort=False), ("C0", "C1", "C2")):
    curve = part[part["images"].str.startswith("first")]
    ax.plot(curve["passes"], curve["nll"], "o-", color=color, label=f"ppmodels {label}, first {args.curve_images} test images")
    whole = part[part["images"].str.startswith("all")]
    ax.plot(whole["passes"], whole["nll"], "s:", color=color, mfc="none", ms=8,
            label=f"ppmodels {label}, all 10,000 test images")
    paper = PAPER.get(label)
    if paper:
        ax.axhline(paper, color=color, ls="--", lw=1, label=f"Burda et al. {label} (3280 passes)")
ax.set_xscale("log")
ax.set_xticks(sorted(set(table["passes"])), [str(v) for v in sorted(set(table["passes"]))])
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.set_xlabel("passes over the training set")
ax.set_ylabel("test NLL (nats, K = 5000)")
ax.set_title("1-layer MNIST model, Burda et al.'s recipe (schedule over 328 passes)")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print("wrote", args.out)
