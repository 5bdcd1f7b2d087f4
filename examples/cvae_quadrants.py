"""MNIST quadrant completion: baseline network vs conditional VAE, for 1, 2 and 3 given quadrants.

    python examples/cvae_quadrants.py --epochs 10

Trains the baseline, then the CVAE on top of it, for each number of given quadrants, and prints
the conditional negative log-likelihood -log p(y|x) of both on binarized test targets (the
CVAE's by importance sampling, the baseline's exactly): the table of Sohn et al. (2015).
"""

import argparse

import pandas as pd
import torch

from ppmodels import data, evaluate
from ppmodels.fit import fit
from ppmodels.models import ConditionalVAE, QuadrantBaseline

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3])
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--device", default="auto")
p.add_argument("--test-images", type=int, default=1000)
p.add_argument("--num-samples", type=int, default=1000)
args = p.parse_args()

splits = data.mnist(binarize="dynamic", device=args.device)
images = splits["test"].subset(args.test_images).full(torch.Generator(device=splits["test"].device).manual_seed(0))[0]
rows = []
for q in args.quadrants:
    torch.manual_seed(0)
    baseline = QuadrantBaseline(q)
    fit(baseline, splits["train"], epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    cvae = ConditionalVAE(q, baseline=baseline)
    fit(cvae, splits["train"], epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    rows.append({"quadrants": q, "baseline": -baseline.log_likelihood(images).mean().item(),
                 "cvae": -evaluate.log_likelihood(cvae, images, args.num_samples).mean().item()})
    print(rows[-1])
print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
