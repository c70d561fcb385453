#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test
# (unit tests, and integration tests against a real Kamailio PBX, baresip and SIPp on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
command -v cargo >/dev/null || { echo "test.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests"
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"
