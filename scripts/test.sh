#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test
# (unit tests, and integration tests against a real Kamailio PBX, baresip, SIPp and chromium).
#
# The tests run inside a private network namespace that has only `lo`: every test peer talks over
# 127.0.0.0/8 and nothing else is reachable, and WebRTC in chromium offers 127.0.0.1 candidates.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
command -v cargo >/dev/null || { echo "test.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== build"
cargo build --locked --all-targets
cargo test --locked --no-run
echo "== disk after build: $(du -sh target 2>/dev/null | cut -f1) in target; $(df -h . | awk 'NR==2 {print $4}') free"

threads="${TEST_THREADS:-2}"
run_tests="cargo test --locked --offline --no-fail-fast -- --test-threads=$threads"
echo "== tests"
if [ "${SRBRIDGE_NO_NETNS:-}" != 1 ] && unshare --net true 2>/dev/null; then
  unshare --net -- bash -c "ip link set lo up && $run_tests"
else
  echo "test.sh: no network namespace available; running tests in the host namespace (loopback only)"
  $run_tests
fi
