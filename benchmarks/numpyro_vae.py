"""The anchor: the VAE preset "pyro" (784-400-50, softplus, Bernoulli pixels) in NumPyro, trained
by SVI with ``jax.jit(svi.update)`` and flax modules, as NumPyro's VAE example writes it, on the same
synthetic images dynamically binarized. Prints one JSON line: the seconds of each epoch.

    python benchmarks/numpyro_vae.py [--images 12000] [--epochs 3] [--batch 128]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import linen as nn
from numpyro.contrib.module import flax_module
from numpyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).parent.parent))
from ppmodels.data import synthetic_images  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--images", type=int, default=12000)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--batch", type=int, default=128)
args = p.parse_args()


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.softplus(nn.Dense(400)(x))
        return nn.Dense(50)(h), nn.softplus(nn.Dense(50)(h)) + 1e-3


class Decoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        return nn.Dense(784)(nn.softplus(nn.Dense(400)(z)))


def model(x):
    decoder = flax_module("decoder", Decoder(), input_shape=(1, 50))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(50), 1.0).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


def guide(x):
    encoder = flax_module("encoder", Encoder(), input_shape=(1, 784))
    loc, scale = encoder(x)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


images = synthetic_images(args.images, seed=0)[0].reshape(args.images, -1).float().div(255).numpy()
svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
key = jax.random.PRNGKey(0)
state = svi.init(key, jnp.asarray(images[: args.batch]))
update = jax.jit(svi.update)
rng = np.random.default_rng(0)
seconds = []
for epoch in range(args.epochs):
    t0 = time.perf_counter()
    order = rng.permutation(args.images)
    for i in range(args.images // args.batch):
        grey = images[order[i * args.batch:(i + 1) * args.batch]]
        x = jnp.asarray((rng.random(grey.shape, dtype=np.float32) < grey).astype(np.float32))
        state, loss = update(state, x)
    loss.block_until_ready()
    seconds.append(time.perf_counter() - t0)
print(json.dumps({"epoch_seconds": seconds}))
