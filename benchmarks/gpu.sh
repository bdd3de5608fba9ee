#!/usr/bin/env bash
# Autoencoder training (cells/s) and method="auto" end to end on a fresh CUDA machine, with the CPU check of the
# held-out loss (benchmarks/gpu.py). About 10 minutes: 2-3 to install, the rest timed by the limits below.
# Results: $OUT/gpu.json (default benchmarks/gpu-out/) and the log.
#
# With PyPI: a fresh virtual environment with torch==2.13.0 (the CUDA build on Linux x86_64) and the package.
# Without a registry (WHEELS=<folder of wheels>): the machine's own python3 and torch, with the package's missing
# dependencies installed from that folder only (anndata, scanpy and theirs, built for that python), and the
# package from the checkout (PYTHONPATH).
#
#   bash benchmarks/gpu.sh                      # 10k, 100k and 1M cells x 2,000 genes
#   SIZES="10000 100000" bash benchmarks/gpu.sh
#   WHEELS=.wheels SIZES="10000 100000" bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-out}
SIZES=${SIZES:-"10000 100000 1000000"}
VENV=${VENV:-/tmp/scn2s-gpu-venv}
LIMIT=${LIMIT:-480}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"
if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install --quiet --no-index --find-links "$WHEELS" anndata scanpy
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    python3 -m venv "$VENV"
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    pip install --quiet --upgrade pip
    pip install --quiet "torch==2.13.0" -e .
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.__version__, torch.cuda.get_device_name(0))"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
timeout "$LIMIT" python3 benchmarks/gpu.py --device cuda --sizes $SIZES --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
