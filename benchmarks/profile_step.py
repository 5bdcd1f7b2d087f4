"""Where the compiled multi-particle step's time goes: ``torch.profiler`` (with inductor's kernel
profiling) over the fast path's IWAE or DReG step (the ``burda`` VAE, batch 128), compiled with
and without ``ppmodels.cpu_forms``, and the hand-written eager step, one process, one model
instance. Prints ms a step: the median over ``--rounds`` interleaved blocks of ``--steps`` steps,
then the profile of ``--profiled`` steps, the operations and inductor's kernels of
0.5 ms a step or more (the matmuls together).

    python benchmarks/profile_step.py [--objective iwae] [--particles 50] [--rounds 3] [--steps 20]
                                      [--profiled 5]
"""

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).parent))
import handwritten  # noqa: E402
from common import environment, interleaved, ppmodels_step  # noqa: E402

from ppmodels import cpu_forms  # noqa: E402
from ppmodels.fit import make_optimizer  # noqa: E402
from ppmodels.models import VAE  # noqa: E402
from ppmodels.objectives import make  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--objective", default="iwae", choices=["iwae", "dreg"])
p.add_argument("--particles", type=int, default=50)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--profiled", type=int, default=5)
args = p.parse_args()
inductor_config.cpp.enable_kernel_profile = True  # each inductor kernel a profiler event

torch.manual_seed(0)
model = VAE.preset("burda")
optimizer = make_optimizer(list(model.parameters()))
x = torch.bernoulli(torch.rand(128, 784) * 0.3)
objective = make(args.objective, num_particles=args.particles)
with_forms, kind = ppmodels_step(model, objective, x, optimizer, "compiled")
rewrite = cpu_forms.rewrite
cpu_forms.rewrite = lambda gm: 0  # the graph as recorded: inductor's own lowering of every operation
try:
    without_forms, kind_without = ppmodels_step(model, objective, x, optimizer, "compiled")
finally:
    cpu_forms.rewrite = rewrite
assert kind == kind_without == "compiled", (kind, kind_without)
steps = {"compiled, cpu_forms": lambda: with_forms((x,)), "compiled, as recorded": lambda: without_forms((x,)),
         "hand-written": lambda: handwritten.step(model, optimizer, x, args.objective, args.particles)}
times = interleaved({k: (lambda f=f: [f() for _ in range(args.steps)]) for k, f in steps.items()}, rounds=args.rounds,
                    warmup=1)
print(environment())
print(f"{args.objective} K = {args.particles}, batch 128, ms a step (median of {args.rounds} blocks of {args.steps}):")
for k, t in times.items():
    print(f"  {k:22s} {1e3 * statistics.median(t) / args.steps:7.1f}")


def group(name: str) -> str:
    if name in ("aten::mm", "aten::addmm"):
        return "matmuls (aten::mm, aten::addmm)"
    if name.startswith("graph_") and "cpp_fused" in name:
        return "inductor " + name.split("cpp_fused_", 1)[1][:60]
    return name


for k, f in steps.items():
    with profile() as prof:
        for _ in range(args.profiled):
            f()
    ms = defaultdict(float)
    for e in prof.key_averages():
        g = group(e.key)
        ms[g] += e.self_cpu_time_total / 1e3 / args.profiled
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / args.profiled
    print(f"\n{k}: {total:.1f} ms a step under the profiler, of which")
    for g, v in sorted(ms.items(), key=lambda kv: -kv[1]):
        if v >= 0.5:
            print(f"  {v:7.2f}  {g}")
