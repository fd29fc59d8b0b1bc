#!/usr/bin/env bash
# Runs each coverage-guided fuzz target in fuzz/ (libFuzzer, through cargo fuzz) for a given
# time and prints how many inputs each one executed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 300 s; all five targets)
#
# Targets: frame, lines, record, config, template; each checks one invariant of
# src/fuzzing.rs. Corpora grow in fuzz/corpus/<target>/ (not committed), starting from
# fuzz/seeds/<target>/ and fuzz/regressions/<target>/. A crash is written to
# fuzz/artifacts/<target>/ and stops that target; once fixed, copy the input into
# fuzz/regressions/<target>/, where tests/properties.rs replays it in every test run.
#
# cargo fuzz needs nightly-only compiler flags; this machine has the stable toolchain only,
# so the build runs with RUSTC_BOOTSTRAP=1. No sanitizer (-s none): the workspace forbids
# `unsafe`, so every buffer access is bounds-checked already, and without ASan each target runs
# several times faster. Debug assertions and overflow checks are on (-a).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame lines record config template)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz: installing with cargo install cargo-fuzz --version 0.13.2 --locked"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none -a

summary=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "logs"
  log="logs/$target.log"
  echo "==> $target for ${seconds}s (log: fuzz/$log)"
  status=0
  cargo fuzz run -s none -a "$target" "corpus/$target" "seeds/$target" "regressions/$target" -- \
    -max_total_time="$seconds" -dict=json.dict -print_final_stats=1 -max_len=65536 \
    >"$log" 2>&1 || status=$?
  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  if [ "$status" -ne 0 ]; then
    summary+=("$target: CRASH after $executions executions; input in fuzz/artifacts/$target/, see fuzz/$log")
  else
    summary+=("$target: $executions executions in ${seconds}s, coverage $coverage edges, no crash")
  fi
done
printf '%s\n' "${summary[@]}"
if printf '%s\n' "${summary[@]}" | grep -q CRASH; then
  exit 1
fi
