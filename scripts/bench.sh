#!/usr/bin/env bash
# Runs the benchmark program on this machine: makes sure the brokers are up (as for the
# tests), builds the relay and the benchmark program, and runs `bench all` with the given
# arguments. With no arguments it is the full run that BENCHMARKS.md records (about 20
# minutes: ten of them keep one sink down); `--smoke` runs a few seconds per sink.
# BENCH_PROFILE=dev uses a debug build (the test suite's smoke run does, to reuse its build);
# BENCH_DIR is where the relay's journal and files go (default: the temporary directory).
# Usage: scripts/bench.sh [--smoke] [--sinks file,jetstream,nats,rabbitmq,kafka] [--json FILE] ...
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh all
profile=${BENCH_PROFILE:-release}
cargo build --locked --profile "$profile" -p nomad-relay -p bench
dir=$profile
[ "$profile" = dev ] && dir=debug
exec "target/$dir/bench" all "$@"
