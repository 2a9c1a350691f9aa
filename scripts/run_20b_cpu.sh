#!/usr/bin/env bash
# A gpt-oss-20b-shaped LoRA-QAT run on this CPU box (issue #16): run by hand, not in CI.
#
# Writes (once) a random checkpoint with gpt-oss-20b's full shapes (configs/gpt-oss-20b.json: 24
# layers, 32 experts, hidden 2880, vocab 201088; MXFP4 experts; about 13 GB) with the real
# o200k_harmony tokenizer and chat template, then trains STEPS steps at SEQ tokens per row with
# gradient checkpointing on the bundled chat sample, and reports wall time and the peak anonymous
# RSS (RssAnon: heap, not the memory-mapped checkpoint pages) sampled every 0.2 s, and VmHWM.
#
# Usage: scripts/run_20b_cpu.sh WORK_DIR [STEPS] [SEQ] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: scripts/run_20b_cpu.sh WORK_DIR [STEPS] [SEQ] [THREADS]}
steps=${2:-2}
seq=${3:-256}
threads=${4:-2}
base=$work/base-20b
mkdir -p "$work"
if [ ! -f "$base/config.json" ]; then
  /usr/bin/time -v cargo run --release --quiet --example make_random_base -- configs/gpt-oss-20b.json "$base" \
    tests/fixtures/gpt-oss-chat/tokenizer.json.gz tests/fixtures/gpt-oss-chat/chat_template.jinja \
    2> "$work/make_base.log" || { cat "$work/make_base.log" >&2; exit 1; }
  grep -E "written|Maximum resident|Elapsed" "$work/make_base.log" >&2
fi
cargo build --release --quiet
run=$work/run-$(date +%s)
export RAYON_NUM_THREADS=$threads
start=$(date +%s.%N)
target/release/lora-qat train --base "$base" --data assets/quickstart/chat_sample.jsonl --output-dir "$run" \
  --max-steps "$steps" --max-length "$seq" --packing true --per-device-train-batch-size 1 \
  --gradient-checkpointing true --lora-r 8 --lora-alpha 16 --learning-rate 1e-4 --logging-steps 1 \
  --chat-template-date 2026-01-01 > "$work/train.log" 2>&1 &
pid=$!
peak_anon=0
peak_hwm=0
while kill -0 "$pid" 2>/dev/null; do
  if [ -r "/proc/$pid/status" ]; then
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$anon" ] && [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
    [ -n "$hwm" ] && [ "$hwm" -gt "$peak_hwm" ] && peak_hwm=$hwm
  fi
  sleep 0.2
done
wait "$pid" || { tail -20 "$work/train.log" >&2; exit 1; }
end=$(date +%s.%N)
printf '{"steps": %s, "seq": %s, "threads": %s, "wall_s": %.1f, "peak_rss_anon_gib": %.2f, "vm_hwm_gib": %.2f}\n' \
  "$steps" "$seq" "$threads" "$(echo "$end - $start" | bc)" "$(echo "$peak_anon / 1048576" | bc -l)" \
  "$(echo "$peak_hwm / 1048576" | bc -l)"
grep -E "step|loss" "$work/train.log" | tail -5 >&2
