"""Run by tests/test_distributed.py, under torchrun or as one plain process: train a model with
fit and save the final parameters and history (rank 0)."""

import json
import sys

import torch

from ppmodels.fit import fit
from ppmodels.models import VAE, GaussianMixture
from ppmodels.data import TensorData, synthetic_images

what, out = sys.argv[1], sys.argv[2]
if what == "gmm-unscaled":  # the power check: global sites counted once per rank
    from ppmodels import distributed

    real = distributed.ScaleOutside
    distributed.ScaleOutside = lambda plate, factor: real(plate, 1.0)
    what = "gmm"
torch.manual_seed(0)
if what == "gmm":
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(40, 2, generator=g) - 3, torch.randn(40, 2, generator=g) + 3])
    model = GaussianMixture(3, 2, covariance="diag", guide="map")
    history = fit(model, x, objective="enum", steps=12, batch_size=20, lr=0.05, seed=3, device="cpu", progress=False)
else:
    images, _ = synthetic_images(600, seed=0)
    train, test = TensorData(images[:400], binarize="dynamic"), TensorData(images[400:], binarize="dynamic")
    model = VAE(x_dim=784, z_dim=4, hidden=(32,))
    objective = sys.argv[3] if len(sys.argv) > 3 else "elbo"
    history = fit(model, train, objective=objective, epochs=4, batch_size=40, lr=3e-3, seed=int(sys.argv[4]) if len(sys.argv) > 4 else 0,
                  test=test, device="cpu", progress=False, out=out + ".run", overwrite=True)
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, out)
    with open(out + ".json", "w") as f:
        json.dump(history.to_dict("list"), f)
