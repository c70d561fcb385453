#!/usr/bin/env bash
# Installs, idempotently, everything the bridge's build, demo and tests need on a Debian machine.
# Safe to run repeatedly: it only calls apt-get/npm for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test harness (tests/support): kamailio (base package has every module kamailio.cfg loads), sip-tester
# (sipp), baresip-core (g711, aufile, aubridge, sndfile, ctrl_tcp modules), sox (WAV conversion),
# chromium + nodejs (web-demo browser tests; npm comes with nodesource's nodejs, else apt-get install
# npm), espeak-ng (speech for the PESQ test), python3-pip, python3-dev and gcc (PyPI `pesq` is built
# from C sources on install), openssl (TLS test certificates), fail2ban (fail2ban-regex runs the shipped
# filter over a real log in tests/ops_fail2ban.rs), rtpengine-daemon (the peer srbridge-load --peer rtpengine
# measures side by side, userspace forwarding: no kernel module), nats-server (the message bus
# tests/cluster.rs starts on a free loopback port for a cluster of bridges), nftables (random packet
# loss on the browser leg in tests/browser_speech.rs: this kernel has no netem).
APT_PACKAGES=(pkg-config libopus-dev kamailio sip-tester baresip baresip-core sox iproute2 chromium procps curl
  nodejs espeak-ng python3 python3-pip python3-dev gcc openssl fail2ban rtpengine-daemon nats-server nftables)

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
# PESQ (ITU-T P.862) scorer for tests/browser_speech.rs.
if ! python3 -c "import pesq, numpy, scipy" 2>/dev/null; then
  echo "deps: installing the Python PESQ scorer (pip: pesq numpy scipy)"
  pip_args=(--quiet --disable-pip-version-check --no-input)
  # A Debian system python refuses plain pip installs (PEP 668): fall back to the user site.
  python3 -m pip install "${pip_args[@]}" numpy scipy pesq 2>/dev/null \
    || python3 -m pip install "${pip_args[@]}" --user --break-system-packages numpy scipy pesq
fi
echo "deps: ok"
