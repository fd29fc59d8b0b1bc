#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: builds the workspace, lints it, and runs every
# test (unit, emulator, end-to-end). Everything the tests need is started by this script or
# by the tests themselves; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

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
