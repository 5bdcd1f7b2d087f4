"""The discrete estimators' cost per gradient step against REINFORCE at the same K, in one process.

    python benchmarks/discrete.py [--device auto] [--rounds 7] [--steps 20]

A linear sigmoid belief net as in the DisARM experiments (784 observed pixels, 200 Bernoulli
latents, batch 50, synthetic binary images), and a linear categorical VAE with Jang et al.'s
20 x 10 one-hot latents (ARM and DisARM by stick-breaking there; RELAX not run), one model
instance for every estimator of a model; a step is the loss and its backward pass. Reported: the median over interleaved rounds of each
estimator's time over REINFORCE's (no baseline) at the same K. Target: RLOO, ARM and DisARM
within 1.3x of REINFORCE. RELAX is reported beside them, not held to it: each of its steps runs
the program twice more (REBAR's term at two relaxed samples) and a second-order gradient.
"""

import argparse
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, interleaved, print_table, ratio, write_csv  # noqa: E402

from ppmodels.objectives import make  # noqa: E402
from ppmodels.utils import resolve_device  # noqa: E402


class LinearSBN(nn.Module):
    """p(z) = Bern(sigmoid(a)) over 200 latents, p(x | z) = Bern(sigmoid(Wz + b)), q(z | x) linear."""

    def __init__(self, x_dim: int = 784, z_dim: int = 200) -> None:
        super().__init__()
        self.prior = nn.Parameter(torch.zeros(z_dim))
        self.decoder = nn.Linear(z_dim, x_dim)
        self.encoder = nn.Linear(x_dim, z_dim)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=self.prior).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


class LinearCategorical(nn.Module):
    """p(z) uniform over 20 groups of 10 classes (one-hot), p(x | z) = Bern(sigmoid(W vec(z) + b)),
    q(z | x) linear in x."""

    def __init__(self, x_dim: int = 784, groups: int = 20, classes: int = 10) -> None:
        super().__init__()
        self.groups, self.classes = groups, classes
        self.decoder = nn.Linear(groups * classes, x_dim)
        self.encoder = nn.Linear(x_dim, groups * classes)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.OneHotCategorical(logits=torch.zeros(self.classes, device=x.device))
            z = pyro.sample("z", prior.expand([x.shape[0], self.groups]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z.flatten(-2))).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            logits = self.encoder(x).unflatten(-1, (self.groups, self.classes))
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


p = argparse.ArgumentParser()
p.add_argument("--device", default="auto")
p.add_argument("--rounds", type=int, default=7)
p.add_argument("--steps", type=int, default=20)
args = p.parse_args()
device = resolve_device(args.device)
pyro.enable_validation(False)
torch.manual_seed(0)
x = torch.bernoulli(torch.full((50, 784), 0.3, device=device))


def steps(objective, net, params):
    def run():
        for _ in range(args.steps):
            loss = objective.differentiable_loss(net.model, net.guide, x)
            torch.autograd.grad(loss, params)
    return run


rows = []
for model_name, net in (("sbn", LinearSBN().to(device)), ("categorical 20x10", LinearCategorical().to(device))):
    params = list(net.parameters())
    names = ["rloo", "arm", "disarm"] + (["relax"] if model_name == "sbn" else [])
    for K in (2, 4, 8):
        estimators = {"reinforce": make("reinforce", baseline="none", num_particles=K),
                      **{name: make(name, num_particles=K) for name in names}}
        times = interleaved({name: steps(obj, net, params) for name, obj in estimators.items()}, rounds=args.rounds,
                            device=device)
        for name in names:
            median, low, high = ratio(times[name], times["reinforce"])
            rows.append({"model": model_name, "K": K, "estimator": name,
                         "ms_per_step": 1e3 * min(times[name]) / args.steps,
                         "reinforce_ms": 1e3 * min(times["reinforce"]) / args.steps, "ratio": median,
                         "ratio_low": low, "ratio_high": high})
env = environment(device)
print(env)
print_table(rows)
write_csv([{**r, **env} for r in rows], f"discrete-{device.type}.csv")
