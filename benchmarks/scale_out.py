"""Scaling out on one machine: a data-parallel epoch under torchrun against one process, a
4-run sweep on local processes and on Ray against the same runs one after the other, and Ray's
start-up cost.

    python benchmarks/scale_out.py [--images 10000] [--procs 2]

Times are wall clock of the whole thing a user waits for (process start included) and, for the
epoch, of fit alone (reported by the script the processes run).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, print_table, write_csv  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--images", type=int, default=10000)
p.add_argument("--procs", type=int, default=2)
p.add_argument("--skip-ray", action="store_true")
p.add_argument("--only-epoch", action="store_true", help="the data-parallel epoch only")
args = p.parse_args()
TORCHRUN = Path(sys.executable).with_name("torchrun")
work = Path(tempfile.mkdtemp(prefix="ppmodels-scale-"))

EPOCH = f"""
import json, sys, time, torch
from ppmodels.data import mnist, synthetic_images, TensorData
from ppmodels.fit import fit
from ppmodels.models import VAE
try:
    train = mnist(binarize="dynamic", device="cpu", download=False)["train"].subset({args.images})
except Exception:
    train = TensorData(synthetic_images({args.images}, seed=0)[0], binarize="dynamic")
torch.manual_seed(0)
model = VAE.preset("pyro")
fit(model, train.subset(1280), epochs=1, batch_size=128, device="cpu", progress=False)  # warm-up
t0 = time.perf_counter()
h = fit(model, train, epochs=1, batch_size=128, device="cpu", progress=False)
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    json.dump({{"fit_seconds": time.perf_counter() - t0, "loss": h["train_loss"].iloc[-1]}}, open(sys.argv[1], "w"))
"""


def timed(cmd, env=None):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


rows = []
script = work / "epoch.py"
script.write_text(EPOCH)
for procs, threads in ((1, None), (1, 1), (args.procs, None)):
    out = work / f"epoch{procs}-{threads}.json"
    if procs == 1:
        total = timed([sys.executable, str(script), str(out)], {"OMP_NUM_THREADS": str(threads)} if threads else None)
    else:
        total = timed([str(TORCHRUN), "--nproc_per_node", str(procs), "--master_port", "29533", str(script), str(out)],
                      {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))})
    fit_s = json.loads(out.read_text())["fit_seconds"]
    label = f"{procs} process(es)" + (f", {threads} thread" if threads else "")
    rows.append({"what": f"VAE epoch, {args.images} images, batch 128", "engine": label,
                 "seconds": total, "fit_seconds": fit_s})

if args.only_epoch:
    print_table(rows)
    sys.exit(0)
command = ["train", "gmm", "--guide", "bayes", "--steps", "300", "--seed", "0,1", "--lr", "0.05,0.1"]
from ppmodels.sweep import expand, run_name, sweep  # noqa: E402

t0 = time.perf_counter()
for settings, argv in expand(command):
    subprocess.run([sys.executable, "-m", "ppmodels", *argv, "--out", str(work / "seq" / run_name(settings))],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
sequential = time.perf_counter() - t0
rows.append({"what": "4-run sweep (gmm, 300 steps)", "engine": "one after the other", "seconds": sequential,
             "fit_seconds": float("nan")})
for engine, kwargs in (("2 local processes", {"workers": 2}), ("ray (local)", {})):
    if engine.startswith("ray") and args.skip_ray:
        continue
    t0 = time.perf_counter()
    sweep(command, work / engine.split()[0], **kwargs)
    rows.append({"what": "4-run sweep (gmm, 300 steps)", "engine": engine, "seconds": time.perf_counter() - t0,
                 "fit_seconds": float("nan")})

if not args.skip_ray:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ray; ray.init(include_dashboard=False); "
                    "ray.get(ray.remote(lambda: 1).remote()); ray.shutdown()"], check=True, capture_output=True)
    with_ray = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    rows.append({"what": "Ray start (init, one task, shutdown)", "engine": "ray (local)",
                 "seconds": with_ray - (time.perf_counter() - t0), "fit_seconds": float("nan")})

env = environment("cpu")
print(env)
print_table(rows)
print("wrote", write_csv([{**r, **env} for r in rows], "scale_out-cpu.csv"))
shutil.rmtree(work, ignore_errors=True)
