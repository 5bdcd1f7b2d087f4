"""One row of Burda et al.'s Table 1 with ppmodels' recipe, the NLL measured along the way.

    python examples/reproduce_iwae.py --objective elbo -K 1 --passes 328 --out runs/table1/vae-k1
    python examples/reproduce_iwae.py --objective iwae -K 5 --passes 328 --out runs/table1/iwae-k5

Writes the run directory (checkpoint.pt each pass, history.csv with ``test_nll`` at the
``--nll-at`` passes) and ``report.json`` (final NLL with K = 5000 on ``--nll-images`` test
images). ``--resume`` continues a run that was stopped: the checkpoint is the state.
"""

import argparse
import json
from pathlib import Path

import torch

from ppmodels.recipes import burda2016

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="burda", choices=["burda", "burda2"])
p.add_argument("--objective", default="elbo", choices=["elbo", "iwae"])
p.add_argument("-K", "--num-particles", type=int, default=1)
p.add_argument("--passes", type=int, default=328)
p.add_argument("--nll-at", default="12,40,121", help="passes after which the NLL is measured")
p.add_argument("--curve-images", type=int, default=1000, help="test images for the NLL along the way")
p.add_argument("--nll-images", type=int, default=None, help="test images for the final NLL (default: all 10,000)")
p.add_argument("--num-samples", type=int, default=5000)
p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="auto")
p.add_argument("--out", required=True)
p.add_argument("--resume", action="store_true")
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
model, history, report = burda2016(
    args.preset, args.objective, args.num_particles, args.passes, out=args.out, resume=args.resume,
    nll_at=[int(v) for v in args.nll_at.split(",") if v], num_samples=args.num_samples, nll_images=args.nll_images,
    curve_images=args.curve_images, seed=args.seed, device=args.device, progress=False)
report["threads"] = torch.get_num_threads()
(Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
