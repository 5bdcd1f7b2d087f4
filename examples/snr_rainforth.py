"""Rainforth et al. (2018), the Gaussian toy: SNR of IWAE and DReG gradients against K.

z ~ N(mu, I), x | z ~ N(z, I), q(z | x) = N(Ax + b, 2/3 I), D = 20, N = 1024, parameters at the
optimum plus N(0, 0.01^2). For `iwae`, the decoder (mu) SNR grows like sqrt(K) and the encoder
(A, b) SNR falls like 1/sqrt(K); `dreg`'s encoder SNR does not fall. This script fits the
log-log slopes over K in {1, 3, 10, 30, 100, 300, 1000}.

    python examples/snr_rainforth.py --out runs/snr-rainforth

The same study from the command line (without the slope fit):

    ppmodels variance --model gaussian-toy --objectives iwae,dreg --num-particles 1,3,10,30,100,300,1000 \
        --replicates 1000 --batch-size 1 --out runs/snr-rainforth
"""

import argparse
from pathlib import Path

import numpy as np

from ppmodels.analysis import gradient_study, plot_study
from ppmodels.models.conjugate import gaussian_toy

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--replicates", type=int, default=1000)
p.add_argument("--batch-size", type=int, default=1, help="datapoints per gradient estimate (the paper: 1)")
p.add_argument("--num-particles", default="1,3,10,30,100,300,1000")
p.add_argument("--device", default="auto")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default="runs/snr-rainforth")
args = p.parse_args()

model, x = gaussian_toy(seed=args.seed)
Ks = [int(k) for k in args.num_particles.split(",")]
df = gradient_study(model.model, model.guide, x[: args.batch_size], objectives=["iwae", "dreg"], num_particles=Ks,
                    replicates=args.replicates, params={"model": [model.b], "guide": [model.A, model.c]},
                    device=args.device, seed=args.seed)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
df.to_csv(out / "study.csv", index=False)
plot_study(df, out / "study.png", title="Gaussian toy (Rainforth et al. 2018)")

print(df[["objective", "num_particles", "group", "snr", "total_variance"]].to_string(index=False))
print("\nlog-log slope of SNR against K (expected: iwae model +0.5, iwae guide -0.5, dreg guide >= 0)")
slopes = {}
for (name, group), rows in df.groupby(["objective", "group"]):
    slope = np.polyfit(np.log(rows["num_particles"]), np.log(rows["snr"]), 1)[0]
    slopes[f"{name}/{group}"] = slope
    print(f"  {name:5s} {group:6s} {slope:+.3f}")
(out / "slopes.txt").write_text("\n".join(f"{k} {v:+.4f}" for k, v in slopes.items()) + "\n")
