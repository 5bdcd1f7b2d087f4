"""Pyro's Trace_ELBO, TraceGraph_ELBO and RenyiELBO beside ppmodels' estimators, against exact
gradients, on a discrete latent under plate subsampling.

    python examples/pyro_estimators.py --replicates 2000

CategoricalGaussian: a 3-way categorical latent per datapoint, 6 datapoints, the data plate
subsampling 2 per call. References: the exact ELBO gradient (every ELBO estimator) and the
exact gradient of the per-datapoint 3-particle IWAE bound (iwae, and Pyro's RenyiELBO(alpha=0),
whose whole-batch bound with the subsampling scale inside the log shows as bias against it).
"""

import argparse

import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO

from ppmodels.analysis import gradient_study
from ppmodels.models import CategoricalGaussian

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--replicates", type=int, default=2000)
p.add_argument("--out", default=None, help="CSV file for the table")
args = p.parse_args()

cg = CategoricalGaussian(3, 2, seed=0, subsample_size=2)
g = torch.Generator().manual_seed(1)
x = cg.locs.detach()[torch.tensor([0, 1, 2, 0, 1, 2])] + torch.randn(6, 2, generator=g)
df = gradient_study(cg.model, cg.guide, x,
                    objectives=["elbo", "reinforce", "iwae", Trace_ELBO(), TraceGraph_ELBO(), RenyiELBO(alpha=0)],
                    num_particles=[3], replicates=args.replicates, device="cpu", progress=False)
print(df[["objective", "num_particles", "group", "bias_norm", "max_abs_z", "snr", "seconds"]].to_string(index=False))
if args.out:
    df.to_csv(args.out, index=False)
