"""Gradient variance for a discrete-latent VAE: REINFORCE (no baseline, decaying average,
neural), VIMCO, and exact enumeration (zero variance: the reference).

The model is `DiscreteVAE(latent="categorical", groups=1, classes=10)` — one 10-way latent, so
`enum` sums it out exactly and its gradient is the exact ELBO gradient. The model is first
trained briefly with REINFORCE and a neural baseline (which also trains the baseline network
the study then uses).

    python examples/dvae_gradient_variance.py --epochs 3 --out runs/dvae-variance
"""

import argparse
from pathlib import Path

import torch

from ppmodels import data
from ppmodels.analysis import gradient_study, plot_study
from ppmodels.fit import fit
from ppmodels.models import DiscreteVAE
from ppmodels.objectives import make

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--replicates", type=int, default=500)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--num-particles", default="2,5,20")
p.add_argument("--device", default="auto")
p.add_argument("--out", default="runs/dvae-variance")
args = p.parse_args()

torch.manual_seed(0)
splits = data.mnist(binarize="dynamic", device=args.device)
dvae = DiscreteVAE("categorical", groups=1, classes=10, hidden=(256,))
neural = make("reinforce", baseline="neural")
fit(dvae, splits["train"], objective=neural, epochs=args.epochs, batch_size=100, lr=1e-3, device=args.device)

x = data.mnist(binarize="fixed", device=args.device)["test"].subset(args.batch_size).full()[0]
objectives = [make("reinforce", baseline="none"), make("reinforce", baseline="decaying"), neural,
              make("vimco", num_particles=2), make("enum")]
Ks = [1] + [int(k) for k in args.num_particles.split(",")]
df = gradient_study(dvae.model, dvae.guide, x, objectives=objectives, num_particles=Ks,
                    replicates=args.replicates, exact=make("enum"), reference_replicates=1, device=args.device)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
df.to_csv(out / "study.csv", index=False)
plot_study(df, out / "study.png", title="Discrete VAE (1 x 10 categorical): score-function estimators")
print(df[["objective", "num_particles", "group", "total_variance", "work_variance", "snr", "max_abs_z", "seconds"]]
      .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
for line in df.attrs["skipped"]:
    print("skipped:", line)
