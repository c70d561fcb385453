#!/usr/bin/env bash
# Installs, idempotently, everything the bridge's build, demo and tests need on a Debian machine.
# Safe to run repeatedly: it only calls apt-get/npm for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test harness (tests/support): kamailio (base package has every module kamailio.cfg loads), sip-tester
# (sipp), baresip-core (g711, aufile, aubridge, sndfile, ctrl_tcp modules), sox (handy for WAV checks).
APT_PACKAGES=(pkg-config libopus-dev kamailio sip-tester baresip baresip-core sox iproute2 chromium procps curl openssl)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f package.json ] && [ ! -d node_modules/playwright-core ]; then
  echo "deps: installing npm packages"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
fi
echo "deps: ok"
