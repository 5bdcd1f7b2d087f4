"""Semi-supervised MNIST with M2: accuracy of q(y|x) from a few labels, y enumerated.

    python examples/semi_supervised.py --labels 100 --epochs 20

The same as `ppmodels train ssvae ...`, written out with the library's functions so you can copy
and change it (another objective for y: --objective elbo samples it and uses the score function).
"""

import argparse

import torch

from ppmodels import data
from ppmodels.fit import fit
from ppmodels.models import SemiSupervisedVAE
from ppmodels.models.ssvae import semi_supervised

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--labels", type=int, default=100, help="labels kept, balanced over the classes")
p.add_argument("--objective", default="enum")
p.add_argument("--aux-loss", type=float, default=46.0)
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--batch-size", type=int, default=200)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--device", default="auto")
p.add_argument("--out", default="runs/example-ssvae")
args = p.parse_args()

torch.manual_seed(0)
splits = data.mnist(binarize="dynamic", labels=True, device=args.device)
train = semi_supervised(splits["train"], args.labels)
model = SemiSupervisedVAE(aux_loss=args.aux_loss)
history = fit(model, train, objective=args.objective, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr, device=args.device, out=args.out)
print(history.tail())
print(f"{args.labels} labels, {args.objective}: test accuracy {model.accuracy(splits['test']):.4f}")
