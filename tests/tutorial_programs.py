"""Miniature versions of Pyro tutorial/example programs, written the way Pyro writes them.

Test fixtures: third-party-style Pyro programs, not built with ppmodels' helpers. Each keeps
the structure of a Pyro tutorial or example (plate names, site names, param names, idioms),
runs on small synthetic data from a seeded ``torch.Generator`` (nothing is downloaded), and
trains in well under a second per step on a CPU. The code is new; only the structure follows
Pyro.

=========================  =================================================  ======================
name                       follows                                            Pyro trains it with
=========================  =================================================  ======================
``hmm``                    examples/hmm.py, model_1 (one binary obs a step)    TraceEnum_ELBO
``coin``                   tutorial svi_part_iii (decaying average baseline)  TraceGraph_ELBO
``coin_nn_baseline``       svi_part_iii, ``nn_baseline``/``nn_baseline_input``  TraceGraph_ELBO
``coin_baseline_value``    svi_part_iii, ``baseline_value``                   TraceGraph_ELBO
``coin_no_baseline``       svi_part_iii, no baseline                          TraceGraph_ELBO
``easyguide``              tutorial easyguide (map_estimate + local params)   Trace_ELBO
``autonormal_subsampled``  AutoNormal over a ``subsample_size`` plate         Trace_ELBO
``bayes_regression``       tutorial bayesian_regression, AutoDiagonalNormal   Trace_ELBO
``bayes_regression_autonormal``  the same model with AutoNormal               Trace_ELBO
``scanvi_mixed``           examples/scanvi/scanvi.py, labelled + unlabelled   TraceEnum_ELBO
``prodlda``                tutorial prodlda                                   TraceMeanField_ELBO
=========================  =================================================  ======================

``make_tutorial_programs(seed)`` returns fresh :class:`Program` records (new modules, new guides,
new data) each call. Parameter names are the tutorials' own ("alpha_q", "local_loc", ...), so
clearing Pyro's param store between programs is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.infer
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.contrib.easyguide import easy_guide
from pyro.distributions.util import broadcast_shape
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn
from torch.distributions import constraints

__all__ = ["Program", "make_tutorial_programs", "coin_program", "coin_baseline_variants", "NAMES"]

NAMES = (
    "hmm", "coin", "coin_nn_baseline", "coin_baseline_value", "coin_no_baseline", "easyguide",
    "autonormal_subsampled", "bayes_regression", "bayes_regression_autonormal", "scanvi_mixed",
    "prodlda",
)


@dataclass
class Program:
    name: str
    model: Callable
    guide: Callable
    # one tuple of step arguments, or a list of such tuples (one per minibatch, to be cycled)
    data: tuple | list
    pyro_elbo: str  # class name in pyro.infer: "Trace_ELBO", "TraceGraph_ELBO", ...
    elbo_kwargs: dict = field(default_factory=dict)  # e.g. {"max_plate_nesting": 1}
    notes: str = ""
    lr: float = 0.01  # an Adam learning rate that makes visible progress in ~30 steps

    @property
    def batches(self) -> list[tuple]:
        """The step arguments as a list of tuples (a single tuple becomes a one-item list)."""
        return list(self.data) if isinstance(self.data, list) else [self.data]

    def make_pyro_elbo(self):
        """A fresh instance of the Pyro ELBO that Pyro's own SVI trains this program with."""
        return getattr(pyro.infer, self.pyro_elbo)(**self.elbo_kwargs)


# --------------------------------------------------------------------------------------------
# hmm: examples/hmm.py, model_1
# --------------------------------------------------------------------------------------------

HMM_STATES = 3


def hmm_model(sequences, lengths, batch_size=None):
    """examples/hmm.py ``model_1`` cut down to one binary observation per time step.

    Globals probs_x (Dirichlet rows favouring self-transition) and probs_y (Beta) are sampled;
    the hidden state ``x_{t}`` is enumerated in the model only (``infer={"enumerate":
    "parallel"}``) inside ``pyro.markov``, under a vectorized ``pyro.plate("sequences", dim=-1)``
    with ragged lengths masked by ``poutine.mask``. With no "tones" plate a single plate remains,
    so ``max_plate_nesting=1`` and enumeration dims alternate between -2 and -3.
    """
    num_sequences, max_length = sequences.shape
    probs_x = pyro.sample(
        "probs_x", dist.Dirichlet(0.9 * torch.eye(HMM_STATES) + 0.1).to_event(1)
    )
    probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([HMM_STATES]).to_event(1))
    with pyro.plate("sequences", num_sequences, batch_size, dim=-1) as batch:
        lengths = lengths[batch]
        x = 0
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=t < lengths):
                x = pyro.sample(
                    "x_{}".format(t),
                    dist.Categorical(probs_x[x]),
                    infer={"enumerate": "parallel"},
                )
                pyro.sample("y_{}".format(t), dist.Bernoulli(probs_y[x]), obs=sequences[batch, t])


def _hmm(gen):
    num_sequences, max_length = 16, 8
    trans = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    emit = torch.tensor([0.1, 0.5, 0.9])
    lengths = torch.randint(5, max_length + 1, (num_sequences,), generator=gen)
    sequences = torch.zeros(num_sequences, max_length)
    state = torch.zeros(num_sequences, dtype=torch.long)
    for t in range(max_length):
        state = torch.multinomial(trans[state], 1, generator=gen).squeeze(-1)
        sequences[:, t] = (torch.rand(num_sequences, generator=gen) < emit[state]).float()
    sequences[torch.arange(max_length) >= lengths.unsqueeze(-1)] = 0.0  # padding
    # MAP Baum-Welch, as in hmm.py: point estimates of the probs_* globals only
    guide = AutoDelta(poutine.block(hmm_model, expose=["probs_x", "probs_y"]))
    return Program(
        "hmm", hmm_model, guide, (sequences, lengths), "TraceEnum_ELBO",
        {"max_plate_nesting": 1}, lr=0.05,
        notes="global latents only in the guide (AutoDelta over a poutine.block-ed model); every "
        "local latent x_t is enumerated in the MODEL under pyro.markov; ragged lengths via "
        "poutine.mask; sample sites named x_{t}/y_{t}, their number set by the data.",
    )


# --------------------------------------------------------------------------------------------
# coin: tutorial/source/svi_part_iii.ipynb
# --------------------------------------------------------------------------------------------


class NonreparameterizedBeta(dist.Beta):
    """A Beta that hides its rsample, so the ELBO must use score-function gradients."""

    has_rsample = False


class CoinBaseline(nn.Module):
    """A tiny ``nn_baseline``: maps the (detached) ``nn_baseline_input`` to a scalar."""

    def __init__(self, input_dim):
        super().__init__()
        self.linear = nn.Linear(input_dim, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)  # the baseline must match the site's (scalar) cost


def coin_baseline_variants() -> dict[str, dict | None]:
    """Fresh baseline-option dicts, one per site-level baseline option Pyro supports.

    ``baseline_value`` is given as a callable so that it is evaluated inside the guide (it reads
    a pyro.param there, which the baseline loss then trains); :func:`coin_program` calls it.
    """
    return {
        "coin": {"use_decaying_avg_baseline": True, "baseline_beta": 0.90},
        "coin_nn_baseline": {"nn_baseline": CoinBaseline(10), "nn_baseline_input": None},
        "coin_baseline_value": {
            "baseline_value": lambda: pyro.param("coin_baseline_value", lambda: torch.tensor(0.0))
        },
        "coin_no_baseline": None,
    }


def coin_program(baseline_options: dict | None, name: str = "coin") -> Program:
    """SVI Part III's Bernoulli-Beta coin, with ``baseline_options`` as the guide site's baseline.

    Prior Beta(10, 10) on "latent_fairness"; ten flips (six heads) observed one by one as
    ``obs_{i}`` in a Python loop (the older form of the tutorial; the current one uses
    ``pyro.plate("data_plate")``). The guide's pyro.params alpha_q/beta_q (positive, initialised
    at 15) feed a NonreparameterizedBeta whose site carries
    ``infer=dict(baseline=baseline_options)``. Options: ``use_decaying_avg_baseline`` +
    ``baseline_beta``; ``nn_baseline`` + ``nn_baseline_input`` (the module is registered with
    pyro.module as the tutorial says; an input of None means the data); ``baseline_value`` (a
    tensor, or a callable evaluated in the guide); or None for no baseline.
    """
    data = torch.zeros(10)
    data[0:6] = 1.0
    options = None if baseline_options is None else dict(baseline_options)
    if options is not None and options.get("nn_baseline") is not None:
        if options.get("nn_baseline_input") is None:
            options["nn_baseline_input"] = data

    def model(data):
        f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
        for i in range(len(data)):
            pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])

    def guide(data):
        alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
        infer = {}
        if options is not None:
            baseline = dict(options)
            if "nn_baseline" in baseline:
                pyro.module("coin_baseline", baseline["nn_baseline"])
            if callable(baseline.get("baseline_value")):
                baseline["baseline_value"] = baseline["baseline_value"]()
            infer["baseline"] = baseline
        pyro.sample("latent_fairness", NonreparameterizedBeta(alpha_q, beta_q), infer=infer)

    kind = "no baseline" if options is None else ", ".join(sorted(options))
    return Program(
        name, model, guide, (data,), "TraceGraph_ELBO", lr=0.05,
        notes="one global latent, non-reparameterized (score-function gradient); site-level "
        "baseline options [%s]; ten sequential obs_{i} sites, no plate." % kind,
    )


# --------------------------------------------------------------------------------------------
# easyguide: tutorial/source/easyguide.ipynb; and AutoNormal over a subsampled plate
# --------------------------------------------------------------------------------------------

EASY_N = 100
EASY_BATCH = 20


def easy_model(batch, subsample, full_size=EASY_N):
    """The easyguide tutorial's model reduced to one local latent per datapoint.

    A global "drift" ~ LogNormal(-1, 0.5); inside ``pyro.plate("data", full_size,
    subsample=subsample)`` a local "z" ~ Normal(0, drift) per datapoint and a Bernoulli(logits=z)
    observation; the minibatch arrives together with its index tensor.
    """
    drift = pyro.sample("drift", dist.LogNormal(-1.0, 0.5))
    with pyro.plate("data", full_size, subsample=subsample):
        z = pyro.sample("z", dist.Normal(0.0, drift))
        pyro.sample("obs", dist.Bernoulli(logits=z), obs=batch)


def _make_easy_guide():
    @easy_guide(easy_model)
    def guide(self, batch, subsample, full_size=EASY_N):
        self.map_estimate("drift")
        with self.plate("data", full_size, subsample=subsample):
            # full-size local params; event_dim=0 makes the plate slice out the minibatch
            loc = pyro.param("local_loc", lambda: torch.zeros(full_size), event_dim=0)
            scale = pyro.param(
                "local_scale", lambda: torch.full((full_size,), 0.1),
                constraint=constraints.positive, event_dim=0,
            )
            pyro.sample("z", dist.Normal(loc, scale))

    return guide


def _easy_batches(gen):
    z = 2.0 * torch.randn(EASY_N, generator=gen)
    y = (torch.rand(EASY_N, generator=gen) < torch.sigmoid(z)).float()
    return y, [
        (y[i : i + EASY_BATCH], torch.arange(i, i + EASY_BATCH))
        for i in range(0, EASY_N, EASY_BATCH)
    ]


def _easyguide(gen):
    _, batches = _easy_batches(gen)
    return Program(
        "easyguide", easy_model, _make_easy_guide(), batches, "Trace_ELBO", lr=0.05,
        notes="@easy_guide: MAP global (self.map_estimate) plus full-size local pyro.params "
        "subsampled by self.plate('data', N, subsample=ind) via event_dim=0; the data is cycled "
        "through as 5 batches of 20 (batch, index) pairs; plate scaling N/20.",
    )


def subsampled_model(y):
    """A global mean and a local "z" per datapoint inside a randomly subsampled plate."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y), subsample_size=EASY_BATCH) as ind:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=y[ind])


def _autonormal_subsampled(gen):
    y = 1.5 + torch.randn(EASY_N, generator=gen)
    return Program(
        "autonormal_subsampled", subsampled_model, AutoNormal(subsampled_model), (y,),
        "Trace_ELBO", lr=0.05,
        notes="the model draws its own minibatch (plate subsample_size=20) and indexes the full "
        "data; AutoNormal builds the same subsampled plate, so the guide chooses the indices and "
        "the model replays them; local AutoNormal params are full-size (N) and sliced.",
    )


# --------------------------------------------------------------------------------------------
# bayes_regression: tutorial/source/bayesian_regression.ipynb
# --------------------------------------------------------------------------------------------


class BayesianRegression(PyroModule):
    """The tutorial's model: PyroModule[nn.Linear] with PyroSample priors, sigma ~ Uniform."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def _regression_data(gen, n=60):
    # terrain-ruggedness-like features: cont_africa, rugged, cont_africa * rugged
    africa = (torch.rand(n, generator=gen) < 0.3).float()
    rugged = 3.0 * torch.rand(n, generator=gen)
    x = torch.stack([africa, rugged, africa * rugged], -1)
    y = 9.0 - 1.9 * africa - 0.2 * rugged + 0.4 * africa * rugged
    return x, y + 0.5 * torch.randn(n, generator=gen)


def _bayes_regression(gen, guide_cls, name):
    x, y = _regression_data(gen)
    model = BayesianRegression(3, 1)
    return Program(
        name, model, guide_cls(model), (x, y), "Trace_ELBO", lr=0.03,
        notes="global latents only (PyroSample weight 'linear.weight', 'linear.bias', and a "
        "bounded 'sigma'); the model is a PyroModule called as model(x, y); the only plate is "
        "the 'data' plate around obs; guide %s." % guide_cls.__name__,
    )


# --------------------------------------------------------------------------------------------
# scanvi_mixed: examples/scanvi/scanvi.py
# --------------------------------------------------------------------------------------------


def _broadcast_inputs(tensors):
    shape = broadcast_shape(*[t.shape[:-1] for t in tensors]) + (-1,)
    return [t.expand(shape) for t in tensors]


class MiniSCANVI(nn.Module):
    """scanvi.py's model/guide in miniature: y one-hot per cell, observed or enumerated.

    Model (plate "batch", scaled by ``scale_factor``): y ~ OneHotCategorical (``obs=y``), z ~
    Normal(0, 1), counts x ~ Poisson(decoder(z, y)). Guide: y ~ classifier(x) when y is None
    (enumerated by ``config_enumerate(..., expand=True)``), else a classification
    ``pyro.factor``; then z ~ encoder(x, y), which must broadcast over the enumerated y.
    """

    def __init__(self, num_genes, num_labels, latent_dim=2, hidden=16, alpha=0.1, scale_factor=1.0):
        super().__init__()
        self.num_genes, self.num_labels, self.latent_dim = num_genes, num_labels, latent_dim
        self.alpha, self.scale_factor = alpha, scale_factor
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + num_labels, hidden), nn.ReLU(), nn.Linear(hidden, num_genes)
        )
        self.classifier = nn.Sequential(
            nn.Linear(num_genes, hidden), nn.ReLU(), nn.Linear(hidden, num_labels)
        )
        self.encoder = nn.Sequential(
            nn.Linear(num_genes + num_labels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )

    def model(self, x, y=None):
        pyro.module("scanvi", self)
        with pyro.plate("batch", len(x)), poutine.scale(scale=self.scale_factor):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(self.num_labels)), obs=y)
            z = pyro.sample("z", dist.Normal(0, x.new_ones(self.latent_dim)).to_event(1))
            z, y = _broadcast_inputs([z, y])
            rate = F.softplus(self.decoder(torch.cat([z, y], -1)))
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("scanvi", self)
        with pyro.plate("batch", len(x)), poutine.scale(scale=self.scale_factor):
            y_dist = dist.OneHotCategorical(logits=self.classifier(torch.log1p(x)))
            if y is None:
                y = pyro.sample("y", y_dist)
            else:
                # guide-side factor: -log q appears in the ELBO, hence the minus sign
                pyro.factor(
                    "classification_loss", -self.alpha * y_dist.log_prob(y), has_rsample=False
                )
            h = torch.cat(_broadcast_inputs([torch.log1p(x), y]), -1)
            loc, scale = self.encoder(h).reshape(h.shape[:-1] + (2, -1)).unbind(-2)
            pyro.sample("z", dist.Normal(loc, F.softplus(scale) + 1e-3).to_event(1))


def _scanvi(gen):
    num_cells, num_genes, num_labels, batch_size = 80, 12, 3, 20
    labels = torch.randint(0, num_labels, (num_cells,), generator=gen)
    profiles = 0.5 + 4.0 * torch.rand(num_labels, num_genes, generator=gen)
    x = torch.poisson(profiles[labels], generator=gen)
    y = F.one_hot(labels, num_labels).float()
    batches = []
    for k, i in enumerate(range(0, num_cells, batch_size)):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        batches.append((xb, yb) if k % 2 == 0 else (xb, None))  # labelled, unlabelled, ...
    scanvi = MiniSCANVI(num_genes, num_labels, scale_factor=1.0 / (batch_size * num_genes))
    guide = config_enumerate(scanvi.guide, "parallel", expand=True)
    return Program(
        "scanvi_mixed", scanvi.model, guide, batches, "TraceEnum_ELBO", {"max_plate_nesting": 1},
        lr=0.01,
        notes="one SVI over alternating labelled (x, y) and unlabelled (x, None) batches: the "
        "discrete y is observed in one and enumerated in the GUIDE in the other, so the program "
        "structure changes from step to step; labelled steps have nothing to enumerate (Pyro "
        "warns unless strict_enumeration_warning=False, which scanvi.py passes); guide-side "
        "pyro.factor; poutine.scale on the whole plate; one pyro.module for all nets.",
    )


# --------------------------------------------------------------------------------------------
# prodlda: tutorial/source/prodlda.ipynb
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, vocab_size, num_topics, hidden, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, inputs):
        h = self.drop(F.softplus(self.fc2(F.softplus(self.fc1(inputs)))))
        logtheta_loc = self.bnmu(self.fcmu(h))
        logtheta_scale = (0.5 * self.bnlv(self.fclv(h))).exp()
        return logtheta_loc, logtheta_scale


class Decoder(nn.Module):
    def __init__(self, vocab_size, num_topics, dropout):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        return F.softmax(self.bn(self.beta(self.drop(inputs))), dim=1)


class ProdLDA(nn.Module):
    """The ProdLDA tutorial's model/guide: logistic-normal topic proportions, amortized guide.

    Model: pyro.module("decoder"), plate "documents", logtheta ~ Normal(0, 1).to_event(1),
    theta = softmax(logtheta), obs ~ Multinomial(max doc length, decoder(theta)). Guide:
    pyro.module("encoder") and logtheta ~ Normal(encoder(docs)).to_event(1). BatchNorm and
    dropout make both nets batch-dependent and stochastic in training mode.
    """

    def __init__(self, vocab_size, num_topics, hidden, dropout):
        super().__init__()
        self.num_topics = num_topics
        self.encoder = Encoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = Decoder(vocab_size, num_topics, dropout)

    def model(self, docs):
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample(
                "logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1)
            )
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            # documents differ in length; Multinomial.log_prob ignores total_count, so use the max
            total_count = int(docs.sum(-1).max())
            pyro.sample(
                "obs", dist.Multinomial(total_count, count_param, validate_args=False), obs=docs
            )

    def guide(self, docs):
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))


def _prodlda(gen):
    num_docs, vocab, num_topics = 40, 30, 5
    # logistic-normal topics and mixtures (peaked, like a sparse Dirichlet draw)
    topics = F.softmax(3.0 * torch.randn(num_topics, vocab, generator=gen), -1)
    mix = F.softmax(2.0 * torch.randn(num_docs, num_topics, generator=gen), -1)
    docs = torch.zeros(num_docs, vocab)
    for d in range(num_docs):
        length = int(torch.randint(20, 60, (), generator=gen))
        words = torch.multinomial(mix[d] @ topics, length, replacement=True, generator=gen)
        docs[d] = torch.bincount(words, minlength=vocab).float()
    lda = ProdLDA(vocab, num_topics, hidden=20, dropout=0.2)
    return Program(
        "prodlda", lda.model, lda.guide, (docs,), "TraceMeanField_ELBO", lr=0.01,
        notes="amortized local latent with an analytic Normal/Normal KL (Pyro's tutorial uses "
        "TraceMeanField_ELBO; Trace_ELBO also trains it); separate pyro.module names for "
        "decoder (model) and encoder (guide); BatchNorm1d + Dropout in training mode; "
        "Multinomial with a shared total_count and validate_args=False.",
    )


# --------------------------------------------------------------------------------------------


def make_tutorial_programs(seed: int = 0) -> dict[str, Program]:
    """Fresh programs (new modules, guides and data), deterministic in ``seed``.

    Data come from a ``torch.Generator`` seeded with ``seed``; module weights are drawn under
    ``torch.manual_seed(seed)`` inside ``fork_rng``, so the caller's global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        programs = [_hmm(gen)]
        programs += [coin_program(opts, name) for name, opts in coin_baseline_variants().items()]
        programs += [
            _easyguide(gen),
            _autonormal_subsampled(gen),
            _bayes_regression(gen, AutoDiagonalNormal, "bayes_regression"),
            _bayes_regression(gen, AutoNormal, "bayes_regression_autonormal"),
            _scanvi(gen),
            _prodlda(gen),
        ]
    return {p.name: p for p in programs}
