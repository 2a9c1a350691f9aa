#!/usr/bin/env bash
# `lora-qat merge-export` vs NVIDIA ModelOpt's converter (examples/gpt-oss/convert_oai_mxfp4_weight_only.py,
# unmodified, through the reference's bench/modelopt_export.py), side by side in one run on the same synthetic
# checkpoints (bench/make_synthetic_base.py: gpt-oss-120b's real per-layer dims, LoRA r=16 on q/k/v/o and both
# expert projections of every layer). Wall time, GB/s of checkpoint and peak RSS (/usr/bin/time -v), same threads.
#
# Usage: scripts/bench_export.sh REFERENCE_DIR BENCH_DIR [THREADS] [SPECS]
#   REFERENCE_DIR  the reference stack (bench/make_synthetic_base.py, bench/modelopt_export.py)
#   BENCH_DIR      where synthetic checkpoints live (created when missing) and outputs go
#   THREADS        default 2 (RAYON_NUM_THREADS for lora-qat; OMP/MKL threads for ModelOpt)
#   SPECS          space-separated NAME:LAYERS:EXPERTS[:ours] (default "s1:1:32 s2:2:32 s128:1:128:ours s24:24:32:ours";
#                  `ours` = lora-qat only: ModelOpt needs ~23 GiB for one 128-expert layer and cannot hold 24 layers)
#   PYTHON         a python with torch, transformers, peft, nvidia-modelopt (default python3); run
#                  `modelopt_export.py setup --repo MODEL_OPTIMIZER_GIT_DIR` once before.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: scripts/bench_export.sh REFERENCE_DIR BENCH_DIR [THREADS] [SPECS]}
work=${2:?usage: scripts/bench_export.sh REFERENCE_DIR BENCH_DIR [THREADS] [SPECS]}
threads=${3:-2}
specs=${4:-"s1:1:32 s2:2:32 s128:1:128:ours s24:24:32:ours"}
py=${PYTHON:-python3}
cargo build --release --quiet
bin=$PWD/target/release/lora-qat
mkdir -p "$work"
for spec in $specs; do
  IFS=: read -r name layers experts only <<<"$spec"
  d=$work/$name
  if [ ! -f "$d/base/config.json" ]; then
    "$py" "$ref/bench/make_synthetic_base.py" --out "$d" --layers "$layers" --experts "$experts" >&2
  fi
  rm -rf "$d/out_lora_qat"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  RAYON_NUM_THREADS=$threads /usr/bin/time -v -o "$d/time_lora_qat" "$bin" --log warn merge-export \
    --base-path "$d/base" --lora-path "$d/adapter" --output-path "$d/out_lora_qat" --json > "$d/lora_qat.json"
  "$bin" --log warn verify --export "$d/out_lora_qat" --base-path "$d/base" --lora-path "$d/adapter" >/dev/null
  "$py" - "$d" "$name" "$layers" "$experts" "$threads" <<'PY'
import json, re, sys
d, name, layers, experts, threads = sys.argv[1:6]
r = json.load(open(f"{d}/lora_qat.json"))
t = open(f"{d}/time_lora_qat").read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 2**20
print(json.dumps({"system": "lora-qat merge-export", "base": name, "layers": int(layers), "experts": int(experts),
                  "threads": int(threads), "wall_s": round(r["seconds"], 2), "gb": round(r["bytes"] / 1e9, 3),
                  "gb_per_s": round(r["gb_per_s"], 3), "peak_rss_gib": round(rss, 3), "verified": True}))
PY
  rm -rf "$d/out_lora_qat"
  if [ "$only" != ours ]; then
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    "$py" "$ref/bench/modelopt_export.py" run --base "$d/base" --adapter "$d/adapter" --out "$d/out_modelopt" \
      --threads "$threads" --json-out "$d/modelopt.json" | tail -1 \
      | "$py" -c "import json,sys; r=json.loads(sys.stdin.read()); r['system']='modelopt convert_oai_mxfp4_weight_only'; r['base']='$name'; print(json.dumps(r))"
    rm -rf "$d/out_modelopt"
  fi
done
