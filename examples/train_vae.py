"""Train the VAE on binarized MNIST with any objective and report the test NLL.

    python examples/train_vae.py --objective iwae --num-particles 5 --epochs 10

The same as `ppmodels train vae ...`, written out with the library's functions so you can copy
and change it.
"""

import argparse

import torch

from ppmodels import data, evaluate
from ppmodels.fit import fit
from ppmodels.models import VAE

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--preset", default="burda", choices=["pyro", "burda"])
p.add_argument("--objective", default="elbo")
p.add_argument("--num-particles", type=int, default=1)
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=100)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--device", default="auto")
p.add_argument("--out", default="runs/example-vae")
p.add_argument("--nll-images", type=int, default=1000)
p.add_argument("--nll-samples", type=int, default=1000)
args = p.parse_args()

torch.manual_seed(0)
splits = data.mnist(binarize="dynamic", device=args.device)
vae = VAE.preset(args.preset)
history = fit(vae, splits["train"], objective=args.objective, num_particles=args.num_particles,
              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
              test=splits["test"], out=args.out)
print(history.tail())
nll = -evaluate.log_likelihood(vae, splits["test"].subset(args.nll_images), args.nll_samples).mean()
print(f"{args.objective} (K={args.num_particles}): test NLL {nll:.2f} nats "
      f"({args.nll_images} images, K={args.nll_samples})")
