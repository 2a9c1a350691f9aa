#!/usr/bin/env bash
# Side-by-side matmul throughput: burn flex (this build) and PyTorch, same thread count, one run.
# Usage: scripts/bench_matmul.sh [THREADS] (PYTHON=/path/to/venv/bin/python with torch installed)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
py=${PYTHON:-python3}
cargo bench --bench matmul --no-run --quiet
for round in 1 2; do
  RAYON_NUM_THREADS=$threads cargo bench --bench matmul --quiet 2>/dev/null | grep '^{'
  OMP_NUM_THREADS=$threads "$py" scripts/bench_matmul_torch.py "$threads"
done
