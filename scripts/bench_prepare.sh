#!/usr/bin/env bash
# Side-by-side chat-data preparation throughput: transformers (apply_chat_template over worker processes)
# versus `lora-qat prepare` (this build), same data, same chat template date, same thread count.
#
# Usage: scripts/bench_prepare.sh PYTHON_OR_VENV [MB] [THREADS]
#   PYTHON_OR_VENV  a python with transformers+tokenizers+jinja2, or a venv dir (uses DIR/bin/python)
#   MB              size of the synthetic chat JSONL (default 100, scripts/bench_prepare_data.py, seed 0)
#   THREADS         worker processes for the reference, RAYON_NUM_THREADS for lora-qat (default 2)
# Env: BENCH_DIR   reuse this dir for the data + tokenizer dir (kept; data generated once per MB)
#      BENCH_DATE  chat template date for both sides (default 2026-01-01)
#      SKIP_RUST=1 only run the reference half; LORA_QAT=PATH another lora-qat binary
# Needs target/release/lora-qat (cargo build --release) unless SKIP_RUST=1; this script never builds.
# Prints the reference JSON line, the lora-qat JSON line, tokens/s of each and their ratio, wall time,
# user+sys CPU and peak RSS (from /usr/bin/time -v; for the reference that is the largest single process of
# the pool, the JSON line also has each worker's peak).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '5,9p' "$0"; exit 2; }
py=$1
[ -d "$py" ] && py=$py/bin/python
mb=${2:-100}
threads=${3:-2}
date=${BENCH_DATE:-2026-01-01}

if [ -n "${BENCH_DIR:-}" ]; then
  dir=$BENCH_DIR
  mkdir -p "$dir"
else
  dir=$(mktemp -d /tmp/bench_prepare.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
fi
data=$dir/chat_${mb}mb_seed0.jsonl
tokdir=$dir/tokenizer
if [ ! -s "$data" ]; then
  "$py" scripts/bench_prepare_data.py --out "$data.tmp" --mb "$mb" --seed 0 >&2
  mv "$data.tmp" "$data"
fi
if [ ! -s "$tokdir/tokenizer.json" ]; then
  "$py" scripts/gen_chat_golden.py --tokenizer-dir-only "$tokdir"
  cp configs/gpt-oss-20b.json "$tokdir/config.json"
fi
echo "data: $data ($(du -h "$data" | cut -f1), $(wc -l <"$data") rows), date $date, threads $threads" >&2

# "Maximum resident set size (kbytes)", "Elapsed (wall clock)", user+sys seconds from a `time -v` log
timev() {
  awk -F': ' '/Maximum resident set size/ {rss=$2} /User time/ {u=$2} /System time/ {s=$2}
              /Elapsed \(wall clock\)/ {w=$NF}
              END {printf "wall %s, cpu %.2f s, peak RSS %.1f MB", w, u+s, rss/1024}' "$1"
}

ref_json=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false /usr/bin/time -v -o "$dir/ref.time" \
  "$py" scripts/bench_prepare_ref.py --tokenizer-dir "$tokdir" --data "$data" --threads "$threads" --date "$date" \
  | tail -n 1)
echo "reference: $ref_json"
echo "reference process: $(timev "$dir/ref.time")"

if [ "${SKIP_RUST:-0}" = 1 ]; then
  exit 0
fi
bin=${LORA_QAT:-target/release/lora-qat}
if [ ! -x "$bin" ]; then
  echo "$bin not found: build it with cargo build --release (or SKIP_RUST=1)" >&2
  exit 1
fi
rust_json=$(RAYON_NUM_THREADS=$threads /usr/bin/time -v -o "$dir/rust.time" \
  "$bin" prepare --base "$tokdir" --data "$data" --out "$dir/out.jsonl" --chat-template-date "$date" --json \
  | grep '^{' | tail -n 1)
rm -f "$dir/out.jsonl"
echo "lora-qat:  $rust_json"
echo "lora-qat process:  $(timev "$dir/rust.time")"

"$py" - "$ref_json" "$rust_json" <<'EOF'
import json, sys
ref, rust = json.loads(sys.argv[1]), json.loads(sys.argv[2])
r_tps = ref["tokens"] / ref["seconds"]
l_tps = rust["tokens"] / rust["seconds"]
e_tps = rust["tokens"] / rust["encode_seconds"]
print(f"tokens/s  reference {r_tps:,.0f}  lora-qat whole run (load + read + encode + write) {l_tps:,.0f}  "
      f"ratio {l_tps / r_tps:.2f}x")
print(f"tokens/s  lora-qat read + render + tokenize + mask + pack (load excluded, like the reference) "
      f"{e_tps:,.0f}  ratio {e_tps / r_tps:.2f}x")
if rust["tokens"] != ref["tokens"]:
    print(f"WARNING: token counts differ: reference {ref['tokens']} lora-qat {rust['tokens']}")
EOF
