#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (issue 21, "On a GPU"): the cuda-marked tests,
# the fast-path benchmarks on CUDA with and without CUDA graphs, and the IS NLL at K = 5000 on
# 10,000 images. At most 8 minutes (480 s of parts); each part has its own time limit, so one that hangs or runs
# long leaves the others their time. Outputs go to $OUT (the device tool's folder that comes
# back), else to benchmarks/results/gpu.
#
# The GPU image has torch, pandas, matplotlib, tqdm, pytest, xdist, numpyro, jax and flax, but not
# pyro-ppl or arviz. Before the run, download their wheels (2.6 MB) on the development machine
# into .whl, ignored through .git/info/exclude (`echo /.whl/ >> .git/info/exclude`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl pyro-ppl==1.9.2 pyro-api \
#       arviz==0.23.4 xarray-einstats h5netcdf platformdirs
# and run, with `.whl` carried:   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing the wheels in .whl failed"; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}  # DEVICE=cpu runs the same script here, as a check of the script itself
python3 -c "import torch, pyro, ppmodels; print('torch', torch.__version__, 'pyro', pyro.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee "$out/environment.txt" || exit 2

part() {  # part NAME SECONDS COMMAND...: run COMMAND with a time limit, its output to $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 12 "$out/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    if [ -f "benchmarks/results/fast_path-$device.csv" ]; then
        mv "benchmarks/results/fast_path-$device.csv" "$out/$name.csv"
    fi
}

part cuda_tests 100 python3 -m pytest -q -m cuda -p no:cacheprovider tests
part steady_first 150 python3 benchmarks/fast_path.py --device "$device" --only steady,first --rounds 2 --epochs 2
part multi 100 python3 benchmarks/fast_path.py --device "$device" --only multi --rounds 3
part multi_no_cuda_graphs 70 python3 benchmarks/fast_path.py --device "$device" --only multi --rounds 3 --no-cuda-graphs
part nll_10000 60 python3 benchmarks/fast_path.py --device "$device" --only nll --nll-images "${NLL_IMAGES:-10000}"
