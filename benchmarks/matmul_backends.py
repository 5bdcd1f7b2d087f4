"""Matmul throughput of the libraries at hand, on the matmuls that dominate the fast path's
multi-particle step (the ``burda`` decoder's last layer at K = 50, batch 128: 6400 rows) and the
VAE's first layer at batch 128: torch's ``mm`` (MKL), oneDNN's linear with a prepacked weight
(what inductor uses for frozen inference graphs) and, when the ``bench`` extra is installed,
XLA's dot under ``jax.jit``. Median GFLOP/s over ``--repeats`` calls after two warm-up calls.
Whether another GEMM would make the step's 50 ms of matmuls shorter.

    python benchmarks/matmul_backends.py [--repeats 20]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, print_table, write_csv  # noqa: E402

#: (rows, inner, columns, what): the product of an (rows × inner) and an (inner × columns) matrix
SHAPES = [(6400, 784, 200, "decoder out, grad of input (K=50)"),
          (784, 6400, 200, "decoder out, grad of weight (K=50)"),
          (6400, 200, 784, "decoder out, forward (K=50)"),
          (128, 784, 400, "VAE first layer, batch 128")]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_rates(rows: int, inner: int, cols: int, repeats: int) -> dict[str, float]:
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    out = torch.empty(rows, cols)
    flop = 2 * rows * inner * cols
    rates = {"torch mm (MKL)": flop / median_seconds(lambda: torch.mm(a, b, out=out), repeats)}
    weight = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
    linear = lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")  # noqa: E731
    rates["oneDNN linear"] = flop / median_seconds(linear, repeats)
    return rates


def jax_rate(rows: int, inner: int, cols: int, repeats: int) -> float | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    a, b = jnp.asarray(torch.randn(rows, inner).numpy()), jnp.asarray(torch.randn(inner, cols).numpy())
    dot = jax.jit(lambda u, v: u @ v)
    return 2 * rows * inner * cols / median_seconds(lambda: dot(a, b).block_until_ready(), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    rates = {shape: torch_rates(*shape[:3], args.repeats) for shape in SHAPES}
    for shape in SHAPES:  # after every torch figure: jax's thread pool keeps spinning after its calls
        xla = jax_rate(*shape[:3], args.repeats)
        if xla is not None:
            rates[shape]["jax dot (XLA)"] = xla
    rows = [{"matmul": what, "shape": f"{m}x{k} @ {k}x{n}", "library": lib, "gflops": r / 1e9}
            for (m, k, n, what), by_library in rates.items() for lib, r in by_library.items()]
    print(environment())
    print_table(rows)
    print(f"wrote {write_csv(rows, 'matmul_backends-cpu.csv')}")


if __name__ == "__main__":
    main()
