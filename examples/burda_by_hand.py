"""Burda, Grosse & Salakhutdinov (2016), Table 1 (one stochastic layer), written by hand in plain PyTorch.

An independent implementation of the training protocol, written from the paper's description
and not from the project's code (only ``ppmodels.data.load_mnist`` is used, for the raw
images), to check the project's own recipe from outside: same data, model, objective,
optimizer and schedule, so the two should reach the same test NLL.

    python examples/burda_by_hand.py --objective elbo -K 1 --passes 12 --seed 0 --json out.json

Choices worth knowing:
- training minibatches are binarized afresh (``torch.bernoulli``, global RNG); the test images
  are binarized once with ``torch.Generator().manual_seed(seed)``;
- the decoder's output bias is the logit of the per-pixel mean training intensity, clamped
  to [1e-3, 1 - 1e-3];
- the schedule (3^i passes at lr 1e-3 * 10^(-i/7), i = 0..7, 3280 passes in all) is compressed
  to ``passes * 3000`` steps: stage i ends at step round(total * sum_{j<=i} 3^j / 3280);
- active units: variance (unbiased) over all 10,000 test images of the encoder mean > 0.01.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ppmodels.data import load_mnist

Z, H, D, BATCH = 50, 200, 784, 20
STEPS_PER_PASS = 60000 // BATCH


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, pixel_mean: Tensor) -> None:
        super().__init__()
        self.encoder = nn.Sequential(mlp([D, H, H]), nn.Tanh())
        self.mean, self.log_sigma = nn.Linear(H, Z), nn.Linear(H, Z)
        self.decoder = mlp([Z, H, H, D])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.logit(pixel_mean.clamp(1e-3, 1 - 1e-3)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.mean(h), self.log_sigma(h)

    def log_weights(self, x: Tensor, k: int, mu: Tensor | None = None, log_sigma: Tensor | None = None) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x), shape (k, batch), z reparameterized."""
        if mu is None or log_sigma is None:
            mu, log_sigma = self.encode(x)
        eps = torch.randn(k, *mu.shape)
        z = mu + log_sigma.exp() * eps
        logits = self.decoder(z)
        log_px = (x * logits - F.softplus(logits)).sum(-1)  # Bernoulli log-likelihood
        log_pz = (-0.5 * z**2).sum(-1)
        log_qz = (-0.5 * eps**2 - log_sigma).sum(-1)  # the 0.5*log(2*pi) terms cancel with p(z)'s
        return log_px + log_pz - log_qz


def bound(log_w: Tensor, objective: str) -> Tensor:
    """Per-image bound from (K, batch) log weights."""
    if objective == "elbo":
        return log_w.mean(0)
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def stage_ends(total_steps: int) -> list[int]:
    """Last step (exclusive) of each of the 8 stages, stage i holding 3^i / 3280 of the steps."""
    cum = [sum(3**j for j in range(i + 1)) for i in range(8)]
    return [round(total_steps * c / cum[-1]) for c in cum]


def train(model: VAE, train_x: Tensor, objective: str, k: int, passes: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    total = passes * STEPS_PER_PASS
    ends, step = stage_ends(total), 0
    for _ in range(passes):
        for idx in torch.randperm(train_x.shape[0]).split(BATCH):
            stage = next(i for i, e in enumerate(ends) if step < e)
            for g in opt.param_groups:
                g["lr"] = 1e-3 * 10 ** (-stage / 7)
            x = torch.bernoulli(train_x[idx])
            loss = -bound(model.log_weights(x, k), objective).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


@torch.no_grad()
def test_nll(model: VAE, x: Tensor, num_samples: int, image_chunk: int = 100, sample_chunk: int = 500) -> float:
    """-mean over images of log (1/K) sum_k w_k, the encoder as proposal, in chunks."""
    total = 0.0
    for xb in x.split(image_chunk):
        mu, log_sigma = model.encode(xb)
        parts = [
            torch.logsumexp(model.log_weights(xb, min(sample_chunk, num_samples - s), mu, log_sigma), 0)
            for s in range(0, num_samples, sample_chunk)
        ]
        total += (torch.logsumexp(torch.stack(parts), 0) - math.log(num_samples)).sum().item()
    return -total / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    p.add_argument("-K", type=int, default=1, help="particles per training image")
    p.add_argument("--passes", type=int, default=12, help="passes over the training set (paper: 3280)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nll-images", type=int, default=1000, help="first N test images for the NLL")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    mnist = load_mnist()
    train_x = mnist["train_images"].float() / 255
    test_x = torch.bernoulli(mnist["test_images"].float() / 255, generator=torch.Generator().manual_seed(a.seed))

    torch.manual_seed(a.seed)
    model = VAE(train_x.mean(0))
    t0 = time.perf_counter()
    train(model, train_x, a.objective, a.K, a.passes)
    t1 = time.perf_counter()
    nll = test_nll(model, test_x[: a.nll_images], a.num_samples)
    t2 = time.perf_counter()
    with torch.no_grad():
        active = int((model.encode(test_x)[0].var(0) > 0.01).sum())

    result = dict(objective=a.objective, K=a.K, passes=a.passes, seed=a.seed, test_nll=nll,
                  nll_images=min(a.nll_images, test_x.shape[0]), num_samples=a.num_samples,
                  active_units=active, train_seconds=round(t1 - t0, 1), nll_seconds=round(t2 - t1, 1))
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
