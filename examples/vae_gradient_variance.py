"""Gradient variance of the Gaussian VAE on MNIST, at a trained checkpoint.

Pathwise (reparameterized) vs score-function vs analytic-KL vs STL gradients of the ELBO, per
parameter group (decoder = model, encoder = guide), as variance ratios to the pathwise
estimator. The ELBO has no closed form here, so no bias column: all four are unbiased for the
same gradient.

    ppmodels train vae --preset burda --epochs 20 --out runs/vae-elbo   # or any trained run
    python examples/vae_gradient_variance.py runs/vae-elbo --out runs/vae-variance
"""

import argparse
from pathlib import Path

import torch

from ppmodels import data
from ppmodels.analysis import gradient_study, plot_study
from ppmodels.fit import load_run
from ppmodels.utils import resolve_device
from ppmodels.objectives import make

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("run_dir")
p.add_argument("--replicates", type=int, default=500)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--device", default="auto")
p.add_argument("--out", default="runs/vae-variance")
args = p.parse_args()

device = resolve_device(args.device)
vae, _ = load_run(args.run_dir, device)
x = data.mnist(binarize="fixed", device=device)["test"].subset(args.batch_size).full()[0]
objectives = [make("elbo"), make("elbo", reparameterized=False), make("meanfield"), make("stl")]
df = gradient_study(vae.model, vae.guide, x, objectives=objectives, num_particles=[1],
                    replicates=args.replicates, device=device, exact=None)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
df.to_csv(out / "study.csv", index=False)
plot_study(df, out / "study.png", title="VAE (MNIST): ELBO gradient estimators")
base = df[df["objective"] == "elbo"].set_index("group")["total_variance"]
df["variance_ratio_to_pathwise"] = df.apply(lambda r: r["total_variance"] / base[r["group"]], axis=1)
print(df[["objective", "group", "total_variance", "variance_ratio_to_pathwise", "snr", "seconds"]]
      .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
