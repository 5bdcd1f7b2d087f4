r"""The semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014).

Model, for each datapoint:

.. math:: y \sim \mathrm{Cat}(1/C),\quad z \sim \mathcal N(0, I),\quad
          x \mid y, z \sim \mathrm{Bernoulli}(\sigma(f_\theta(y, z)))

Guide: :math:`q_\phi(y \mid x)\, q_\phi(z \mid x, y)`. A batch is ``(x, y)`` with ``y = -1``
where the label is unknown: a labelled row observes y (its bound is
:math:`\mathcal L(x, y) = \mathbb E_{q(z|x,y)}[\log p(x, y, z) - \log q(z \mid x, y)]`), an
unlabelled row treats it as a latent, summed out exactly by the ``enum`` objective,

.. math:: \mathcal U(x) = \sum_y q_\phi(y \mid x)\,\big(\mathcal L(x, y)\big) + \mathcal H(q_\phi(y \mid x)).

Only :math:`\mathcal U` trains the classifier :math:`q_\phi(y \mid x)`, so the model adds the
auxiliary term :math:`\alpha \log q_\phi(y \mid x)` for labelled rows (Kingma et al.'s
:math:`\mathcal J^\alpha`; Pyro's ss-vae tutorial uses α = 46). It is a ``pyro.factor`` in the
model, so every objective trains it; evaluate with ``aux_loss=0`` (or unlabelled data) for the
bound alone.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import is_validation_enabled
from torch import Tensor, nn
from torch.nn import functional as F

from ..data import TensorData
from ..distributions import BernoulliLogits
from ..nets import MLP, GaussianHead
from ..utils import PPModelsError, check_rows

__all__ = ["SemiSupervisedVAE", "semi_supervised"]


class SemiSupervisedVAE(nn.Module):
    """M2: classifier q(y|x), encoder q(z|x, y), decoder p(x|y, z); ``model(x, y)`` with y = -1 unlabelled."""

    default_objective = "enum"  # what fit uses when called without an objective

    static_structure = True  # the same sites every call; labels only change masks

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        num_classes: int = 10,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        aux_loss: float = 46.0,
    ) -> None:
        super().__init__()
        if num_classes < 2 or z_dim < 1:
            raise PPModelsError(f"SemiSupervisedVAE: need num_classes >= 2 and z_dim >= 1, got {num_classes}, {z_dim}")
        if not 0 <= aux_loss < float("inf"):  # NaN too
            raise PPModelsError(f"SemiSupervisedVAE: aux_loss must be >= 0, got {aux_loss}")
        self.x_dim, self.z_dim, self.num_classes, self.aux_loss = x_dim, z_dim, num_classes, float(aux_loss)
        self.config = dict(x_dim=x_dim, z_dim=z_dim, num_classes=num_classes, hidden=tuple(hidden),
                           activation=activation, aux_loss=aux_loss)
        hidden = tuple(hidden)
        self.classifier = MLP(x_dim, hidden, num_classes, activation)
        self.encoder = GaussianHead(x_dim + num_classes, hidden, z_dim, activation)
        self.decoder = MLP(z_dim + num_classes, tuple(reversed(hidden)), x_dim, activation)

    def _labels(self, x: Tensor, y: Tensor | None, where: str) -> tuple[Tensor, Tensor]:
        """``(labels clamped to a valid class, labelled mask)``, after checking shapes and range."""
        check_rows(x, self.x_dim, where, "x")
        if y is None:
            y = torch.full(x.shape[:1], -1, dtype=torch.long, device=x.device)
        if y.shape != x.shape[:1] or y.is_floating_point():
            raise PPModelsError(f"{where}: site 'y' expects integer labels of shape ({x.shape[0]},) "
                                f"(-1 = unlabelled), got {tuple(y.shape)} {y.dtype}")
        # a value check needs a host sync: only with Pyro's validation on (as in check_batch, not in fit's loop)
        if is_validation_enabled() and bool(((y < -1) | (y >= self.num_classes)).any()):
            raise PPModelsError(f"{where}: site 'y' expects labels in [0, {self.num_classes}) or -1 for unlabelled")
        labelled = y >= 0
        return y.clamp(min=0), labelled

    def _joint(self, labels: Tensor, labelled: Tensor, latent: Tensor) -> Tensor:
        """One-hot y: the label where known, the latent draw (or enumerated value) elsewhere."""
        return F.one_hot(torch.where(labelled, labels, latent), self.num_classes)

    def model(self, x: Tensor, y: Tensor | None = None) -> None:
        pyro.module("ssvae", self)
        labels, labelled = self._labels(x, y, "SemiSupervisedVAE.model")
        prior = dist.Categorical(logits=x.new_zeros(self.num_classes))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            with poutine.mask(mask=labelled):
                pyro.sample("y_observed", prior, obs=labels)
            with poutine.mask(mask=~labelled):
                latent = pyro.sample("y", prior)
            onehot = self._joint(labels, labelled, latent).to(x.dtype)
            shape = torch.broadcast_shapes(onehot.shape[:-1], z.shape[:-1])
            logits = self.decoder(torch.cat([z.expand(*shape, self.z_dim), onehot.expand(*shape, self.num_classes)], -1))
            pyro.sample("x", BernoulliLogits(logits), obs=x)
            if self.aux_loss > 0:
                log_q = dist.Categorical(logits=self.classifier(x)).log_prob(labels)
                pyro.factor("classify", self.aux_loss * torch.where(labelled, log_q, torch.zeros_like(log_q)))

    def guide(self, x: Tensor, y: Tensor | None = None) -> None:
        pyro.module("ssvae", self)
        labels, labelled = self._labels(x, y, "SemiSupervisedVAE.guide")
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):
                latent = pyro.sample("y", dist.Categorical(logits=self.classifier(x)),
                                     infer={"enumerate": "parallel"})
            onehot = self._joint(labels, labelled, latent).to(x.dtype)
            shape = onehot.shape[:-1]
            loc, scale = self.encoder(torch.cat([x.expand(*shape, self.x_dim), onehot], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- conveniences -----------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """The classifier's most probable class, :math:`\\arg\\max_y q(y \\mid x)`, shape (B,)."""
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, data: TensorData, batch_size: int = 1000) -> float:
        """Fraction of ``data``'s rows (x, label) that :meth:`classify` gets right."""
        if len(data.tensors) < 2:
            raise PPModelsError("SemiSupervisedVAE.accuracy: data needs labels (x, y)")
        right = torch.zeros((), device=data.device)
        for x, y, *_ in data.batches(batch_size, shuffle=False):
            right += (self.classify(x) == y).sum()
        return float(right) / len(data)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """Decoder means for ``n`` draws of z; y cycles through the classes unless given (shape (n,))."""
        device = next(self.parameters()).device
        if y is None:
            y = torch.arange(n, device=device) % self.num_classes
        z = torch.randn(n, self.z_dim, device=device)
        return torch.sigmoid(self.decoder(torch.cat([z, F.one_hot(y, self.num_classes).float()], -1)))

    @torch.no_grad()
    def analogies(self, x: Tensor) -> Tensor:
        """Style transfer: each row of ``x`` encoded to z (with its predicted class), decoded as
        every class; shape (B · C, x_dim), row-major (one input per row of a C-wide grid)."""
        y = F.one_hot(self.classify(x), self.num_classes).to(x.dtype)
        z = self.encoder(torch.cat([x, y], -1))[0]
        C, B = self.num_classes, x.shape[0]
        codes = torch.eye(C, device=x.device, dtype=x.dtype).expand(B, C, C)
        return torch.sigmoid(self.decoder(torch.cat([z[:, None].expand(B, C, self.z_dim), codes], -1))).reshape(B * C, -1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        y = F.one_hot(self.classify(x), self.num_classes).to(x.dtype)
        z = self.encoder(torch.cat([x, y], -1))[0]
        return torch.sigmoid(self.decoder(torch.cat([z, y], -1)))


def semi_supervised(
    train: TensorData, num_labels: int, *, seed: int = 0, balanced: bool = True, repeats: int = 1
) -> TensorData:
    """The training set with only ``num_labels`` labels kept (the rest set to -1): balanced over
    classes (``num_labels / C`` per class, drawn with ``seed``) unless ``balanced=False``.
    ``repeats > 1`` appends the labelled rows ``repeats - 1`` more times, so that shuffled
    batches hold labelled rows more often (it also weighs their terms ``repeats`` times)."""
    if repeats < 1:
        raise PPModelsError(f"semi_supervised: repeats must be >= 1, got {repeats}")
    if len(train.tensors) < 2:
        raise PPModelsError(f"{train.name}: semi_supervised needs labelled data (x, y); load it with labels=True")
    x, y = train.tensors[:2]
    if not 0 < num_labels <= len(y):
        raise PPModelsError(f"semi_supervised: num_labels must be in [1, {len(y)}], got {num_labels}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g).to(y.device)
    if balanced:
        classes = int(y.max()) + 1
        if num_labels % classes:
            raise PPModelsError(f"semi_supervised: num_labels={num_labels} is not a multiple of the {classes} classes "
                                "(pass balanced=False for a plain random subset)")
        shuffled = y[order]
        chosen = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for c in range(classes):  # the first num_labels / C rows of each class, in shuffled order
            chosen[order[shuffled == c][: num_labels // classes]] = True
        keep = order[chosen[order]]
    else:
        keep = order[:num_labels]
    partial = torch.full_like(y, -1)
    partial[keep] = y[keep]
    out = train.subset(slice(None))
    rest = tuple(t for t in train.tensors[2:])
    if repeats > 1:
        extra = keep.repeat(repeats - 1)
        x, partial = torch.cat([x, x[extra]]), torch.cat([partial, y[extra]])
        rest = tuple(torch.cat([t, t[extra]]) for t in rest)
    out.tensors = (x, partial, *rest)
    out.name = f"{train.name}-{num_labels}labels"
    return out
