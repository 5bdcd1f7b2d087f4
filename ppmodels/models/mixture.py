r"""Gaussian mixture with the assignment enumerated exactly.

.. math:: \pi \sim \mathrm{Dir}(\alpha),\quad \mu_k \sim \mathcal N(0, \sigma_0^2 I),\quad
          \Sigma_k \sim \text{(LogNormal scales, LKJ correlations)},\quad
          c_n \sim \mathrm{Cat}(\pi),\quad x_n \mid c_n \sim \mathcal N(\mu_{c_n}, \Sigma_{c_n})

Covariance types as scikit-learn's: ``"full"`` (one per component), ``"tied"`` (one shared),
``"diag"`` and ``"spherical"``. The assignment :math:`c_n` is marked for parallel enumeration
and summed out by ``TraceEnum_ELBO`` (objective ``"enum"``); it is never sampled.

Guides: ``guide="map"`` (point masses on weights, locations and scales: MAP estimation) or
``guide="bayes"`` (a mean-field guide: Dirichlet on the weights, Normal on the locations,
LogNormal on the scales; the LKJ correlations, for full/tied, stay point estimates).

Closed forms: :meth:`GaussianMixture.log_likelihood` (exact, per datapoint, by log-sum-exp over
components), :meth:`GaussianMixture.responsibilities`, and :meth:`GaussianMixture.fit_map`,
which optimizes many random restarts at once (a leading restart dimension, one Adam) on the
same MAP objective the Pyro program defines.

Initialisation: :func:`ppmodels.fit.fit` calls :meth:`GaussianMixture.init_from_data` on the
first fit of a fresh model (not on a resume, and not once its parameters were set, loaded or
trained): k-means++ seeding and Lloyd iterations, as scikit-learn's ``init_params="kmeans"``,
give the locations, and the clusters' sizes and spread the weights and scales. The
constructor's ``locs = randn(K, D)`` ignores the data's location and scale and can leave the
fit in a local optimum.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor, nn

from ..utils import PPModelsError, check_rows

__all__ = ["GaussianMixture", "COVARIANCES"]

COVARIANCES = ("full", "tied", "diag", "spherical")


class GaussianMixture(nn.Module):
    """K-component Gaussian mixture in D dimensions; ``model(x)``/``guide(x)`` are Pyro programs."""

    default_objective = "enum"  # what fit uses when called without an objective

    def __init__(
        self,
        num_components: int = 2,
        dim: int = 1,
        covariance: str = "diag",
        guide: str = "map",
        *,
        weight_concentration: float = 0.5,
        loc_scale: float = 10.0,
        scale_prior: tuple[float, float] = (0.0, 2.0),
        lkj_concentration: float = 1.0,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise PPModelsError(f"GaussianMixture: covariance must be one of {COVARIANCES}, got {covariance!r}")
        if guide not in ("map", "bayes"):
            raise PPModelsError(f"GaussianMixture: guide must be 'map' or 'bayes', got {guide!r}")
        if num_components < 1 or dim < 1:
            raise PPModelsError(f"GaussianMixture: need num_components >= 1 and dim >= 1, got {num_components}, {dim}")
        self.K, self.D, self.covariance, self.guide_type = num_components, dim, covariance, guide
        self.alpha, self.loc_scale, self.scale_prior, self.eta = weight_concentration, loc_scale, scale_prior, lkj_concentration
        K, D = num_components, dim
        scale_shape = {"full": (K, D), "tied": (D,), "diag": (K, D), "spherical": (K,)}[covariance]
        # guide parameters (unconstrained): MAP point estimates or variational parameters
        self.weight_logits = nn.Parameter(torch.zeros(K))
        self.locs = nn.Parameter(torch.randn(K, D))
        self.log_scales = nn.Parameter(torch.zeros(scale_shape))
        self.correlated = covariance in ("full", "tied") and D > 1
        if self.correlated:
            n_corr = K if covariance == "full" else 1
            self.corr_raw = nn.Parameter(torch.zeros(n_corr, D * (D - 1) // 2))
        if guide == "bayes":
            self.log_concentration = nn.Parameter(torch.zeros(K))
            self.loc_log_scale = nn.Parameter(torch.full((K, D), -1.0))
            self.scale_log_scale = nn.Parameter(torch.full(scale_shape, -1.0))
        # the constructor's values, to tell a fresh model (initialised from the data on the first
        # fit) from one whose parameters were set, loaded or trained (a tuple: no module state)
        self._initial_values = tuple(p.detach().clone() for p in self.parameters())

    # -- shared pieces --------------------------------------------------------------------------
    def _corr_cholesky(self) -> Tensor | None:
        if not self.correlated:
            return None
        L = torch.distributions.transform_to(constraints.corr_cholesky)(self.corr_raw)
        return L if self.covariance == "full" else L[0]

    def _component_dist(self, locs: Tensor, scales: Tensor, corr: Tensor | None) -> dist.TorchDistribution:
        """The K component distributions from locs (…, K, D) and the scale tensor."""
        if self.covariance == "spherical":
            scales = scales[..., None].expand(locs.shape)
        elif self.covariance == "tied":
            scales = scales.unsqueeze(-2).expand(locs.shape)
            corr = None if corr is None else corr.unsqueeze(-3)  # shared by the K components
        if corr is None:
            return dist.Normal(locs, scales, validate_args=False).to_event(1)
        return dist.MultivariateNormal(locs, scale_tril=scales[..., :, None] * corr, validate_args=False)

    def _scale_site_shape(self):
        return {"full": (self.K, self.D), "tied": (self.D,), "diag": (self.K, self.D), "spherical": (self.K,)}[self.covariance]

    # -- the Pyro programs ------------------------------------------------------------------
    def model(self, x: Tensor) -> None:
        check_rows(x, self.D, "GaussianMixture.model", "obs", rows="N")
        K, D = self.K, self.D
        weights = pyro.sample("weights", dist.Dirichlet(x.new_full((K,), self.alpha)))
        locs = pyro.sample("locs", dist.Normal(x.new_zeros(K, D), self.loc_scale).to_event(2))
        shape = self._scale_site_shape()
        m, s = self.scale_prior
        scales = pyro.sample("scales", dist.LogNormal(x.new_full(shape, m), s).to_event(len(shape)))
        corr = None
        if self.correlated:
            lkj = dist.LKJCholesky(D, self.eta)
            corr_shape = (K,) if self.covariance == "full" else ()
            corr = pyro.sample("corr", lkj.expand(corr_shape).to_event(len(corr_shape)))
        components = self._component_dist(locs, scales, corr)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("assignment", dist.Categorical(weights), infer={"enumerate": "parallel"})
            loc_c = locs[c]
            if corr is None:
                pyro.sample("obs", dist.Normal(loc_c, _pick(scales, c, self.covariance)).to_event(1), obs=x)
            else:
                pyro.sample("obs", dist.MultivariateNormal(loc_c, scale_tril=components.scale_tril[c]
                                                           if self.covariance == "full" else components.scale_tril[0]),
                            obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("gmm", self)
        shape = self._scale_site_shape()
        if self.guide_type == "map":
            pyro.sample("weights", dist.Delta(torch.softmax(self.weight_logits, -1), event_dim=1))
            pyro.sample("locs", dist.Delta(self.locs, event_dim=2))
            pyro.sample("scales", dist.Delta(self.log_scales.exp(), event_dim=len(shape)))
        else:
            pyro.sample("weights", dist.Dirichlet(self.log_concentration.exp() * 10 + 1e-3))
            pyro.sample("locs", dist.Normal(self.locs, self.loc_log_scale.exp()).to_event(2))
            pyro.sample("scales", dist.LogNormal(self.log_scales, self.scale_log_scale.exp()).to_event(len(shape)))
        if self.correlated:
            L = self._corr_cholesky()
            pyro.sample("corr", dist.Delta(L, event_dim=3 if self.covariance == "full" else 2))

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, locs: Tensor, covariances: Tensor) -> None:
        """Set the guide's centre from mixture parameters in scikit-learn's layout
        (``weights_``, ``means_``, ``covariances_`` for this covariance type)."""
        weights, locs, cov = (torch.as_tensor(t, dtype=self.locs.dtype) for t in (weights, locs, covariances))
        self.weight_logits.copy_(weights.log())
        self.locs.copy_(locs)
        if self.covariance in ("diag", "spherical"):
            self.log_scales.copy_(0.5 * cov.log())
            return
        scales = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        self.log_scales.copy_(scales.log())
        if self.correlated:
            corr = torch.linalg.cholesky(cov) / scales[..., :, None]
            raw = torch.distributions.transform_to(constraints.corr_cholesky).inv(corr)
            self.corr_raw.copy_(raw.reshape(self.corr_raw.shape))

    def is_fresh(self) -> bool:
        """Whether every parameter still holds the value the constructor gave it (not set with
        :meth:`set_parameters`, loaded, trained, or written by hand)."""
        params = list(self.parameters())
        return len(params) == len(self._initial_values) and all(
            p.shape == v.shape and torch.equal(p.detach(), v.to(p.device, p.dtype))
            for p, v in zip(params, self._initial_values))

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator | None = None, *, iterations: int = 50,
                       force: bool = False) -> bool:
        """Start the guide's centre from the data, as scikit-learn's ``init_params="kmeans"``:
        k-means++ seeding (greedy D² sampling, ``2 + log K`` candidates per centre), then Lloyd
        iterations (at most ``iterations``, until the assignments stop changing); the locations
        are the clusters' means, the covariances their spread (each cluster's, shrunk towards
        the pooled within-cluster covariance by one datapoint's worth, so that a cluster of one
        point keeps a finite density), the weights their sizes. ``fit`` calls this before
        training a model; it does nothing (and returns False) unless the model is fresh
        (:meth:`is_fresh`) or ``force``. The random draws (``2 + log K`` uniforms per centre)
        come from ``generator`` (any device; the global torch RNG if None); the arithmetic runs
        on ``x``'s device, vectorized over the datapoints. Returns True when it initialised."""
        if not force and not self.is_fresh():
            return False
        check_rows(x, self.D, "GaussianMixture.init_from_data", "obs", rows="N")
        if x.shape[0] == 0:
            raise PPModelsError("GaussianMixture.init_from_data: no datapoints")
        x = x.detach().to(self.locs.dtype)
        centres = _kmeans_plus_plus(x - x.mean(0), self.K, generator) + x.mean(0)
        centres, labels = _lloyd(x, centres, iterations)
        weights, locs, cov = _cluster_moments(x, labels, centres, self.K, self.covariance)
        self.set_parameters(weights, locs, cov)
        if self.guide_type == "bayes":  # the Dirichlet posterior of hard assignments: alpha + N_k
            counts = weights * x.shape[0]
            self.log_concentration.copy_(((self.alpha + counts - 1e-3) / 10).clamp_min(1e-6).log())
        return True

    def posterior_samples(self, num_samples: int) -> dict[str, Tensor]:
        """Independent draws of the global latents from the guide, each (num_samples, ...)."""
        from pyro import poutine

        with torch.no_grad(), pyro.plate("draws", num_samples, dim=-1):
            trace = poutine.trace(self.guide).get_trace(self.locs.new_zeros(1, self.D))
        return {name: site["value"].detach() for name, site in trace.nodes.items()
                if site["type"] == "sample" and name != "corr"}

    def to_inference_data(self, num_samples: int = 1000):
        """Guide draws as an ArviZ ``InferenceData`` (one chain of independent draws)."""
        import arviz as az

        draws = self.posterior_samples(num_samples)
        return az.from_dict(posterior={k: v.cpu().numpy()[None] for k, v in draws.items()})

    # -- closed forms --------------------------------------------------------------------------
    def point_estimate(self) -> dict[str, Tensor]:
        """Weights, locations, scales (and correlation Cholesky factors) at the guide's centre."""
        out = {"weights": torch.softmax(self.weight_logits, -1).detach(), "locs": self.locs.detach(),
               "scales": self.log_scales.exp().detach()}
        if self.guide_type == "bayes":
            conc = self.log_concentration.exp() * 10 + 1e-3
            out["weights"] = (conc / conc.sum()).detach()
        if self.correlated:
            out["corr"] = self._corr_cholesky().detach()
        return out

    def _components(self) -> dist.TorchDistribution:
        p = self.point_estimate()
        return self._component_dist(p["locs"], p["scales"], p.get("corr"))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log \sum_k \pi_k \mathcal N(x_n; \mu_k, \Sigma_k)` per datapoint, shape (N,)."""
        weights = self.point_estimate()["weights"]
        return torch.logsumexp(weights.log() + self._components().log_prob(x[:, None, :]), -1)

    @torch.no_grad()
    def responsibilities(self, x: Tensor) -> Tensor:
        """:math:`p(c_n = k \\mid x_n)`, shape (N, K)."""
        weights = self.point_estimate()["weights"]
        return torch.softmax(weights.log() + self._components().log_prob(x[:, None, :]), -1)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` draws from the mixture at the guide's centre, shape (n, D)."""
        c = torch.multinomial(self.point_estimate()["weights"], n, replacement=True)
        return self._components().sample((n,))[torch.arange(n), c]

    def map_objective(self, x: Tensor, weights: Tensor, locs: Tensor, scales: Tensor, corr: Tensor | None = None) -> Tensor:
        r""":math:`\log p(x \mid \theta) + \log p(\theta)` for parameters with any leading batch
        (restart) shape — what the MAP guide's ``enum`` ELBO equals."""
        comp = self._component_dist(locs, scales, corr)
        batch = locs.shape[:-2]  # restart dims, possibly none
        xv = x.reshape(x.shape[0], *([1] * len(batch)), 1, self.D)  # (N, ..., 1, D)
        ll = torch.logsumexp(weights.log() + comp.log_prob(xv), -1).sum(0)  # (...)
        m, s = self.scale_prior
        lp = dist.Dirichlet(torch.full((self.K,), self.alpha, dtype=x.dtype), validate_args=False).log_prob(weights)
        lp = lp + dist.Normal(0.0, self.loc_scale, validate_args=False).log_prob(locs).flatten(-2).sum(-1)
        lp = lp + dist.LogNormal(m, s, validate_args=False).log_prob(scales).reshape(*batch, -1).sum(-1)
        if corr is not None:
            lkj = dist.LKJCholesky(self.D, self.eta, validate_args=False).log_prob(corr)
            lp = lp + (lkj.sum(-1) if self.covariance == "full" else lkj)
        return ll + lp

    def fit_map(self, x: Tensor, restarts: int = 32, steps: int = 500, lr: float = 0.05, seed: int = 0) -> Tensor:
        """MAP by many random restarts at once: every restart's parameters carry a leading
        restart dimension and one Adam optimizes them all (no Python loop over restarts).
        Restarts start at random datapoints as locations, the data's spread as scales. The best
        non-degenerate restart (no weight collapsed to 0, where a Dirichlet prior with
        concentration < 1 makes the objective unbounded) is written into the guide's parameters.
        Returns every restart's final objective."""
        if self.guide_type != "map":
            raise PPModelsError("GaussianMixture.fit_map: needs guide='map'; train a 'bayes' guide with fit(..., objective='enum')")
        g = torch.Generator().manual_seed(seed)
        R, K, D = restarts, self.K, self.D
        idx = torch.stack([torch.randperm(x.shape[0], generator=g)[:K] for _ in range(R)]) if x.shape[0] >= K else \
            torch.randint(x.shape[0], (R, K), generator=g)
        locs = x[idx].clone().requires_grad_(True)  # (R, K, D)
        shape = self._scale_site_shape()
        log_scales = (x.std(0).clamp_min(1e-3).log().mean() * torch.ones(R, *shape)
                      + 0.1 * torch.randn(R, *shape, generator=g)).requires_grad_(True)
        logits = (0.1 * torch.randn(R, K, generator=g)).requires_grad_(True)
        raw = [locs, log_scales, logits]
        corr_raw = None
        if self.correlated:
            corr_raw = torch.zeros(R, *self.corr_raw.shape).requires_grad_(True)
            raw.append(corr_raw)
        opt = torch.optim.Adam(raw, lr=lr)
        to_corr = torch.distributions.transform_to(constraints.corr_cholesky)

        def objective() -> Tensor:
            corr = None
            if corr_raw is not None:
                corr = to_corr(corr_raw)
                corr = corr if self.covariance == "full" else corr[:, 0]
            return self.map_objective(x, torch.softmax(logits, -1), locs, log_scales.exp(), corr)

        for _ in range(steps):
            opt.zero_grad()
            values = objective()
            (-torch.where(torch.isfinite(values), values, 0.0).sum()).backward()  # a diverged restart stays alone
            for p in raw:
                p.grad.nan_to_num_(0.0)
            opt.step()
        with torch.no_grad():
            values = objective()
            # With a Dirichlet concentration below 1 the MAP objective is unbounded at the
            # simplex's edge (a weight -> 0); such degenerate restarts are not candidates.
            weights = torch.softmax(logits, -1)
            ok = torch.isfinite(values) & (weights.min(-1).values > 1e-4 / self.K)
            if not ok.any():
                raise PPModelsError("GaussianMixture.fit_map: every restart degenerated; try more restarts or a lower lr")
            best = int(torch.where(ok, values, -torch.inf).argmax())
            self.locs.copy_(locs[best])
            self.log_scales.copy_(log_scales[best])
            self.weight_logits.copy_(logits[best])
            if corr_raw is not None:
                self.corr_raw.copy_(corr_raw[best])
        return values.detach()


def _sq_distances(x: Tensor, centres: Tensor) -> Tensor:
    """Squared Euclidean distances (N, C) between rows of ``x`` (N, D) and ``centres`` (C, D),
    in O(N C) memory; ``x`` should be centred (no cancellation far from the origin)."""
    d2 = (x * x).sum(-1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(-1)
    return d2.clamp_min(0.0)


def _uniform(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), greedy as scikit-learn's: each new
    centre is the best, by the resulting potential, of ``2 + log k`` candidates drawn with
    probability proportional to the squared distance to the nearest centre so far. (k, D)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = (_uniform(1, generator, x) * n).long().clamp_max(n - 1)
    centres = [x[first[0]]]
    d2 = _sq_distances(x, x[first])[:, 0]  # (N,) to the nearest centre so far
    for _ in range(1, k):
        cdf = d2.cumsum(0)
        # inverse-CDF draws; with every point on a centre already (cdf all 0) they take the last
        cand = torch.searchsorted(cdf, _uniform(trials, generator, x) * cdf[-1], right=True).clamp_max(n - 1)
        new_d2 = torch.minimum(d2, _sq_distances(x, x[cand]).T)  # (trials, N)
        best = new_d2.sum(-1).argmin()
        centres.append(x[cand[best]])
        d2 = new_d2[best]
    return torch.stack(centres)


def _lloyd(x: Tensor, centres: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations from ``centres`` until the assignments stop changing (at most
    ``iterations``); an empty cluster keeps its centre. Returns the centres and the labels."""
    mean = x.mean(0)
    xc, k = x - mean, centres.shape[0]
    centres = centres - mean
    labels = _sq_distances(xc, centres).argmin(-1)
    for _ in range(iterations):
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (N, k)
        counts = onehot.sum(0)
        centres = torch.where(counts[:, None] > 0, onehot.T @ xc / counts.clamp_min(1)[:, None], centres)
        new = _sq_distances(xc, centres).argmin(-1)
        if torch.equal(new, labels):
            break
        labels = new
    return centres + mean, labels


def _cluster_moments(x: Tensor, labels: Tensor, centres: Tensor, k: int, covariance: str
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and covariances (scikit-learn's layout for ``covariance``) of the hard
    clusters ``labels``. Each cluster's covariance is shrunk towards the pooled within-cluster
    one, ``(N_k S_k + S) / (N_k + 1)``, and all get a small ridge (1e-6 of the data's variance)."""
    n, d = x.shape
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    sums = torch.zeros(k, d, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    scatter = torch.empty(k, d, d, dtype=x.dtype, device=x.device)
    for j in range(k):  # a loop over the components; each is vectorized over the datapoints
        diff = (x - means[j]) * (labels == j).to(x.dtype)[:, None]
        scatter[j] = diff.T @ diff
    pooled = scatter.sum(0) / n
    ridge = (1e-6 * x.var(0, unbiased=False).mean()).clamp_min(1e-10) * torch.eye(d, dtype=x.dtype, device=x.device)
    full = (scatter + pooled) / (counts + 1)[:, None, None] + ridge
    weights = counts.clamp_min(1) / counts.clamp_min(1).sum()
    if covariance == "full":
        cov = full
    elif covariance == "tied":
        cov = pooled + ridge
    elif covariance == "diag":
        cov = torch.diagonal(full, dim1=-2, dim2=-1)
    else:  # spherical
        cov = torch.diagonal(full, dim1=-2, dim2=-1).mean(-1)
    return weights, means, cov


def _pick(scales: Tensor, c: Tensor, covariance: str) -> Tensor:
    """Per-datapoint diagonal scales for assignments ``c`` (any enumeration shape)."""
    if covariance == "tied":
        return scales
    if covariance == "spherical":
        return scales[c][..., None]
    return scales[c]
