#!/usr/bin/env bash
# Training step (forward + loss + backward + AdamW) at the "bench-small" gpt-oss shape, lora-qat vs
# PyTorch eager + PEFT, side by side in one run, same thread count.
#
# Usage: scripts/bench_train_step.sh REFERENCE_DIR [THREADS] [SEQS]
#   REFERENCE_DIR: the reference stack (mxfp4_ref.py, bench/torch_train_step.py, bench/make_synthetic_base.py)
#   PYTHON: a python with torch, transformers, peft (default python3)
# Prints the JSON lines of both systems, per sequence length and mode.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: scripts/bench_train_step.sh REFERENCE_DIR [THREADS] [SEQS]}
threads=${2:-2}
seqs=${3:-512,2048}
py=${PYTHON:-python3}
work=${BENCH_DIR:-target/bench-small}
if [ ! -f "$work/base/config.json" ]; then
  # bench-small: hidden 512, intermediate 512, 8 heads of 64, 2 KV heads, 4 layers, 16 experts top-4,
  # vocab 4096, window 128; LoRA r=8 alpha 16 on attention and the experts of every layer
  "$py" "$ref/bench/make_synthetic_base.py" --out "$work" --layers 4 --experts 16 --top-k 4 \
    --hidden 512 --intermediate 512 --heads 8 --kv-heads 2 --head-dim 64 --vocab 4096 --rank 8 --alpha 16 >&2
fi
cargo bench --bench train_step --no-run --quiet
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
for seq in ${seqs//,/ }; do
  for mode in qat lora; do
    cargo bench --bench train_step --quiet -- "$work/base" "$work/adapter" --seq "$seq" --mode "$mode" 2>/dev/null | grep '^{'
    "$py" "$ref/bench/torch_train_step.py" --seq "$seq" --mode "$mode" --experts-impl grouped_mm --threads "$threads" | grep '^{'
  done
done
