"""Small versions of Pyro's own example programs, written the way Pyro's examples write them.

These are test fixtures: third-party-style Pyro programs (not built with ppmodels' helpers) that
the objectives, ``fit`` and ``evaluate`` should cope with. Each follows the structure of one of
Pyro's examples or tutorials — its plate names, unsized plates, boolean masks, subsampling,
``pyro.module`` registration, enumeration annotations, AutoDelta MAP guides — with tiny synthetic
data (at most 64 rows, at most 20 features, hidden sizes at most 32) so it trains in seconds on a
CPU. The code is written afresh for this file; only the program structure follows Pyro.

==================  ==============================================  ========================
name                follows                                         Pyro trains it with
==================  ==============================================  ========================
``vae``             examples/vae/vae.py                             Trace_ELBO
``ssvae_m2``        examples/vae/ss_vae_M2.py                       TraceEnum_ELBO
``cvae``            examples/cvae/cvae.py                           Trace_ELBO
``gmm_tutorial``    tutorial/source/gmm.ipynb                       TraceEnum_ELBO
``sparse_gamma``    examples/sparse_gamma_def.py (custom guide)     TraceMeanField_ELBO
``dmm``             examples/dmm.py (no RNN, no IAFs)               Trace_ELBO
``amortized_lda``   examples/lda.py                                 TraceEnum_ELBO
==================  ==============================================  ========================

``make_programs(seed)`` returns them as :class:`Program` records: the model, the guide, the data
(a tuple of tensors whose first dimension is the datapoint dimension, so a batch is a slice of
rows of each) and what is known about each program (its natural objective, plate nesting, the
name of its per-datapoint plate, and whether it is per-datapoint, reparameterized and safe under
vectorized particles).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import broadcast_shape
from pyro.infer.autoguide import AutoDelta
from torch import nn
from torch.distributions import constraints

__all__ = ["Program", "make_programs", "NAMES"]

NAMES = ("vae", "ssvae_m2", "cvae", "gmm_tutorial", "sparse_gamma", "dmm", "amortized_lda")


@dataclass
class Program:
    name: str  # "vae", "ssvae_m2", "cvae", "gmm_tutorial", "sparse_gamma", "dmm", "amortized_lda"
    model: Callable  # model(*batch) Pyro program
    guide: Callable  # guide(*batch)
    data: tuple  # tensors; the first dim of each is the datapoint dim (so a batch is data rows)
    natural: str  # the objective Pyro's example trains it with: "elbo", "meanfield", "enum", "iwae", "renyi"
    natural_options: dict  # e.g. {"num_particles": 1}
    max_plate_nesting: int
    data_plate: str | None  # the name of the per-datapoint plate in THIS program
    per_datapoint: bool  # every latent lives in data_plate
    reparam: bool  # every guide latent reparameterizable
    broadcast_safe: bool  # runs under Trace_ELBO(num_particles=3, vectorize_particles=True, ...)
    note: str = ""


# every make_programs call gets its own suffix, so its modules and params get fresh names in
# Pyro's global param store (two calls never share parameters)
_instances = itertools.count()


def _binary_rows(gen: torch.Generator, n: int, dim: int, n_protos: int, flip: float = 0.1):
    """Binary 0/1 float rows: noisy copies of a few random prototypes; also the prototype ids."""
    protos = (torch.rand(n_protos, dim, generator=gen) < 0.5).float()
    labels = torch.randint(n_protos, (n,), generator=gen)
    flips = (torch.rand(n, dim, generator=gen) < flip).float()
    return (protos[labels] - flips).abs(), labels


# ---------------------------------------------------------------------------------------------
# vae: examples/vae/vae.py
# ---------------------------------------------------------------------------------------------


class VAEEncoder(nn.Module):
    """q(z|x): a diagonal Normal from one softplus hidden layer."""

    def __init__(self, x_dim, z_dim, hidden_dim):
        super().__init__()
        self.x_dim = x_dim
        self.hidden = nn.Linear(x_dim, hidden_dim)
        self.to_loc = nn.Linear(hidden_dim, z_dim)
        self.to_log_scale = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        h = self.softplus(self.hidden(x.reshape(-1, self.x_dim)))
        return self.to_loc(h), torch.exp(self.to_log_scale(h))


class VAEDecoder(nn.Module):
    """p(x|z): Bernoulli pixel probabilities from one softplus hidden layer."""

    def __init__(self, x_dim, z_dim, hidden_dim):
        super().__init__()
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.to_probs = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        return torch.sigmoid(self.to_probs(self.softplus(self.hidden(z))))


class VAE(nn.Module):
    def __init__(self, x_dim=12, z_dim=2, hidden_dim=16, tag=""):
        super().__init__()
        self.encoder = VAEEncoder(x_dim, z_dim, hidden_dim)
        self.decoder = VAEDecoder(x_dim, z_dim, hidden_dim)
        self.x_dim, self.z_dim, self.tag = x_dim, z_dim, tag

    def model(self, x):
        pyro.module("decoder" + self.tag, self.decoder)
        with pyro.plate("data", x.shape[0]):
            # the prior p(z) = N(0, I), one z per image
            z_loc = torch.zeros(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z_scale = torch.ones(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            probs = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(probs, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.x_dim),
            )
            return probs

    def guide(self, x):
        pyro.module("encoder" + self.tag, self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# ---------------------------------------------------------------------------------------------
# ssvae_m2: examples/vae/ss_vae_M2.py
# ---------------------------------------------------------------------------------------------


class BroadcastMLP(nn.Module):
    """An MLP on a list of inputs, concatenated on the last dim after broadcasting the leading
    dims (like the example's MLP with allow_broadcast=True, which parallel enumeration needs);
    ``out_sizes`` may be a list of sizes to split the last layer into several heads."""

    def __init__(self, in_size, hidden, out_sizes, out_activations):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_size, hidden), nn.Softplus())
        single = isinstance(out_sizes, int)
        out_sizes = [out_sizes] if single else list(out_sizes)
        out_activations = [out_activations] if single else list(out_activations)
        self.heads = nn.ModuleList(nn.Linear(hidden, s) for s in out_sizes)
        self.activations = out_activations
        self.single = single

    def forward(self, inputs):
        if not torch.is_tensor(inputs):
            shape = broadcast_shape(*[t.shape[:-1] for t in inputs])
            inputs = torch.cat([t.expand(shape + t.shape[-1:]) for t in inputs], dim=-1)
        h = self.hidden(inputs)
        outs = []
        for head, act in zip(self.heads, self.activations):
            out = head(h)
            outs.append(out if act is None else act(out))
        return outs[0] if self.single else outs


class SSVAE(nn.Module):
    """The M2 model: p(z) p(y) p(x|y,z) with y observed for labelled rows (here: all rows of
    ``data``), and the guide q(y|x) q(z|x,y), where q(y|x) is enumerated when y is missing."""

    def __init__(self, x_dim=12, y_dim=3, z_dim=2, hidden=16, tag=""):
        super().__init__()
        self.x_dim, self.y_dim, self.z_dim, self.tag = x_dim, y_dim, z_dim, tag
        self.encoder_y = BroadcastMLP(x_dim, hidden, y_dim, lambda t: torch.softmax(t, dim=-1))
        self.encoder_z = BroadcastMLP(x_dim + y_dim, hidden, [z_dim, z_dim], [None, torch.exp])
        self.decoder = BroadcastMLP(z_dim + y_dim, hidden, x_dim, torch.sigmoid)

    def model(self, xs, ys=None):
        pyro.module("ss_vae" + self.tag, self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):  # unsized, as in the example
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            # y is observed when labelled, else sampled by the guide (enumerated)
            class_probs = torch.ones(batch_size, self.y_dim, **options) / self.y_dim
            ys = pyro.sample("y", dist.OneHotCategorical(class_probs), obs=ys)
            probs = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=xs)
            return probs

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha), infer={"enumerate": "parallel"})
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classifier(self, xs):
        """The index of the most probable class under q(y|x), one-hot."""
        alpha = self.encoder_y(xs)
        return torch.zeros_like(alpha).scatter_(-1, alpha.argmax(-1, keepdim=True), 1.0)


# ---------------------------------------------------------------------------------------------
# cvae: examples/cvae (baseline.py + cvae.py)
# ---------------------------------------------------------------------------------------------


class BaselineNet(nn.Module):
    """A deterministic net guessing every pixel from the visible ones (trained beforehand with a
    masked cross-entropy, then frozen, as in the example)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        return torch.sigmoid(self.net(x.view(-1, self.dim)))


class CVAEEncoder(nn.Module):
    """Used as the prior net p(z|x, y_hat) and the recognition net q(z|x, y): the masked pixels of
    ``x`` (the -1s) are filled in from ``y`` and the whole image is encoded."""

    def __init__(self, dim, z_dim, hidden):
        super().__init__()
        self.dim = dim
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.to_loc = nn.Linear(hidden, z_dim)
        self.to_log_scale = nn.Linear(hidden, z_dim)

    def forward(self, x, y):
        xc = x.clone()
        xc[x == -1] = y[x == -1]  # boolean-mask fill, written for one sample of x and y
        h = self.body(xc.view(-1, self.dim))
        return self.to_loc(h), torch.exp(self.to_log_scale(h))


class CVAEDecoder(nn.Module):
    def __init__(self, dim, z_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class CVAE(nn.Module):
    """xs: images with the unobserved pixels set to -1; ys: the same images with the *observed*
    pixels set to -1 (the targets are the pixels that xs hides). Every row hides the same number
    of pixels, as the example's quadrant masks do."""

    def __init__(self, baseline_net, dim=16, z_dim=2, hidden=16, tag=""):
        super().__init__()
        self.baseline_net = baseline_net
        self.prior_net = CVAEEncoder(dim, z_dim, hidden)
        self.generation_net = CVAEDecoder(dim, z_dim, hidden)
        self.recognition_net = CVAEEncoder(dim, z_dim, hidden)
        self.dim, self.tag = dim, tag

    def model(self, xs, ys=None):
        pyro.module("prior_net" + self.tag, self.prior_net)
        pyro.module("generation_net" + self.tag, self.generation_net)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():  # the baseline is frozen
                y_hat = self.baseline_net(xs).view(xs.shape)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                # score only the pixels the input hides
                hidden = (xs == -1).view(-1, self.dim)
                mask_loc = loc[hidden].view(batch_size, -1)
                mask_ys = ys[xs == -1].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs, ys=None):
        if ys is not None:
            pyro.module("recognition_net" + self.tag, self.recognition_net)
        with pyro.plate("data"):
            if ys is None:  # prediction: the prior net stands in for the posterior
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _train_baseline(net: BaselineNet, xs, ys, steps=100, lr=3e-2):
    """The example's baseline pre-training: masked binary cross-entropy on the hidden pixels."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    target = ys.view(-1, net.dim)
    keep = target != -1
    for _ in range(steps):
        opt.zero_grad()
        out = net(xs)
        loss = nn.functional.binary_cross_entropy(out[keep], target[keep], reduction="sum")
        loss.backward()
        opt.step()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# ---------------------------------------------------------------------------------------------
# gmm_tutorial: tutorial/source/gmm.ipynb
# ---------------------------------------------------------------------------------------------

GMM_K = 2


def gmm_model(data):
    # globals
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(GMM_K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", GMM_K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    # locals, marginalized out by TraceEnum_ELBO
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def _gmm_guide(data: torch.Tensor, tag: str) -> AutoDelta:
    """A MAP guide on the globals; deterministic initial values (the tutorial picks the locs at
    random among the data points and keeps the best of 100 seeds)."""
    lo, hi = data.min(), data.max()
    init = {
        "weights": torch.ones(GMM_K) / GMM_K,
        "scale": (data.var() / 2).sqrt(),
        "locs": torch.stack([lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)]),
    }

    def init_loc_fn(site):
        return init[site["name"]].clone()

    guide = AutoDelta(poutine.block(gmm_model, expose=["weights", "locs", "scale"]), init_loc_fn=init_loc_fn)
    guide._pyro_name = "AutoDelta" + tag  # its params get fresh names too
    return guide


# ---------------------------------------------------------------------------------------------
# sparse_gamma: examples/sparse_gamma_def.py (the custom mean-field Gamma guide)
# ---------------------------------------------------------------------------------------------


class SparseGammaDEF:
    """Three layers of Gamma latents per datapoint, Gamma weights between them, Poisson counts.

    ``data`` is (x, idx): idx holds each row's datapoint index, which the guide uses to pick its
    per-datapoint parameters (sized N, for the whole data set) for the rows of a batch; the model
    ignores it. The example's guide parameters are (x_size, width) and used whole."""

    def __init__(self, num_data, image_size=12, widths=(2, 3, 4), tag="", init_seed=0):
        self.top_width, self.mid_width, self.bottom_width = widths
        self.image_size = image_size
        self.num_data = num_data
        self.tag = tag
        # prior hyperparameters (as in the example)
        self.alpha_z = torch.tensor(0.1)
        self.beta_z = torch.tensor(0.1)
        self.alpha_w = torch.tensor(0.1)
        self.beta_w = torch.tensor(0.3)
        # initial variational parameters, already positive: around softplus(0.5) for the shapes
        # and softplus(0.0) for the means (the example's initialization, pushed through softplus)
        gen = torch.Generator().manual_seed(init_seed)
        f = nn.functional.softplus

        def rand(shape, mean):
            return f(mean + 0.1 * torch.randn(shape, generator=gen))

        self._init = {}
        for name, width in self._layers():
            self._init[f"alpha_z_q_{name}"] = rand((num_data, width), 0.5)
            self._init[f"mean_z_q_{name}"] = rand((num_data, width), 0.0)
        for name, size in self._weights():
            self._init[f"alpha_w_q_{name}"] = rand((size,), 0.5)
            self._init[f"mean_w_q_{name}"] = rand((size,), 0.0)

    def _layers(self):
        return [("top", self.top_width), ("mid", self.mid_width), ("bottom", self.bottom_width)]

    def _weights(self):
        return [
            ("top", self.top_width * self.mid_width),
            ("mid", self.mid_width * self.bottom_width),
            ("bottom", self.bottom_width * self.image_size),
        ]

    @staticmethod
    def _as_matrix(w, rows, cols):
        # one sample: (rows * cols,) -> (rows, cols); vectorized particles: (P, 1, rows * cols)
        # -> (P, rows, cols), so that (P, N, rows) @ (P, rows, cols) lines up
        return w.reshape(rows, cols) if w.dim() == 1 else w.reshape(-1, rows, cols)

    def model(self, x, idx=None):
        x_size = x.size(0)
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", dist.Gamma(self.alpha_w, self.beta_w))

        with pyro.plate("data", x_size):
            z_top = pyro.sample(
                "z_top", dist.Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1)
            )
            mean_mid = torch.matmul(z_top, self._as_matrix(w_top, self.top_width, self.mid_width))
            z_mid = pyro.sample("z_mid", dist.Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))
            mean_bottom = torch.matmul(z_mid, self._as_matrix(w_mid, self.mid_width, self.bottom_width))
            z_bottom = pyro.sample("z_bottom", dist.Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1))
            mean_obs = torch.matmul(z_bottom, self._as_matrix(w_bottom, self.bottom_width, self.image_size))
            pyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=x)

    def guide(self, x, idx=None):
        x_size = x.size(0)
        if idx is None:
            idx = torch.arange(x_size)

        def param(name):
            return pyro.param(name + self.tag, self._init[name].clone(), constraint=constraints.positive)

        def sample_ws(name):
            alpha, mean = param(f"alpha_w_q_{name}"), param(f"mean_w_q_{name}")
            pyro.sample(f"w_{name}", dist.Gamma(alpha, alpha / mean))

        def sample_zs(name):
            # this batch's rows of the per-datapoint parameters
            alpha, mean = param(f"alpha_z_q_{name}")[idx], param(f"mean_z_q_{name}")[idx]
            pyro.sample(f"z_{name}", dist.Gamma(alpha, alpha / mean).to_event(1))

        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top")
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid")
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom")
        with pyro.plate("data", x_size):
            for name, _ in self._layers():
                sample_zs(name)


# ---------------------------------------------------------------------------------------------
# dmm: examples/dmm.py (a feed-forward summary of x_{t:T} in place of the RNN; no IAFs)
# ---------------------------------------------------------------------------------------------


class Emitter(nn.Module):
    """p(x_t | z_t): Bernoulli probabilities."""

    def __init__(self, input_dim, z_dim, emission_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, emission_dim), nn.ReLU(),
            nn.Linear(emission_dim, emission_dim), nn.ReLU(),
            nn.Linear(emission_dim, input_dim),
        )

    def forward(self, z_t):
        return torch.sigmoid(self.net(z_t))


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gated mix of a linear map (initially the identity) and a proposal."""

    def __init__(self, z_dim, transition_dim):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, transition_dim), nn.ReLU(), nn.Linear(transition_dim, z_dim))
        self.proposal = nn.Sequential(nn.Linear(z_dim, transition_dim), nn.ReLU(), nn.Linear(transition_dim, z_dim))
        self.lin_sig = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.lin_z_to_loc.weight.copy_(torch.eye(z_dim))
            self.lin_z_to_loc.bias.zero_()

    def forward(self, z_t_1):
        gate = torch.sigmoid(self.gate(z_t_1))
        proposed_mean = self.proposal(z_t_1)
        loc = (1 - gate) * self.lin_z_to_loc(z_t_1) + gate * proposed_mean
        scale = nn.functional.softplus(self.lin_sig(torch.relu(proposed_mean)))
        return loc, scale


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, x_{t:T}) from z_{t-1} and a summary h_t of x_{t:T}."""

    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z_t_1, h_rnn):
        h_combined = 0.5 * (torch.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        loc = self.lin_hidden_to_loc(h_combined)
        scale = nn.functional.softplus(self.lin_hidden_to_scale(h_combined))
        return loc, scale


class DMM(nn.Module):
    """``data`` is (mini_batch (N, T, D) binary floats, zero-padded; mini_batch_mask (N, T) bool)."""

    def __init__(self, input_dim=5, z_dim=2, emission_dim=8, transition_dim=8, rnn_dim=8, tag=""):
        super().__init__()
        self.emitter = Emitter(input_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        # stands in for the example's RNN over the reversed sequence: a summary of x_{t:T}
        self.summary = nn.Linear(input_dim, rnn_dim)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.tag = tag

    def model(self, mini_batch, mini_batch_mask, annealing_factor=1.0):
        T_max = mini_batch.size(1)
        pyro.module("dmm" + self.tag, self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        "z_%d" % t,
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                emission_probs_t = self.emitter(z_t)
                pyro.sample(
                    "obs_x_%d" % t,
                    dist.Bernoulli(emission_probs_t).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    obs=mini_batch[:, t - 1, :],
                )
                z_prev = z_t

    def _future_summary(self, mini_batch, mini_batch_mask):
        # the mean of the observed x_s for s >= t, per time step, through a tanh layer
        m = mini_batch_mask.to(mini_batch.dtype).unsqueeze(-1)
        x = mini_batch * m
        future_sum = x.flip(1).cumsum(1).flip(1)
        future_count = m.flip(1).cumsum(1).flip(1).clamp_min(1.0)
        return torch.tanh(self.summary(future_sum / future_count))

    def guide(self, mini_batch, mini_batch_mask, annealing_factor=1.0):
        T_max = mini_batch.size(1)
        pyro.module("dmm" + self.tag, self)
        h = self._future_summary(mini_batch, mini_batch_mask)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, h[:, t - 1, :])
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        "z_%d" % t,
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                z_prev = z_t


# ---------------------------------------------------------------------------------------------
# amortized_lda: examples/lda.py
# ---------------------------------------------------------------------------------------------


class AmortizedLDA:
    """``data`` is (docs,): docs is (num_docs, num_words_per_doc) integer word ids; the example's
    programs take the transpose, [num_words_per_doc, num_docs], which is what they use inside.
    The documents plate subsamples ``batch_size`` documents when given more."""

    def __init__(self, num_topics=3, num_words=20, layer_sizes=(16,), batch_size=16, tag=""):
        self.num_topics, self.num_words, self.batch_size, self.tag = num_topics, num_words, batch_size, tag
        sizes = [num_words, *layer_sizes, num_topics]
        layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layer = nn.Linear(n_in, n_out)
            nn.init.normal_(layer.weight, 0, 0.001)
            nn.init.normal_(layer.bias, 0, 0.001)
            layers += [layer, nn.Sigmoid()]
        layers.append(nn.Softmax(dim=-1))
        self.predictor = nn.Sequential(*layers)

    def model(self, docs):
        data = docs.transpose(0, 1)  # [num_words_per_doc, num_docs]
        num_words_per_doc, num_docs = data.shape
        with pyro.plate("topics", self.num_topics):
            topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / self.num_topics, 1.0))
            topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(self.num_words) / self.num_words))

        with pyro.plate("documents", num_docs, min(self.batch_size, num_docs)) as ind:
            data = data[:, ind]
            doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
            with pyro.plate("words", num_words_per_doc):
                # marginalized out by TraceEnum_ELBO, so the guide has no word_topics
                word_topics = pyro.sample(
                    "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
                )
                pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)

    def guide(self, docs):
        data = docs.transpose(0, 1)
        num_docs = data.shape[1]
        # conjugate-style guide for the globals
        topic_weights_posterior = pyro.param(
            "topic_weights_posterior" + self.tag, lambda: torch.ones(self.num_topics), constraint=constraints.positive
        )
        topic_words_posterior = pyro.param(
            "topic_words_posterior" + self.tag,
            lambda: torch.ones(self.num_topics, self.num_words),
            constraint=constraints.greater_than(0.5),
        )
        with pyro.plate("topics", self.num_topics):
            pyro.sample("topic_weights", dist.Gamma(topic_weights_posterior, 1.0))
            pyro.sample("topic_words", dist.Dirichlet(topic_words_posterior))

        # amortized point estimate of each document's topic mix, from its word histogram
        pyro.module("predictor" + self.tag, self.predictor)
        with pyro.plate("documents", num_docs, min(self.batch_size, num_docs)) as ind:
            data = data[:, ind]
            counts = torch.zeros(self.num_words, ind.size(0)).scatter_add(0, data, torch.ones(data.shape))
            doc_topics = self.predictor(counts.transpose(0, 1))
            pyro.sample("doc_topics", dist.Delta(doc_topics, event_dim=1))


def _lda_docs(gen, num_docs, num_words_per_doc, num_topics, num_words):
    """Documents drawn from LDA's generative process with sparse random topics."""
    topic_words = torch.distributions.Dirichlet(torch.full((num_words,), 0.2)).sample((num_topics,))
    doc_topics = torch.distributions.Dirichlet(torch.full((num_topics,), 0.3)).sample((num_docs,))
    word_topics = torch.multinomial(doc_topics, num_words_per_doc, replacement=True, generator=gen)
    probs = topic_words[word_topics]  # (docs, words, vocabulary)
    return torch.multinomial(probs.reshape(-1, num_words), 1, generator=gen).reshape(num_docs, num_words_per_doc)


# ---------------------------------------------------------------------------------------------


def make_programs(seed: int = 0) -> dict[str, Program]:
    """Fresh model instances (new nn.Modules / param names) and data, deterministic in seed."""
    tag = "_%d" % next(_instances)
    with torch.random.fork_rng():  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        programs = [
            _vae(gen, tag),
            _ssvae(gen, tag),
            _cvae(gen, tag),
            _gmm(gen, tag),
            _sparse_gamma(gen, tag, seed),
            _dmm(gen, tag),
            _lda(gen, tag),
        ]
    return {p.name: p for p in programs}


def _vae(gen, tag):
    x, _ = _binary_rows(gen, 64, 12, n_protos=3)
    vae = VAE(x_dim=12, z_dim=2, hidden_dim=16, tag=tag)
    return Program(
        "vae", vae.model, vae.guide, (x,), natural="elbo", natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="data", per_datapoint=True, reparam=True, broadcast_safe=True,
        note="examples/vae/vae.py: pyro.module per net, sized plate 'data', Bernoulli(validate_args=False)",
    )


def _ssvae(gen, tag):
    xs, labels = _binary_rows(gen, 64, 12, n_protos=3)
    ys = nn.functional.one_hot(labels, 3).float()
    ssvae = SSVAE(x_dim=12, y_dim=3, z_dim=2, hidden=16, tag=tag)
    return Program(
        "ssvae_m2", ssvae.model, ssvae.guide, (xs,), natural="enum", natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="data", per_datapoint=True, reparam=False, broadcast_safe=True,
        note="examples/vae/ss_vae_M2.py: unsized plate 'data'; data are unlabelled rows (xs,), so the "
        "guide's y site (OneHotCategorical) is enumerated in parallel under 'enum' and drawn by the score "
        "function under 'elbo'; the labelled path model(xs, ys) is in ys_labelled",
    )


def _cvae(gen, tag):
    dim = 16  # 4 x 4 images; the input hides the bottom half, the target is that half
    images, _ = _binary_rows(gen, 64, dim, n_protos=4)
    hide = torch.zeros(dim, dtype=torch.bool)
    hide[dim // 2:] = True
    xs = torch.where(hide, torch.tensor(-1.0), images)
    ys = torch.where(hide, images, torch.tensor(-1.0))
    baseline = _train_baseline(BaselineNet(dim, 16), xs, ys)
    cvae = CVAE(baseline, dim=dim, z_dim=2, hidden=16, tag=tag)
    return Program(
        "cvae", cvae.model, cvae.guide, (xs, ys), natural="elbo", natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="data", per_datapoint=True, reparam=True, broadcast_safe=False,
        note="examples/cvae: unsized plate 'data'; boolean-mask indexing loc[(xs == -1).view(-1, D)] "
        "and xc[x == -1] = y[x == -1], written for one sample, so it fails under vectorized particles; "
        "a frozen pre-trained baseline net feeds the prior net",
    )


def _gmm(gen, tag):
    n = 40
    centers = torch.tensor([0.0, 8.0])
    which = torch.randint(2, (n,), generator=gen)
    data = centers[which] + torch.randn(n, generator=gen)
    guide = _gmm_guide(data, tag)
    return Program(
        "gmm_tutorial", gmm_model, guide, (data,), natural="enum", natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="data", per_datapoint=False, reparam=True, broadcast_safe=False,
        note="GMM tutorial: global weights/scale/locs with an AutoDelta MAP guide (poutine.block expose), "
        "local 'assignment' enumerated in the model (absent from the guide); locs[assignment] indexing "
        "is right under enumeration but not under vectorized particles; the plate 'data' is sized by "
        "the batch (no subsample scaling)",
    )


def _sparse_gamma(gen, tag, seed):
    n, d = 32, 12
    rates = torch.distributions.Gamma(torch.full((2, d), 0.5), 0.2).sample()  # two kinds of rows
    kind = torch.randint(2, (n,), generator=gen)
    x = torch.poisson(rates[kind], generator=gen)
    idx = torch.arange(n)
    sgdef = SparseGammaDEF(num_data=n, image_size=d, widths=(2, 3, 4), tag=tag, init_seed=seed)
    return Program(
        "sparse_gamma", sgdef.model, sgdef.guide, (x, idx), natural="meanfield",
        natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="data", per_datapoint=False, reparam=True, broadcast_safe=True,
        note="examples/sparse_gamma_def.py custom guide: global Gamma weights in their own plates, "
        "per-datapoint Gamma latents; the guide's z params are sized N (all rows) with constraint "
        "positive and indexed by the second data tensor idx; Pyro clips the params each step (not here) "
        "and uses AdagradRMSProp",
    )


def _dmm(gen, tag):
    n, t_max, d = 8, 4, 5
    lengths = torch.tensor([4, 3, 4, 2, 4, 3, 1, 4])
    mask = torch.arange(t_max)[None, :] < lengths[:, None]  # (N, T) bool
    # sticky binary sequences: each step copies the previous frame with a few bits flipped
    frames = [(torch.rand(n, d, generator=gen) < 0.5).float()]
    for _ in range(t_max - 1):
        flip = (torch.rand(n, d, generator=gen) < 0.15).float()
        frames.append((frames[-1] - flip).abs())
    seqs = torch.stack(frames, 1) * mask[..., None]  # zero padding past each length
    dmm = DMM(input_dim=d, z_dim=2, emission_dim=8, transition_dim=8, rnn_dim=8, tag=tag)
    return Program(
        "dmm", dmm.model, dmm.guide, (seqs, mask), natural="elbo", natural_options={"num_particles": 1},
        max_plate_nesting=1, data_plate="z_minibatch", per_datapoint=True, reparam=True, broadcast_safe=True,
        note="examples/dmm.py: plate 'z_minibatch', pyro.markov loop over time, ragged sequences via "
        ".mask(mini_batch_mask[:, t - 1:t]) on latents and observations (padded steps still have a "
        "latent z_t, masked out), poutine.scale(annealing_factor) (an optional third argument, 1.0 "
        "here); a feed-forward summary of x_{t:T} replaces the RNN",
    )


def _lda(gen, tag):
    num_topics, num_words = 3, 20
    docs = _lda_docs(gen, num_docs=32, num_words_per_doc=8, num_topics=num_topics, num_words=num_words)
    lda = AmortizedLDA(num_topics=num_topics, num_words=num_words, layer_sizes=(16,), batch_size=16, tag=tag)
    return Program(
        "amortized_lda", lda.model, lda.guide, (docs,), natural="enum", natural_options={"num_particles": 1},
        max_plate_nesting=2, data_plate="documents", per_datapoint=False, reparam=True, broadcast_safe=False,
        note="examples/lda.py: global topic_weights/topic_words in plate 'topics'; plate 'documents' "
        "subsamples 16 documents when given more (scaling the local terms); nested plate 'words' with "
        "word_topics enumerated in the model; the guide's doc_topics is a Delta point estimate from an "
        "amortized MLP on word counts; topic_words[word_topics] is not particle-safe",
    )
