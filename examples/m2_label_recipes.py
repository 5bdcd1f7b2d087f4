"""M2 at 100 labels: test and validation accuracy of q(y|x) after every epoch, for one training recipe.

    python examples/m2_label_recipes.py --tag pyro --lr 4.2e-4 --batch 100 --beta1 0.95 --epochs 30
    python examples/m2_label_recipes.py --plot runs/m2/*.jsonl --figure guides/figures/m2-100-labels.png

The recipe's knobs: how often the labelled rows are presented (--repeats: each labelled image that
many times per epoch), the auxiliary weight α, the learning rate and Adam's β1, the batch size, the
size of z, a warm-up of the unlabelled rows' bound (--warmup E: their terms weighted by
(epoch + 1)/(E + 1), 0-based epochs, until that reaches 1; the labelled rows and α's term always at 1), and the data: dynamically binarized (default), fixed, or grey levels scored as Bernoulli
as Pyro's ss-vae tutorial does (--binarize none; the likelihood's support is relaxed to [0, 1] for
this script only, since ppmodels' Bernoulli refuses non-binary data). The labels are drawn (10 per
class, --seed) from the first 50,000 training images; the last 10,000 are the validation set.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from pyro import poutine

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--tag", default="m2", help="the run's name; writes OUT/TAG.jsonl")
p.add_argument("--repeats", type=int, default=1, help="each labelled image this many times per epoch")
p.add_argument("--aux", type=float, default=46.0, help="auxiliary weight α")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--beta1", type=float, default=0.9)
p.add_argument("--batch", type=int, default=200)
p.add_argument("--z", type=int, default=50)
p.add_argument("--binarize", choices=["dynamic", "fixed", "none"], default="dynamic")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--warmup", type=int, default=0, help="epochs over which the unlabelled rows' weight rises from 0 to 1")
p.add_argument("--seed", type=int, default=0, help="the label draw and the training seed")
p.add_argument("--out", default="runs/m2")
p.add_argument("--plot", nargs="*", default=None, help="draw these runs' curves instead of training")
p.add_argument("--figure", default="m2-100-labels.png")
a = p.parse_args()

if a.plot is not None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    colors = plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]
    for i, path in enumerate(a.plot):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        ax.plot([r["epoch"] + 1 for r in rows], [r["test"] for r in rows], marker=".", color=colors[i % 20],
                ls="-" if i < 10 else "--", label=f"{rows[0]['tag']}: {rows[0]['recipe']}")
    ax.axhline(0.90, color="k", ls="--", lw=0.8)
    ax.text(1, 0.905, "target 0.90", fontsize=8)
    ax.set(xlabel="epoch", ylabel="test accuracy of argmax q(y|x)", ylim=(0.15, 1.0),
           title="M2, 100 labels: test accuracy per epoch")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(a.figure, dpi=110, bbox_inches="tight")
    print("wrote", a.figure)
    raise SystemExit

from ppmodels import data  # noqa: E402
from ppmodels.fit import fit  # noqa: E402
from ppmodels.models import SemiSupervisedVAE  # noqa: E402
from ppmodels.models.ssvae import semi_supervised  # noqa: E402

torch.manual_seed(a.seed)
if a.binarize == "none":  # grey levels scored as Bernoulli: the support relaxed, for this script only
    from torch.distributions import constraints

    import ppmodels.distributions as distributions

    distributions.BernoulliLogits.support = constraints.independent(constraints.unit_interval, 1)
splits = data.mnist(binarize=None if a.binarize == "none" else a.binarize, labels=True, device="cpu")
full = splits["train"]
train_part, val = full.subset(slice(0, 50000)), full.subset(slice(50000, 60000))
train = semi_supervised(train_part, 100, seed=a.seed, repeats=a.repeats)


class WarmedUp(SemiSupervisedVAE):
    """M2 with the unlabelled rows' terms (model and guide) scaled by ``weight``."""

    static_structure = False  # the weight changes between epochs: no captured fast path
    weight = 1.0

    def _scaled(self, program, x, y):
        unlabelled = ~self._labels(x, y, "WarmedUp")[1]
        scale = torch.where(unlabelled, torch.tensor(self.weight), torch.tensor(1.0)).to(x.dtype)
        with poutine.scale(scale=scale):
            program(x, y)

    def model(self, x, y=None):
        self._scaled(super().model, x, y)

    def guide(self, x, y=None):
        self._scaled(super().guide, x, y)


model = WarmedUp(z_dim=a.z, aux_loss=a.aux) if a.warmup else SemiSupervisedVAE(z_dim=a.z, aux_loss=a.aux)
recipe = (f"repeats {a.repeats}, α {a.aux:g}, lr {a.lr:g}, β1 {a.beta1:g}, batch {a.batch}, z {a.z}, "
          f"{a.binarize}" + (f", warm-up {a.warmup}" if a.warmup else ""))
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
log = open(out / f"{a.tag}.jsonl", "w")


class Accuracy:
    """Validation and test accuracy after each epoch, one JSON line each."""

    def on_fit_start(self, state):
        self.t0 = time.time()

    def on_epoch_start(self, state):
        if a.warmup:
            model.weight = min(1.0, (state.epoch + 1) / (a.warmup + 1))

    def on_epoch_end(self, state):
        row = dict(tag=a.tag, recipe=recipe, epoch=state.epoch, val=model.accuracy(val),
                   test=model.accuracy(splits["test"]), t=time.time() - self.t0)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(row, flush=True)


fit(model, train, objective="enum", epochs=a.epochs, batch_size=a.batch, lr=a.lr, betas=(a.beta1, 0.999),
    device="cpu", progress=False, callbacks=[Accuracy()], seed=a.seed)
