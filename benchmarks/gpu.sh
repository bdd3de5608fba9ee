#!/usr/bin/env bash
# Autoencoder training (cells/s) and method="auto" end to end on a fresh CUDA machine, with the CPU check of the
# held-out loss (benchmarks/gpu.py). Needs only PyPI (torch==2.13.0 from PyPI is the CUDA build on Linux x86_64).
# About 10 minutes: 2-3 to install, the rest timed by the limits below. Results: $OUT/gpu.json (default
# benchmarks/gpu-out/) and the log on stdout.
#
#   bash benchmarks/gpu.sh                      # 10k, 100k and 1M cells x 2,000 genes
#   SIZES="10000 100000" bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-out}
SIZES=${SIZES:-"10000 100000 1000000"}
VENV=${VENV:-/tmp/scn2s-gpu-venv}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip install --quiet --upgrade pip
pip install --quiet "torch==2.13.0" -e .
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.cuda.get_device_name(0))"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# shellcheck disable=SC2086
timeout 480 python benchmarks/gpu.py --device cuda --sizes $SIZES --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
