#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes sure the brokers are up (starting them
# if needed), checks the dependencies' licences and sources, builds the workspace, lints it,
# and runs every test (unit, emulator, end-to-end, real brokers). Nothing is skipped
# silently: a missing broker fails the run with the command that starts it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> brokers on loopback (started if missing)"
./scripts/services.sh all

echo "==> cargo deny check licenses bans sources (see deny.toml; advisories: README, Security)"
if ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny 0.20"; then
  echo "cargo-deny: installing with cargo install cargo-deny --version 0.20.2 --locked"
  cargo install cargo-deny --version 0.20.2 --locked
fi
cargo deny check licenses bans sources

echo "==> cargo build (workspace, all targets)"
cargo build --workspace --all-targets --locked

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "==> benchmark smoke run (a few seconds per sink; fails if no events flowed)"
# The workspace build above made both binaries (debug); scripts/bench.sh would build them
# again for a narrower package set.
./target/debug/bench all --smoke
