#!/usr/bin/env bash
# srbridge daemon control (like SRProxy's rtx.sh).
#
#   scripts/rtx.sh start [CONFIG]    start in the background (refuses a second copy)
#   scripts/rtx.sh stop              SIGTERM: drain calls, SIGKILL after drain_timeout + margin
#   scripts/rtx.sh restart [CONFIG]  stop, then start
#   scripts/rtx.sh status            exit 0 running, 1 dead with pid file, 3 not running (LSB)
#   scripts/rtx.sh reload            check the config, then SIGHUP (calls keep running)
#
# CONFIG defaults to the one last started with, else $SRBRIDGE_CONFIG, else config/rtx.conf.
# Environment:
#   SRBRIDGE_BIN          binary (default: target/release/srbridge, then target/debug/srbridge)
#   SRBRIDGE_RUN_DIR      pid/log/state directory (default: run/ next to the binary)
#   SRBRIDGE_PID_FILE     pid file (default: $SRBRIDGE_RUN_DIR/srbridge.pid)
#   SRBRIDGE_LOG_FILE     daemon stdout/stderr (default: $SRBRIDGE_RUN_DIR/srbridge.out);
#                         the bridge's own log goes where [log] file says
#   SRBRIDGE_WORK_DIR     working directory of the daemon (default: the project root)
#   SRBRIDGE_ADMIN_TOKEN  bearer token for `status` when [http] admin_token is set
#   SRBRIDGE_START_TIMEOUT seconds `start` waits for /healthz (default 10)
#   SRBRIDGE_STOP_MARGIN  seconds added to drain_timeout before SIGKILL (default 5)
#   SRBRIDGE_HTTP_LISTEN  passed through: overrides [http] listen
set -u

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$SCRIPT_DIR")

die() {
    echo "rtx.sh: $*" >&2
    exit 1
}

find_bin() {
    if [ -n "${SRBRIDGE_BIN:-}" ]; then
        echo "$SRBRIDGE_BIN"
        return 0
    fi
    local b
    for b in "$ROOT/target/release/srbridge" "$ROOT/target/debug/srbridge" "$SCRIPT_DIR/srbridge"; do
        if [ -x "$b" ]; then
            echo "$b"
            return 0
        fi
    done
    command -v srbridge 2>/dev/null
}

BIN=$(find_bin || true)
if [ -n "${SRBRIDGE_RUN_DIR:-}" ]; then
    RUN_DIR=$SRBRIDGE_RUN_DIR
elif [ -n "$BIN" ]; then
    RUN_DIR=$(dirname "$BIN")/run
else
    RUN_DIR=$ROOT/run
fi
PID_FILE=${SRBRIDGE_PID_FILE:-$RUN_DIR/srbridge.pid}
LOG_FILE=${SRBRIDGE_LOG_FILE:-$RUN_DIR/srbridge.out}
CONFIG_FILE=$RUN_DIR/srbridge.config # config path last started with
URL_FILE=$RUN_DIR/srbridge.url       # where status is served
STOPPED=$RUN_DIR/srbridge.stopped    # deliberate stop: the watchdog leaves it alone
WORK_DIR=${SRBRIDGE_WORK_DIR:-$ROOT}

# pid from the pid file, or nothing.
read_pid() {
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid=$(tr -dc '0-9' <"$PID_FILE")
    [ -n "$pid" ] || return 1
    echo "$pid"
}

# Whether $1 is a live (not zombie) srbridge process.
alive() {
    local pid=$1 stat comm
    kill -0 "$pid" 2>/dev/null || return 1
    stat=$(ps -o stat= -p "$pid" 2>/dev/null | tr -d ' ')
    case "$stat" in "" | Z*) return 1 ;; esac
    comm=$(ps -o comm= -p "$pid" 2>/dev/null | tr -d ' ')
    [ "$comm" = "srbridge" ] || [ "$comm" = "$(basename "${BIN:-srbridge}")" ]
}

running_pid() {
    local pid
    pid=$(read_pid) || return 1
    alive "$pid" || return 1
    echo "$pid"
}

resolve_config() {
    local c=${1:-}
    if [ -z "$c" ] && [ -f "$CONFIG_FILE" ]; then c=$(cat "$CONFIG_FILE"); fi
    if [ -z "$c" ]; then c=${SRBRIDGE_CONFIG:-$ROOT/config/rtx.conf}; fi
    case "$c" in /*) ;; *) c=$(pwd)/$c ;; esac
    echo "$c"
}

# `srbridge check` value of a setting, e.g. setting "$summary" listen.
setting() {
    printf '%s\n' "$1" | sed -n "s/^  $2 *= *//p" | head -n 1
}

# Turns a listen address into one curl can reach locally.
local_addr() {
    case "$1" in
    0.0.0.0:*) echo "127.0.0.1:${1#0.0.0.0:}" ;;
    "[::]:"*) echo "[::1]:${1#\[::\]:}" ;;
    *) echo "$1" ;;
    esac
}

drain_timeout() {
    local config summary t
    config=$(resolve_config "")
    if [ -n "$BIN" ] && summary=$("$BIN" check "$config" 2>/dev/null); then
        t=$(setting "$summary" drain_timeout)
        t=${t%s}
    fi
    case "${t:-}" in '' | *[!0-9]*) t=30 ;; esac
    echo "$t"
}

curl_get() { # path -> body on stdout; fails on HTTP errors
    local url
    command -v curl >/dev/null 2>&1 || return 1
    [ -f "$URL_FILE" ] || return 1
    url=$(cat "$URL_FILE")
    # -k: our own loopback listener, often with a certificate for the public name only.
    if [ -n "${SRBRIDGE_ADMIN_TOKEN:-}" ]; then
        curl -kfsS -m 3 -H "Authorization: Bearer $SRBRIDGE_ADMIN_TOKEN" "$url$1"
    else
        curl -kfsS -m 3 "$url$1"
    fi
}

cmd_start() {
    local config summary listen status_listen scheme pid waited limit
    [ -n "$BIN" ] || die "no srbridge binary found: build it (cargo build --release) or set SRBRIDGE_BIN"
    [ -x "$BIN" ] || die "$BIN is not an executable"
    if pid=$(running_pid); then
        echo "rtx.sh: srbridge is already running (pid $pid); not starting a second copy" >&2
        exit 1
    fi
    config=$(resolve_config "${1:-}")
    if ! summary=$("$BIN" check "$config" 2>&1); then
        echo "rtx.sh: not starting: $summary" >&2
        exit 1
    fi
    mkdir -p "$RUN_DIR" "$(dirname "$PID_FILE")" "$(dirname "$LOG_FILE")" || die "cannot create $RUN_DIR"
    listen=$(setting "$summary" listen)
    status_listen=$(setting "$summary" status_listen)
    if [ -n "${SRBRIDGE_HTTP_LISTEN:-}" ]; then listen=$SRBRIDGE_HTTP_LISTEN; fi
    case "$status_listen" in "" | "(not set)") ;; *) listen=$status_listen ;; esac
    echo "$config" >"$CONFIG_FILE"
    scheme=http
    [ "$(setting "$summary" tls)" = "off" ] || scheme=https
    echo "$scheme://$(local_addr "$listen")" >"$URL_FILE"
    rm -f "$STOPPED"
    echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') rtx.sh: starting $BIN $config" >>"$LOG_FILE"
    # setsid: no controlling terminal, so a closing terminal sends no SIGHUP/SIGINT.
    (cd "$WORK_DIR" && exec setsid "$BIN" "$config" </dev/null >>"$LOG_FILE" 2>&1) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    limit=$(( ${SRBRIDGE_START_TIMEOUT:-10} * 10 ))
    waited=0
    while [ "$waited" -lt "$limit" ]; do
        if ! alive "$pid"; then
            rm -f "$PID_FILE"
            echo "rtx.sh: srbridge exited during start-up; last lines of $LOG_FILE:" >&2
            tail -n 5 "$LOG_FILE" >&2
            exit 1
        fi
        if ! command -v curl >/dev/null 2>&1; then
            [ "$waited" -ge 10 ] && break
        elif curl_get /healthz >/dev/null 2>&1; then
            echo "srbridge started (pid $pid, config $config, status $(cat "$URL_FILE"))"
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "srbridge started (pid $pid, config $config); health not confirmed yet, see $LOG_FILE"
}

cmd_stop() {
    local pid limit waited
    mkdir -p "$RUN_DIR" 2>/dev/null
    touch "$STOPPED" 2>/dev/null # before the signal: the watchdog must not restart a drain
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        echo "srbridge is not running"
        return 0
    fi
    limit=$(( ${SRBRIDGE_STOP_TIMEOUT:-$(( $(drain_timeout) + ${SRBRIDGE_STOP_MARGIN:-5} ))} * 10 ))
    kill -TERM "$pid" 2>/dev/null
    waited=0
    while alive "$pid" && [ "$waited" -lt "$limit" ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        echo "srbridge (pid $pid) did not stop within $((limit / 10))s; killed"
    else
        echo "srbridge stopped (pid $pid)"
    fi
    rm -f "$PID_FILE"
}

cmd_status() {
    local pid body
    if pid=$(running_pid); then
        echo "srbridge is running (pid $pid, config $(cat "$CONFIG_FILE" 2>/dev/null))"
        if body=$(curl_get /api/status 2>/dev/null); then
            echo "$body"
        elif body=$(curl_get /healthz 2>/dev/null); then
            echo "health: $body"
        else
            echo "health: status endpoint not answering ($(cat "$URL_FILE" 2>/dev/null))"
        fi
        return 0
    fi
    if pid=$(read_pid); then
        echo "srbridge is dead but the pid file exists (pid $pid, $PID_FILE)"
        return 1
    fi
    echo "srbridge is not running"
    return 3
}

cmd_reload() {
    local pid config out
    pid=$(running_pid) || { echo "srbridge is not running" >&2; exit 7; }
    config=$(resolve_config "")
    if [ -n "$BIN" ] && ! out=$("$BIN" check "$config" 2>&1); then
        echo "rtx.sh: not reloading, the running config stays in force: $out" >&2
        exit 1
    fi
    kill -HUP "$pid" || die "cannot signal pid $pid"
    echo "srbridge (pid $pid) reloading $config"
}

case "${1:-}" in
start) cmd_start "${2:-}" ;;
stop) cmd_stop ;;
restart)
    cmd_stop
    cmd_start "${2:-}"
    ;;
status) cmd_status ;;
reload) cmd_reload ;;
*)
    echo "usage: $0 start|stop|restart|status|reload [CONFIG]" >&2
    exit 2
    ;;
esac
