#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) from the committed corpus, and fails on
# the first crash, leak or timeout. Needs cargo-fuzz; libFuzzer needs nightly flags, which
# RUSTC_BOOTSTRAP=1 allows on the stable toolchain.
#   bash fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf hf_checkpoint peft_adapter dataset train_config tokenizer chat_template stop_strings)
fi
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$(pwd)/../target}/fuzz"
# No sanitizer: the code is safe Rust; what the fuzzer hunts are panics (debug assertions on,
# so integer overflow panics too), aborts from huge allocations, and hangs.
cargo fuzz build -s none --target-dir "$target_dir"
# New inputs go to a scratch folder (the first corpus libFuzzer is given); the committed
# corpus is only read.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "$work/$t"
  echo "== fuzz $t for ${secs}s"
  log="$(mktemp)"
  status=0
  cargo fuzz run -s none --target-dir "$target_dir" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -malloc_limit_mb=2048 -timeout=20 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $t failed (exit $status)" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
