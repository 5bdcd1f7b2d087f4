"""Figures and table for guides/beta-vae.md from the β sweep's run directories.

    for b in 0.5 1 2 4; do ppmodels train vae --preset pyro --epochs 10 --batch-size 128 --lr 3e-3 \\
        --kl-weight $b --seed 0 --out runs/beta/beta-$b --eval-subset 1000 --num-samples 1000; done
    ppmodels train vae --preset pyro --epochs 10 --batch-size 128 --lr 3e-3 --kl-warmup 2340 --seed 0 \\
        --out runs/beta/warmup --eval-subset 1000 --num-samples 1000
    python examples/beta_vae_figures.py runs/beta/beta-0.5 runs/beta/beta-1 runs/beta/beta-2 runs/beta/beta-4 \\
        runs/beta/warmup --out guides/figures/beta-vae-samples.png

Prints the table (markdown) and writes the sample grids side by side.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from ppmodels.compare import compare_runs  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("runs", nargs="+")
p.add_argument("--out", required=True)
args = p.parse_args()

table = compare_runs(args.runs)
print("| run | β | test NLL (K=1000, 1000 images) | test ELBO | KL (nats) | active units (of 50) | train s |")
print("|---|---|---|---|---|---|---|")
for _, row in table.iterrows():
    beta = row.get("kl_weight", "1 (warm-up)" if "warmup" in row["run"] else 1)
    print(f"| {Path(row['run']).name} | {beta} | {row['test_nll']:.2f} | {row['test_elbo']:.2f} | {row['kl']:.2f} | "
          f"{int(row['active_units'])} | {row['train_seconds']:.0f} |")
fig, axes = plt.subplots(1, len(args.runs), figsize=(3 * len(args.runs), 3.2))
for ax, run in zip(axes, args.runs):
    ax.imshow(mpimg.imread(Path(run) / "samples.png"))
    ax.set_title(Path(run).name)
    ax.axis("off")
fig.tight_layout()
fig.savefig(args.out, dpi=110)
print(f"wrote {args.out}")
