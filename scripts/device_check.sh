#!/usr/bin/env bash
# The device check: the one script a session runs on a lent NVIDIA GPU machine (the device tool
# runs it in the repo root of a copy of the working tree; files written under $OUT come back).
#
#   scripts/device_check.sh             # on the GPU machine
#   scripts/device_check.sh --prepare   # here, before: a prebuilt bundle for a machine without cargo
#
# On the GPU machine, each step with its own timeout (and never past BUDGET_S seconds from the
# start, default 570: one device command runs at most 10 minutes), a failed step logged and the
# next one run:
#   1. environment: nvidia-smi, nvcc --version, cargo --version, glibc, cores (summary.txt);
#   2. build: `cargo build --release --features cuda` (and the make_random_base example), or,
#      where there is no cargo, the bundle that --prepare made (target/devbin/bundle.tar.xz,
#      carried with `carry: ["target/devbin"]`) unpacked (build.log);
#   3. the kernels' parity tests on CUDA: gpu_deploy, gpu_flash_attention, gpu_routing,
#      gpu_grouped_mxfp4, gpu_grouped (test_kernels.log);
#   4. the root crate's device test on CUDA: tests/device_vulkan.rs (test_device.log);
#   5. a training benchmark at gpt-oss-20b's layer dims: configs/gpt-oss-20b.json with 2 layers,
#      a random base from examples/make_random_base.rs, then `lora-qat train --device cuda` for
#      BENCH_STEPS steps at --max-length 2048 and 4096 with packing on the quickstart chat sample
#      repeated; GPU memory sampled every 200 ms; one JSON line per run in results.jsonl
#      (bench.log has the logs).
# Environment: BUDGET_S (570), BENCH_STEPS (4), BENCH_SEQS ("2048 4096"), WORK (scratch, /tmp);
# BENCH_CONFIG and BENCH_DEVICE (configs/gpt-oss-20b.json, cuda) let the script be smoke-tested
# off the GPU machine with a small config on the cpu.
# $OUT gets at most 6 files (the device tool brings back 8): summary.txt, build.log,
# test_kernels.log, test_device.log, bench.log, results.jsonl.
#
# --prepare (on a machine with cargo, no GPU needed): builds the release binaries with the cuda
# feature (CUDARC_CUDA_VERSION defaults to 13000, the GPU machine's toolkit: without nvcc cudarc
# would take its newest bindings), the test executables of steps 3-4 (`cargo test --no-run`),
# strips them and packs them with the build's repo path into target/devbin/bundle.tar.xz. The
# root test executable has the repo path (fixtures, the lora-qat binary) compiled in: on the GPU
# machine that path is linked to the checkout there when it is missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
KERNEL_TESTS=(gpu_deploy gpu_flash_attention gpu_routing gpu_grouped_mxfp4 gpu_grouped)
BUNDLE_DIR=target/devbin
BUNDLE=$BUNDLE_DIR/bundle.tar.xz

# ---------------------------------------------------------------------------------------------
# --prepare: the bundle for a GPU machine without cargo
# ---------------------------------------------------------------------------------------------
prepare() {
  set -e
  export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
  command -v jq >/dev/null || { echo "--prepare needs jq" >&2; exit 1; }
  local stage=$BUNDLE_DIR/stage
  rm -rf "$stage"
  mkdir -p "$stage/kernels" "$stage/root"
  echo "== cargo build --release --features cuda (CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION)"
  cargo build --release --features cuda --bins --example make_random_base
  cp target/release/lora-qat target/release/examples/make_random_base "$stage/"
  local t args=()
  for t in "${KERNEL_TESTS[@]}"; do args+=(--test "$t"); done
  echo "== the test executables"
  cargo test --release -p kernels --features cuda "${args[@]}" --no-run --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | "\(.target.name) \(.executable)"' |
    while read -r name exe; do cp "$exe" "$stage/kernels/$name"; done
  cargo test --release --features cuda --test device_vulkan --no-run --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | "\(.target.name) \(.executable)"' |
    while read -r name exe; do cp "$exe" "$stage/root/$name"; done
  echo "$ROOT" >"$stage/BUILD_ROOT"
  strip "$stage"/lora-qat "$stage"/make_random_base "$stage"/kernels/* "$stage"/root/*
  ls -la "$stage" "$stage/kernels" "$stage/root"
  if command -v objdump >/dev/null; then
    echo "newest glibc symbol needed: $(objdump -T "$stage/lora-qat" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
  fi
  tar -C "$stage" -cJf "$BUNDLE" .
  rm -rf "$stage"
  ls -la "$BUNDLE"
  local size
  size=$(stat -c %s "$BUNDLE")
  if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
    echo "warning: $BUNDLE is over 60 MiB; the device tool carries 64 MiB with the tree" >&2
  fi
  echo "carry it: run(command: 'bash scripts/device_check.sh', carry: [\"$BUNDLE_DIR\"])"
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# On the GPU machine
# ---------------------------------------------------------------------------------------------
OUT=${OUT:-$ROOT/target/device_out}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
RESULTS=$OUT/results.jsonl
: >"$SUMMARY"
: >"$RESULTS"
START=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
BENCH_STEPS=${BENCH_STEPS:-4}
BENCH_SEQS=${BENCH_SEQS:-2048 4096}
# overrides for a smoke test of this script off the GPU machine (a small config, --device cpu)
BENCH_CONFIG=${BENCH_CONFIG:-configs/gpt-oss-20b.json}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
WORK=${WORK:-/tmp/lora-qat-device-check}
mkdir -p "$WORK"
FAILED=0

say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }

# The timeout for a step that asks for $1 seconds: what is left of the budget less a margin.
step_timeout() {
  local left=$((BUDGET_S - ($(date +%s) - START) - 15))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# run_step NAME SECONDS LOG CMD...: runs CMD under a timeout, appending to LOG; logs the outcome.
run_step() {
  local name=$1 secs=$2 log=$3 rc t0
  shift 3
  secs=$(step_timeout "$secs")
  if [ "$secs" -lt 20 ]; then
    say "SKIP $name: the budget (${BUDGET_S}s) is spent"
    FAILED=1
    return 124
  fi
  say "run  $name (timeout ${secs}s): $*"
  echo "===== $name: $* (timeout ${secs}s)" >>"$log"
  t0=$(date +%s)
  timeout -k 10 "$secs" "$@" >>"$log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    say "ok   $name in $(($(date +%s) - t0))s"
  else
    FAILED=1
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      say "FAIL $name: timed out after ${secs}s (rc $rc; $(basename "$log"))"
    else
      say "FAIL $name: rc $rc after $(($(date +%s) - t0))s (see $(basename "$log"))"
    fi
  fi
  return "$rc"
}

# --- 1. environment ----------------------------------------------------------------------------
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
{
  echo "== device check $(date -u +%FT%TZ) in $ROOT, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "== uname: $(uname -srm); cores: $(nproc); $(ldd --version 2>/dev/null | head -1)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi"; fi
  if command -v nvcc >/dev/null; then nvcc --version; else echo "no nvcc"; fi
  if command -v cargo >/dev/null; then cargo --version; rustc --version; else echo "no cargo"; fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} 2>&1 | tee -a "$SUMMARY"

# --- 2. build, or the prebuilt bundle ----------------------------------------------------------
BIN=target/release/lora-qat
MAKE_BASE=(target/release/examples/make_random_base)
MODE=none
if command -v cargo >/dev/null; then
  MODE=cargo
  run_step build 420 "$OUT/build.log" \
    cargo build --release --features cuda --bins --example make_random_base
elif [ -f "$BUNDLE" ]; then
  MODE=bundle
  mkdir -p "$BUNDLE_DIR/bin" target/release/examples
  if run_step unpack 120 "$OUT/build.log" tar -C "$BUNDLE_DIR/bin" -xJf "$BUNDLE"; then
    cp "$BUNDLE_DIR/bin/lora-qat" "$BIN"
    cp "$BUNDLE_DIR/bin/make_random_base" "${MAKE_BASE[0]}"
    # the root test has the build's repo path compiled in (fixtures and the binary under it)
    built=$(cat "$BUNDLE_DIR/bin/BUILD_ROOT")
    if [ "$built" != "$ROOT" ] && [ ! -e "$built" ]; then
      mkdir -p "$(dirname "$built")" && ln -s "$ROOT" "$built" &&
        say "linked $built -> $ROOT (the root test's compiled-in repo path)"
    fi
  fi
else
  say "FAIL build: no cargo here and no $BUNDLE (make it with --prepare and carry $BUNDLE_DIR)"
  FAILED=1
fi
say "mode: $MODE"

# --- 3-4. the parity tests on CUDA -------------------------------------------------------------
if [ "$MODE" = cargo ]; then
  args=()
  for t in "${KERNEL_TESTS[@]}"; do args+=(--test "$t"); done
  run_step kernel-tests 300 "$OUT/test_kernels.log" \
    cargo test --release -p kernels --features cuda "${args[@]}"
  run_step device-test 240 "$OUT/test_device.log" \
    cargo test --release --features cuda --test device_vulkan
elif [ "$MODE" = bundle ]; then
  for t in "${KERNEL_TESTS[@]}"; do
    # cargo runs a package's tests in its directory
    run_step "kernel-test $t" 120 "$OUT/test_kernels.log" \
      env -C kernels "$ROOT/$BUNDLE_DIR/bin/kernels/$t"
  done
  run_step device-test 240 "$OUT/test_device.log" "$BUNDLE_DIR/bin/root/device_vulkan"
fi
grep -hE "^test result|panicked|FAILED|failures:" "$OUT"/test_*.log 2>/dev/null | tee -a "$SUMMARY"

# --- 5. the training benchmark at gpt-oss-20b's layer dims --------------------------------------
BENCH_LOG=$OUT/bench.log
config_dir=$WORK/config
mkdir -p "$config_dir"
config=$config_dir/config.json
if command -v python3 >/dev/null; then
  python3 - "$BENCH_CONFIG" "$config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["num_hidden_layers"] = 2
c["layer_types"] = c["layer_types"][:2]
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
elif command -v jq >/dev/null; then
  jq '.num_hidden_layers = 2 | .layer_types = .layer_types[:2]' "$BENCH_CONFIG" >"$config"
else
  # without layer_types the config takes gpt-oss's default (even layers sliding), as 20b has
  sed -e 's/"num_hidden_layers": *[0-9]*/"num_hidden_layers": 2/' \
    -e '/"layer_types": *\[/,/\]/d' "$BENCH_CONFIG" >"$config"
fi
grep -E '"num_hidden_layers"|"hidden_size"|"num_local_experts"' "$config" | tr -d ' \n' | tee -a "$SUMMARY"
echo | tee -a "$SUMMARY"

base=$WORK/base-$(basename "$(dirname "$BENCH_CONFIG")")-$(basename "$BENCH_CONFIG" .json)-2layers
bench_ok=1
if [ ! -f "$base/config.json" ]; then
  run_step make-base 240 "$BENCH_LOG" "${MAKE_BASE[@]}" "$config" "$base" \
    tests/fixtures/gpt-oss-chat/tokenizer.json.gz tests/fixtures/gpt-oss-chat/chat_template.jinja ||
    bench_ok=0
fi
data=$WORK/chat_repeated.jsonl
: >"$data"
for _ in $(seq 60); do cat assets/quickstart/chat_sample.jsonl >>"$data"; done
say "data: $(wc -l <"$data") rows, $(wc -c <"$data") bytes"

# peak_mib FILE: the largest integer in FILE (nvidia-smi samples), or null
peak_mib() { sort -n "$1" 2>/dev/null | tail -1 | grep -E '^[0-9]+$' || echo null; }

for seq in $BENCH_SEQS; do
  [ "$bench_ok" = 1 ] || { say "SKIP train seq $seq: no base"; break; }
  run=$WORK/run-$seq
  rm -rf "$run"
  samples=$WORK/vram-$seq.txt
  : >"$samples"
  baseline=null
  smi_pid=
  if command -v nvidia-smi >/dev/null; then
    baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' ')
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$samples" 2>/dev/null &
    smi_pid=$!
  fi
  t0=$(date +%s.%N)
  run_step "train seq $seq" 240 "$BENCH_LOG" "$BIN" train --device "$BENCH_DEVICE" --base "$base" \
    --data "$data" --output-dir "$run" --max-steps "$BENCH_STEPS" --max-length "$seq" \
    --packing true --per-device-train-batch-size 1 --lora-r 8 --lora-alpha 16 \
    --learning-rate 1e-4 --logging-steps 1 --save-strategy no --chat-template-date 2026-01-01
  rc=$?
  t1=$(date +%s.%N)
  [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null
  peak=$(peak_mib "$samples")
  [ -f "$run/train_log.jsonl" ] && cat "$run/train_log.jsonl" >>"$BENCH_LOG"
  if command -v python3 >/dev/null; then
    python3 - "$run/train_log.jsonl" "$seq" "$BENCH_STEPS" "$rc" "$t0" "$t1" "$peak" "$baseline" \
      >>"$RESULTS" <<'PY'
import json, sys
log, seq, steps, rc, t0, t1, peak, base = sys.argv[1:]
try:
    entries = [json.loads(l) for l in open(log) if l.strip()]
except OSError:
    entries = []
steps_log = [e for e in entries if "tokens_per_s" in e]
tps = [e["tokens_per_s"] for e in steps_log]
later = tps[1:]  # the first step compiles the kernels
num = lambda s: None if s == "null" else int(s)
print(json.dumps({
    "seq": int(seq),
    "steps": int(steps),
    "steps_done": len(steps_log),
    "rc": int(rc),
    "wall_s": round(float(t1) - float(t0), 2),
    "tokens_per_s_first": round(tps[0], 1) if tps else None,
    "tokens_per_s": round(sum(later) / len(later), 1) if later else (round(tps[0], 1) if tps else None),
    "tokens_per_s_by_step": [round(t, 1) for t in tps],
    "loss_last": steps_log[-1].get("loss") if steps_log else None,
    "peak_vram_mib": num(peak),
    "baseline_vram_mib": num(base),
}))
PY
  else
    tps=null
    if command -v jq >/dev/null && [ -f "$run/train_log.jsonl" ]; then
      tps=$(jq -s '[.[] | select(.tokens_per_s) | .tokens_per_s] | .[1:] | if length > 0 then add / length else null end' \
        "$run/train_log.jsonl")
    fi
    printf '{"seq": %s, "steps": %s, "rc": %s, "wall_s": %s, "tokens_per_s": %s, "peak_vram_mib": %s, "baseline_vram_mib": %s}\n' \
      "$seq" "$BENCH_STEPS" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" \
      "$tps" "$peak" "$baseline" >>"$RESULTS"
  fi
  tail -1 "$RESULTS" | tee -a "$SUMMARY"
done

say "done in $(($(date +%s) - START))s; $([ "$FAILED" = 0 ] && echo 'every step passed' || echo 'some steps FAILED (above)')"
ls -la "$OUT"
exit "$FAILED"
