"""Which test digits does a trained VAE's importance-sampled NLL trust? Pareto k-hat per image.

For each test image, S draws from the encoder weight the decoder's likelihood; the Pareto k-hat
of those weights (ArviZ's PSIS, through ``ppmodels.evaluate.importance_diagnostics``) says
whether their mean is a usable estimate of p(x). Above the sample-size-aware threshold
min(1 - 1/log10 S, 0.7) the estimate's error is not controlled. This prints the summary (the
fraction above, the NLL over all images and over the reliable ones) and draws one figure: the
k-hat histogram, k-hat against each image's NLL, and the images with the largest and the
smallest k-hat.

    ppmodels train vae --preset pyro --objective elbo --epochs 10 --batch-size 128 --lr 3e-3 \
        --lr-schedule cosine --seed 0 --device cpu --out runs/vae10 --eval-subset 1000 --num-samples 1000
    python examples/khat_digits.py runs/vae10 --num-samples 1000 --subset 2000 --out runs/vae10/khat-digits.png
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from ppmodels import data, evaluate
from ppmodels.fit import load_run
from ppmodels.utils import resolve_device

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("run_dir")
p.add_argument("--num-samples", type=int, default=1000, help="importance draws S per image")
p.add_argument("--subset", type=int, default=2000, help="the first N test images (fixed binarization)")
p.add_argument("--shown", type=int, default=16, help="images shown at each end of the k-hat order")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="auto")
p.add_argument("--out", default="khat-digits.png")
args = p.parse_args()

out = Path(args.out)
if out.exists():
    raise SystemExit(f"khat_digits: {out} exists; choose another --out or move it away")
device = resolve_device(args.device)
vae, _ = load_run(args.run_dir, device)
test = data.mnist(binarize="fixed", device=device)["test"].subset(args.subset)
torch.manual_seed(args.seed)
table = evaluate.importance_diagnostics(vae, test, args.num_samples)
summary = evaluate.importance_summary(table)
print(json.dumps(summary, indent=2))
khat, nll = table["khat"].to_numpy(), -table["log_lik"].to_numpy()
above = ~(khat <= summary["khat_threshold"])
if above.any():
    print(f"NLL of the {int(above.sum())} images above the threshold: {nll[above].mean():.2f} nats; "
          f"of the {int((~above).sum())} below: {nll[~above].mean():.2f}")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

images = test.full()[0].reshape(-1, 28, 28).cpu().numpy()
order = np.argsort(np.where(np.isnan(khat), np.inf, khat))
n = min(args.shown, len(order) // 2)


def grid(idx: np.ndarray) -> np.ndarray:
    cols = int(np.ceil(np.sqrt(len(idx))))
    rows = int(np.ceil(len(idx) / cols))
    canvas = np.ones((rows * 29 + 1, cols * 29 + 1))
    for j, i in enumerate(idx):
        r, c = divmod(j, cols)
        canvas[1 + r * 29:1 + r * 29 + 28, 1 + c * 29:1 + c * 29 + 28] = 1 - images[i]
    return canvas


fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
finite = khat[np.isfinite(khat)]
axes[0].hist(finite, bins=50, color="0.6")
axes[0].axvline(summary["khat_threshold"], color="C3", linestyle="--",
                label=f"threshold {summary['khat_threshold']:.2f} (S = {args.num_samples})")
axes[0].set_xlabel(r"$\hat k$ per test image")
axes[0].set_ylabel("images")
axes[0].legend(fontsize=8)
axes[0].set_title(f"{summary['frac_above_threshold']:.1%} of {summary['num_data']} above", fontsize=9)
axes[1].scatter(khat, nll, s=3, alpha=0.4, color=np.where(above, "C3", "C0"))
axes[1].axvline(summary["khat_threshold"], color="C3", linestyle="--")
axes[1].set_xlabel(r"$\hat k$")
axes[1].set_ylabel("NLL (nats)")
nll_rel = summary["nll_reliable"]
axes[1].set_title(f"NLL {summary['nll']:.2f} over all, "
                  f"{'-' if nll_rel is None else format(nll_rel, '.2f')} over the reliable", fontsize=9)
for ax, idx, what in ((axes[2], order[::-1][:n], "largest"), (axes[3], order[:n], "smallest")):
    ax.imshow(grid(idx), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"the {n} {what} " + r"$\hat k$" + f" ({khat[idx].min():.2f} to {khat[idx].max():.2f})", fontsize=9)
    ax.axis("off")
fig.suptitle(f"{Path(args.run_dir).name}: Pareto k-hat of the IS log-likelihood, per test image", fontsize=10)
fig.tight_layout()
staged = out.with_name(out.name + ".tmp.png")
fig.savefig(staged, dpi=110)
os.replace(staged, out)
print(f"wrote {out}")
