#!/usr/bin/env bash
# What the trust checks cost: `merge-export` of a synthetic checkpoint (bench/make_synthetic_base.py, made by
# scripts/bench_export.sh) with the adapter as PEFT wrote it (no provenance: base fingerprint only) against the
# same adapter sealed and signed (`sign --base`) and merged with `--trusted-keys` (SHA-256 of every adapter
# file, signature check, fingerprint), alternating, in one run; then `inspect ADAPTER --base` and `sign`.
# Wall time and peak RSS from /usr/bin/time -v.
#
# Usage: scripts/bench_provenance.sh CHECKPOINT_DIR [THREADS] [ROUNDS]
#   CHECKPOINT_DIR  a directory with base/ and adapter/ (e.g. BENCH_DIR/s24 of bench_export.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:?usage: scripts/bench_provenance.sh CHECKPOINT_DIR [THREADS] [ROUNDS]}
threads=${2:-2}
rounds=${3:-2}
cargo build --release --quiet
bin=$PWD/target/release/lora-qat
rm -rf "$d/adapter_sealed" "$d/out_prov"
cp -r "$d/adapter" "$d/adapter_sealed"
"$bin" --log warn keygen --out "$d/bench_key" --comment bench --overwrite >/dev/null
measure() { # label, command...
  local label=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  RAYON_NUM_THREADS=$threads /usr/bin/time -v -o "$d/time_prov" "$@" >/dev/null
  awk -v l="$label" -F': ' '/Elapsed \(wall clock\)/{w=$2} /Maximum resident/{r=$2} END{printf "%-44s wall %s  peak RSS %.2f GiB\n", l, w, r/1048576}' "$d/time_prov"
}
measure "sign --base (seal: SHA-256 of the adapter)" "$bin" --log warn sign "$d/adapter_sealed" --key "$d/bench_key" --base "$d/base"
for r in $(seq "$rounds"); do
  for a in adapter adapter_sealed; do
    extra=()
    [ "$a" = adapter_sealed ] && extra=(--trusted-keys "$d/bench_key.pub")
    rm -rf "$d/out_prov"
    measure "merge-export $a${extra:+ --trusted-keys} (round $r)" "$bin" --log warn merge-export \
      --base-path "$d/base" --lora-path "$d/$a" --output-path "$d/out_prov" "${extra[@]}"
  done
done
rm -rf "$d/out_prov"
measure "inspect adapter_sealed --base" "$bin" --log warn inspect "$d/adapter_sealed" --base "$d/base"
du -b "$d/adapter/adapter_model.safetensors" | awk '{printf "adapter weights: %.2f GB\n", $1/1e9}'
