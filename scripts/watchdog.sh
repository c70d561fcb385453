#!/usr/bin/env bash
# Restarts srbridge if it died (like SRProxy's moni_srp.sh). Leaves it alone after a
# deliberate `rtx.sh stop`.
#
#   scripts/watchdog.sh [CONFIG]             check once (cron: * * * * * /path/scripts/watchdog.sh)
#   scripts/watchdog.sh --loop N [CONFIG]    check every N seconds until SIGTERM/SIGINT
#
# Uses the same environment as rtx.sh (SRBRIDGE_BIN, SRBRIDGE_RUN_DIR, ...). Restarts are
# logged to $SRBRIDGE_RUN_DIR/watchdog.log (or run/ next to the binary).
set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RTX=$SCRIPT_DIR/rtx.sh

interval=""
if [ "${1:-}" = "--loop" ]; then
    interval=${2:-}
    case "$interval" in '' | *[!0-9]* | 0)
        echo "watchdog.sh: --loop needs a whole number of seconds > 0" >&2
        exit 2
        ;;
    esac
    shift 2
fi
config=${1:-}

# Same run dir rules as rtx.sh.
run_dir() {
    if [ -n "${SRBRIDGE_RUN_DIR:-}" ]; then
        echo "$SRBRIDGE_RUN_DIR"
    elif [ -n "${SRBRIDGE_BIN:-}" ]; then
        echo "$(dirname "$SRBRIDGE_BIN")/run"
    else
        local root b
        root=$(dirname "$SCRIPT_DIR")
        for b in "$root/target/release/srbridge" "$root/target/debug/srbridge" "$SCRIPT_DIR/srbridge"; do
            if [ -x "$b" ]; then
                echo "$(dirname "$b")/run"
                return
            fi
        done
        echo "$root/run"
    fi
}

RUN_DIR=$(run_dir)
LOG=$RUN_DIR/watchdog.log

check_once() {
    local out
    if [ -f "$RUN_DIR/srbridge.stopped" ]; then
        return 0 # stopped on purpose
    fi
    if "$RTX" status >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$RUN_DIR"
    echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') watchdog: srbridge is not running; restarting" >>"$LOG"
    if out=$("$RTX" start ${config:+"$config"} 2>&1); then
        echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') watchdog: $out" >>"$LOG"
    else
        echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') watchdog: restart failed: $out" >>"$LOG"
        return 1
    fi
}

if [ -z "$interval" ]; then
    check_once
    exit $?
fi

trap 'exit 0' TERM INT
while :; do
    check_once
    sleep "$interval" &
    wait $!
done
