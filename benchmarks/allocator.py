"""How glibc's allocator thresholds change a K = 50 step on the CPU: the hand-written eager step
and the fast path's compiled step (``burda`` preset, batch 128), each in a fresh process under
glibc's defaults, with only ``MALLOC_TRIM_THRESHOLD_`` set, and with it and
``MALLOC_MMAP_THRESHOLD_`` both set. The step's largest temporaries (50 × 128 × 784 floats,
20 MB) are mapped and handed back to the kernel step after step unless both are set; setting
one alone turns glibc's dynamic thresholds off. Reports ms a step: median (min–max) over
``--blocks`` blocks of ``--steps`` steps, after one warm-up block.

    python benchmarks/allocator.py [--objective dreg] [--blocks 8] [--steps 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SETTINGS = {"glibc defaults": {},
            "trim threshold only": {"MALLOC_TRIM_THRESHOLD_": str(256 << 20)},
            "both thresholds": {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(128 << 20)}}


def child(side: str, objective: str, blocks: int, steps: int) -> None:
    import torch

    import handwritten
    from common import ppmodels_step
    from ppmodels.fit import make_optimizer
    from ppmodels.models import VAE
    from ppmodels.objectives import make

    torch.manual_seed(0)
    model = VAE.preset("burda")
    opt = make_optimizer(list(model.parameters()))
    x = torch.bernoulli(torch.rand(128, 784) * 0.3)
    if side == "compiled":
        step, kind = ppmodels_step(model, make(objective, num_particles=50), x, opt, "compiled")
        if kind != "compiled":
            raise SystemExit(f"the fast path fell back to {kind}")
        run = lambda: step((x,))  # noqa: E731
    else:
        run = lambda: handwritten.step(model, opt, x, objective, 50)  # noqa: E731
    ms = []
    for block in range(blocks + 1):
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        if block:  # the first block warms up
            ms.append((time.perf_counter() - t0) / steps * 1e3)
    print(json.dumps(ms))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="dreg", choices=["iwae", "dreg"])
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--child", choices=["hand-written", "compiled"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.objective, args.blocks, args.steps)
    from common import environment, print_table, write_csv

    rows = []
    for setting, env in SETTINGS.items():
        for side in ("hand-written", "compiled"):
            out = subprocess.run([sys.executable, __file__, "--child", side, "--objective", args.objective,
                                  "--blocks", str(args.blocks), "--steps", str(args.steps)],
                                 env={**os.environ, **env}, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            ms = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"allocator": setting, "step": f"{side} {args.objective} K=50", "ms_median": statistics.median(ms),
                         "ms_min": min(ms), "ms_max": max(ms)})
    print(environment())
    print_table(rows)
    print(f"wrote {write_csv(rows, 'allocator-cpu.csv')}")


if __name__ == "__main__":
    main()
