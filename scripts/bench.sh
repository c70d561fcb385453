#!/usr/bin/env bash
# The standard load runs (README "Performance"): builds release, starts the test PBX (Kamailio),
# the bridge (or rtpengine, PEER=) pinned to one core and srbridge-load (which starts SIPp's echo
# UAS and UAC) on the other, runs the steps transcoded (browsers send Opus) and relayed (browsers
# send PCMU), prints the table (and with PEER=both the ratio srbridge/rtpengine), stops everything. Runs inside a private network namespace with only `lo` (like
# scripts/test.sh), so only loopback is used and the fixed ports below cannot collide.
#
# Environment (defaults in brackets):
#   CALLS [10,50,100]     concurrent calls per step
#   RELAY_CALLS [$CALLS]  steps of the relayed run
#   DURATION [30s]        measurement window per step
#   RATE [50]             call setups started per second in a ramp
#   DIRECTION [both]      web-to-sip, sip-to-web or both
#   MODES [transcoded relay setups]  "setups": a fast ramp of SETUP_CALLS [200] relayed calls
#                         at SETUP_RATE [500]/s both ways, held 5 s: the setups/s column is the point;
#                         "soak" (not in the default): SOAK_CALLS [10000] short web→SIP relayed calls
#                         back to back, SOAK_CONCURRENCY [50] at a time, each held SOAK_HOLD [1s],
#                         started at most SOAK_RATE [200]/s; the bridge's RSS, fds, threads and tokio
#                         tasks at baseline, peak and SOAK_SETTLE [70s] after (srbridge only; the
#                         last calls' SIP transactions stay 32 s, Timer D/M/J, and their memory
#                         with them);
#                         SOAK_ROUNDS [1] soaks in a row on the same bridge: growth that stops after
#                         the first round is retention (caches, allocator), growth each round a leak
#   BRIDGE_CPU [1]        core the bridge is pinned to; everything else runs on TOOL_CPUS [0]
#   PROFILE [release]     "debug" for a quick check of the script itself
#   BIN_DIR               take srbridge and srbridge-load from here, nothing built
#   BRIDGE_BIN [$BIN_DIR/srbridge]  the bridge to measure (e.g. an older build: A against B)
#   PEER [srbridge]       what carries the calls: srbridge, rtpengine (Debian rtpengine-daemon,
#                         userspace forwarding, pinned to BRIDGE_CPU like the bridge, driven by the
#                         tool over ng on 127.0.0.1:2223) or both: each mode runs both on the same
#                         steps, and the ratio of CPU per call, srbridge / rtpengine, is printed
#   OUT [target/bench]    JSON reports and logs
#   MEDIA_EXTRA []        lines added to the bridge's [media] section, e.g.
#                         MEDIA_EXTRA="webrtc_single_port = 3478" (every browser call on one port)
#                         or "busy_cpu_percent = 0" (never switch to the cheaper busy encoder)
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS="${CALLS:-10,50,100}"
RELAY_CALLS="${RELAY_CALLS:-$CALLS}"
DURATION="${DURATION:-30s}"
RATE="${RATE:-50}"
DIRECTION="${DIRECTION:-both}"
MODES="${MODES:-transcoded relay setups}"
SETUP_CALLS="${SETUP_CALLS:-200}"
SETUP_RATE="${SETUP_RATE:-500}"
SOAK_CALLS="${SOAK_CALLS:-10000}"
SOAK_CONCURRENCY="${SOAK_CONCURRENCY:-50}"
SOAK_HOLD="${SOAK_HOLD:-1s}"
SOAK_RATE="${SOAK_RATE:-200}"
SOAK_SETTLE="${SOAK_SETTLE:-70s}"
SOAK_ROUNDS="${SOAK_ROUNDS:-1}"
BRIDGE_CPU="${BRIDGE_CPU:-1}"
TOOL_CPUS="${TOOL_CPUS:-0}"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-target/bench}"
PEER="${PEER:-srbridge}"
case "$PEER" in
  srbridge) peers=(srbridge) ;;
  rtpengine) peers=(rtpengine) ;;
  both) peers=(srbridge rtpengine) ;;
  *) echo "bench.sh: PEER is srbridge, rtpengine or both, not $PEER" >&2; exit 2 ;;
esac

if [ -z "${SRBRIDGE_BENCH_INSIDE:-}" ]; then
  if [ -n "${BIN_DIR:-}" ]; then
    :
  elif [ "$PROFILE" = release ]; then
    cargo build --release --locked --bin srbridge --bin srbridge-load
  else
    cargo build --locked --bin srbridge --bin srbridge-load
  fi
  if [ "$PEER" != srbridge ] && ! command -v rtpengine >/dev/null; then
    echo "bench.sh: rtpengine is not installed (run scripts/deps.sh)" >&2
    exit 2
  fi
  export CALLS RELAY_CALLS DURATION RATE DIRECTION MODES SETUP_CALLS SETUP_RATE BRIDGE_CPU TOOL_CPUS \
    SOAK_CALLS SOAK_CONCURRENCY SOAK_HOLD SOAK_RATE SOAK_SETTLE SOAK_ROUNDS PROFILE OUT BIN_DIR BRIDGE_BIN LIMITS_EXTRA MEDIA_EXTRA PEER
  exec unshare --net -- env SRBRIDGE_BENCH_INSIDE=1 bash -c 'ip link set lo up && exec bash "$0"' "$0"
fi

bin="${BIN_DIR:-target/$PROFILE}"
bridge_bin="${BRIDGE_BIN:-$bin/srbridge}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d /tmp/srbridge-bench-XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== kamailio on 127.0.0.1:5060 (cpu $TOOL_CPUS)"
mkdir -p "$work/run"
taskset -c "$TOOL_CPUS" kamailio -f config/kamailio/kamailio.cfg -DD -E -m 64 -M 8 \
  -Y "$work/run" -P "$work/run/kamailio.pid" \
  -l udp:127.0.0.1:5060 -l tcp:127.0.0.1:5060 >"$OUT/kamailio.log" 2>&1 &
pids+=($!)

# Every browser of the run connects from 127.0.0.1: lift the per-address cap (a bridge older than
# that key is measured with LIMITS_EXTRA="").
LIMITS_EXTRA="${LIMITS_EXTRA-max_conns_per_ip = 20000}"
cat >"$work/bench.toml" <<TOML
[global]
appid = "bench"
sip_svr = "127.0.0.1:5060"
sip_local_port = 5086
[rtm2sip]
on = true
acc_rule = "1005"
[proxy]
on = true
sip_account = "1000"
sip_pwd = "1234"
rtm_account = "bridge"
[log]
level = "warn"
file = "$OUT/srbridge.log"
[sip]
listen_ip = "127.0.0.1"
options_interval = 0
[media]
rtp_port_min = 20000
rtp_port_max = 29998
${MEDIA_EXTRA:-}
[http]
listen = "127.0.0.1:8080"
[limits]
max_calls = 5000
${LIMITS_EXTRA}
max_setups_per_sec = 2000
max_ws_sessions = 20000
TOML

# A fresh bridge per mode: RSS is not returned after calls, so a second mode would reuse it.
start_bridge() {
  echo "== srbridge ($PROFILE) pinned to cpu $BRIDGE_CPU"
  taskset -c "$BRIDGE_CPU" "$bridge_bin" "$work/bench.toml" >>"$OUT/srbridge.out" 2>&1 &
  bridge=$!
  pids+=($bridge)
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  # The proxy account must be registered before SIP→web calls can reach the bridge.
  sleep 2
}

# rtpengine as the bridge's peer: userspace forwarding (no kernel module, --table=-1), one worker
# thread on the bridge's core, the bridge's RTP port range, in the foreground, quiet.
start_rtpengine() {
  echo "== rtpengine pinned to cpu $BRIDGE_CPU"
  taskset -c "$BRIDGE_CPU" rtpengine --config-file=none --table=-1 --foreground --log-stderr \
    --log-level=4 --interface=127.0.0.1 --listen-ng=127.0.0.1:2223 \
    --port-min=20000 --port-max=29998 --num-threads=1 --delete-delay=0 \
    >>"$OUT/rtpengine.log" 2>&1 &
  bridge=$!
  pids+=($bridge)
  sleep 1
}

# Per step: srbridge's and rtpengine's CPU per call-second and their ratio (goal: below 1).
print_ratio() {
  python3 - "$1" "$2" <<'PY'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda s: (s["direction"], s["calls"])
peer = {key(s): s for s in theirs["steps"]}
print(f"{'direction':<10} {'codec':<5} {'calls':>5} {'srbridge ms/call·s':>19} {'rtpengine ms/call·s':>20} {'ratio':>6}")
for s in ours["steps"]:
    t = peer.get(key(s))
    a = (s.get("bridge") or {}).get("cpu_ms_per_call_second")
    b = ((t or {}).get("bridge") or {}).get("cpu_ms_per_call_second")
    ratio = f"{a / b:.2f}" if a and b else "-"
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"
    print(f"{s['direction']:<10} {s['codec']:<5} {s['calls']:>5} {fmt(a):>19} {fmt(b):>20} {ratio:>6}")
PY
}

status=0
for mode in $MODES; do
  steps="$CALLS" duration="$DURATION" rate="$RATE" direction="$DIRECTION" flags=()
  case "$mode" in
    transcoded) ;;
    relay) steps="$RELAY_CALLS" flags=(--relay) ;;
    setups) steps="$SETUP_CALLS" duration=5s rate="$SETUP_RATE" flags=(--relay) ;;
    soak) steps="$SOAK_CONCURRENCY" duration="$SOAK_HOLD" rate="$SOAK_RATE" direction=web-to-sip
      flags=(--relay --soak "$SOAK_CALLS" --soak-settle "$SOAK_SETTLE") ;;
    *) echo "bench.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
  for peer in "${peers[@]}"; do
    [ "$mode" = soak ] && [ "$peer" = rtpengine ] && continue
    if [ "$peer" = srbridge ]; then
      start_bridge
      report="$mode"
    else
      start_rtpengine
      report="$mode-rtpengine"
    fi
    rounds=1
    [ "$mode" = soak ] && rounds="$SOAK_ROUNDS"
    : >"$OUT/$report.txt"
    for round in $(seq "$rounds"); do
      json="$OUT/$report.json"
      [ "$round" -gt 1 ] && json="$OUT/$report-$round.json"
      echo "== $peer $mode: calls $steps, $duration each, ramp $rate/s, $direction (round $round/$rounds)"
      taskset -c "$TOOL_CPUS" "$bin/srbridge-load" --peer "$peer" --ng 127.0.0.1:2223 \
        --ws ws://127.0.0.1:8080/ws --appid bench --uid-prefix "r${round}x" \
        --pbx 127.0.0.1:5060 --callee 1005 --caller 1002 --bridge-pid "$bridge" \
        --calls "$steps" --duration "$duration" --rate "$rate" --direction "$direction" \
        --json "$json" "${flags[@]}" | tee -a "$OUT/$report.txt" || status=$?
    done
    kill "$bridge"
    wait "$bridge" 2>/dev/null || true
  done
done
echo "== reports in $OUT"
for mode in $MODES; do
  for peer in "${peers[@]}"; do
    [ "$mode" = soak ] && [ "$peer" = rtpengine ] && continue
    report="$mode"
    [ "$peer" = rtpengine ] && report="$mode-rtpengine"
    echo "-- $peer $mode"
    cat "$OUT/$report.txt"
  done
  if [ "${#peers[@]}" = 2 ] && [ -f "$OUT/$mode.json" ] && [ -f "$OUT/$mode-rtpengine.json" ]; then
    echo "-- $mode: CPU per call, srbridge / rtpengine"
    print_ratio "$OUT/$mode.json" "$OUT/$mode-rtpengine.json"
  fi
done
exit $status
