#!/usr/bin/env bash
# Run each fuzz target (fuzz/fuzz_targets/) for SECONDS (default 30), starting from the seed
# corpus of real traffic (fuzz/seeds/, rebuilt by fuzz/capture-seeds.sh) and the working
# corpus it grows (fuzz/corpus/, not in git). Installs cargo-fuzz first if it is missing.
#
#   scripts/fuzz.sh            # 30 s per target: what CI runs
#   scripts/fuzz.sh 3600       # an hour per target
#   TARGETS=guard_pipeline scripts/fuzz.sh 600
#   FUZZ_FLAGS=-jobs=2 scripts/fuzz.sh 600   # extra libFuzzer flags
#
# libFuzzer stops at the first failure and writes the input to fuzz/artifacts/<target>/;
# the script then exits non-zero. Any single allocation over 64 MiB or a process over
# 1 GiB counts as a failure, so a giant length in the input cannot make the code reserve
# memory it was never sent.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
targets=${TARGETS:-"request_scanner reply_scanner guard_pipeline payload_formats cluster_topology own_replies"}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cd fuzz
# `-s none`: no sanitizer, so stable Rust builds it; libFuzzer's coverage guidance stays.
cargo fuzz build -s none
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "== $t: ${seconds}s"
  log="artifacts/$t.log"
  mkdir -p artifacts
  status=0
  # shellcheck disable=SC2086 # FUZZ_FLAGS holds several libFuzzer flags
  cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 \
    -malloc_limit_mb=64 -rss_limit_mb=1024 -print_final_stats=1 ${FUZZ_FLAGS:-} >"$log" 2>&1 || status=$?
  grep -E "^INFO: seed corpus|^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/, the log in fuzz/$log" >&2
    exit 1
  fi
done
