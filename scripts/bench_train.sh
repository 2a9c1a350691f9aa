#!/usr/bin/env bash
# `lora-qat train` tokens/s and peak RSS, side by side in one run with PyTorch eager + PEFT
# (the reference's bench/torch_train_step.py) at the same shape, sequence length, mode and threads.
#
# Usage: scripts/bench_train.sh REFERENCE_DIR [THREADS] [SEQS] [SHAPE] [MODES]
#   REFERENCE_DIR  the reference stack (bench/torch_train_step.py, bench/make_synthetic_base.py)
#   THREADS        default 2 (RAYON_NUM_THREADS for lora-qat, torch threads for PyTorch)
#   SEQS           default 512,2048
#   SHAPE          bench-small (default) or real20b (gpt-oss-20b's real layer dims, 2 layers, 32 experts)
#   MODES          default qat,lora (lora = plain LoRA, --quant-cfg NONE); a -ckpt suffix (qat-ckpt,
#                  lora-ckpt) turns on gradient checkpointing on both sides (PyTorch: --grad-ckpt)
#   PYTHON         a python with torch, transformers, peft, psutil (default python3)
# Both run batch 1, random token ids with every token trained, AdamW lr 1e-4 without clipping,
# 3 warm-up steps then 10 measured steps (median); lora-qat runs the real `train` command
# (data pipeline, logging, no checkpoints) on pre-tokenized rows. Peak RSS: /usr/bin/time -v.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: scripts/bench_train.sh REFERENCE_DIR [THREADS] [SEQS] [SHAPE] [MODES]}
threads=${2:-2}
seqs=${3:-512,2048}
shape=${4:-bench-small}
modes=${5:-qat,lora}
py=${PYTHON:-python3}
warmup=3
steps=10
work=${BENCH_DIR:-target/bench-$shape}
case $shape in
  bench-small)
    base_args=(--layers 4 --experts 16 --top-k 4 --hidden 512 --intermediate 512 --heads 8 --kv-heads 2
               --head-dim 64 --vocab 4096 --rank 8 --alpha 16)
    rank=8; alpha=16 ;;
  real20b)
    base_args=(--layers 2 --experts 32)
    rank=16; alpha=32 ;;
  *) echo "unknown shape $shape" >&2; exit 2 ;;
esac
if [ ! -f "$work/base/config.json" ]; then
  "$py" "$ref/bench/make_synthetic_base.py" --out "$work" "${base_args[@]}" >&2
fi
cargo build --release --quiet
bin=target/release/lora-qat
vocab=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$work/base/config.json")
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
for seq in ${seqs//,/ }; do
  data=$work/ids_${seq}.jsonl
  "$py" - "$data" "$seq" "$vocab" $((warmup + steps)) <<'PY'
import json, random, sys
out, seq, vocab, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1)
with open(out, "w") as f:
    for _ in range(n):
        f.write(json.dumps({"input_ids": [rng.randrange(vocab) for _ in range(seq)]}) + "\n")
PY
  for mode in ${modes//,/ }; do
    quant=MXFP4_MLP_WEIGHT_ONLY_CFG
    base_mode=${mode%-ckpt}
    ckpt=false; ref_ckpt=()
    [ "$base_mode" != "$mode" ] && { ckpt=true; ref_ckpt=(--grad-ckpt); }
    [ "$base_mode" = lora ] && quant=NONE
    out=$(mktemp -d /tmp/bench_train.XXXXXX)
    /usr/bin/time -v -o "$out/time" "$bin" --log warn train --base "$work/base" --data "$data" \
      --output-dir "$out/run" --max-steps $((warmup + steps)) --per-device-train-batch-size 1 \
      --max-length "$seq" --lora-r "$rank" --lora-alpha "$alpha" --learning-rate 1e-4 \
      --lr-scheduler-type constant --max-grad-norm 0 --logging-steps 1 --save-strategy no \
      --quant-cfg "$quant" --gradient-checkpointing $ckpt --seed 0 >/dev/null 2>"$out/stderr" || { cat "$out/stderr" >&2; exit 1; }
    "$py" - "$out/run/train_log.jsonl" "$out/time" "$shape" "$mode" "$seq" "$threads" "$warmup" <<'PY'
import json, re, statistics, sys
log, timef, shape, mode, seq, threads, warmup = sys.argv[1:8]
rows = [json.loads(l) for l in open(log) if '"tokens_per_s"' in l]
tps = [r["tokens_per_s"] for r in rows][int(warmup):]
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(timef).read()).group(1)) / 1024
print(json.dumps({"system": "lora-qat train", "config": shape, "mode": mode, "seq": int(seq),
                  "threads": int(threads), "steps_measured": len(tps),
                  "tokens_per_s": round(statistics.median(tps), 1),
                  "s_per_step_median": round(int(seq) / statistics.median(tps), 4),
                  "peak_rss_mib": round(rss, 1), "loss_last": rows[-1]["loss"]}))
PY
    rm -rf "$out"
    "$py" "$ref/bench/torch_train_step.py" --shape "$shape" --seq "$seq" --mode "$base_mode" \
      "${ref_ckpt[@]}" --experts-impl grouped_mm --threads "$threads" --warmup $warmup --steps $steps | grep '^{' \
      | "$py" -c "import json,sys; r=json.loads(sys.stdin.read()); r['system']='pytorch+peft'; print(json.dumps(r))"
  done
done
