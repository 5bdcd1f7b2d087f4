"""Train a zoo VAE with Pyro's own SVI loop and a ppmodels objective, then hand Pyro's
estimators to ppmodels' variance lab.

    python examples/pyro_svi.py --objective iwae --num-particles 5 --steps 300

Every ppmodels objective is a ``pyro.infer.ELBO``: it goes to ``pyro.infer.SVI(loss=...)``
unchanged. In the other direction, a Pyro ELBO instance goes to ``fit``, ``evaluate`` and
``gradient_study``.
"""

import argparse

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from ppmodels import evaluate
from ppmodels.analysis import gradient_study
from ppmodels.data import synthetic_images
from ppmodels.models import VAE
from ppmodels.objectives import make

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--objective", default="iwae")
p.add_argument("--num-particles", type=int, default=5)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch-size", type=int, default=64)
args = p.parse_args()

pyro.set_rng_seed(0)
images, _ = synthetic_images(1000, seed=0)
x = (images.float() / 255 > 0.5).float()
vae = VAE(x_dim=784, z_dim=8, hidden=(64,))

objective = make(args.objective, num_particles=args.num_particles)
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), loss=objective)
for step in range(args.steps):
    batch = x[torch.randint(len(x), (args.batch_size,))]
    loss = svi.step(batch)
    if step % 100 == 0 or step == args.steps - 1:
        print(f"step {step:4d}  {objective.name} loss per image {loss / args.batch_size:8.2f}")

nll = -evaluate.log_likelihood(vae, x[:200], num_samples=200).mean()
print(f"IS log-likelihood (K=200, 200 images): {-nll:.2f} nats per image")

# Pyro's estimators next to ours, on the encoder's output layer and the decoder's
df = gradient_study(vae.model, vae.guide, x[:16], objectives=["elbo", Trace_ELBO(), TraceGraph_ELBO()],
                    num_particles=(1,), replicates=50, exact=None, device="cpu", progress=False,
                    params={"encoder": ["encoder.net.2"], "decoder": ["decoder.2"]})
print(df[["objective", "num_particles", "group", "replicates", "total_variance", "snr"]].to_string(index=False))
