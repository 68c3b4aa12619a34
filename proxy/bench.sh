#!/usr/bin/env bash
# Loopback benchmark of airlock-proxy: direct to the origin vs through
# airlock-proxy vs through tinyproxy, in the same run.
#
#   proxy/bench.sh            # 10 s per wrk run, 5 downloads per path
#   DURATION=30 RUNS=9 proxy/bench.sh
#
# Needs: wrk, tinyproxy, curl (apt-get install wrk tinyproxy curl).
# Measures: requests/second for a 13-byte GET (wrk, keep-alive, 2 threads,
# 32 connections; through a proxy wrk sends absolute-form requests), and
# throughput of a 64 MiB download (curl, best of RUNS) as a forwarded GET and
# through a CONNECT tunnel (curl -p). Everything stays on 127.0.0.1.
set -euo pipefail

DURATION=${DURATION:-10}
RUNS=${RUNS:-5}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
SIZE=$((64 * 1024 * 1024))
ORIGIN_PORT=${ORIGIN_PORT:-18080}
AIRLOCK_PORT=${AIRLOCK_PORT:-13128}
TINY_PORT=${TINY_PORT:-18888}

cd "$(dirname "$0")/.."
for tool in wrk tinyproxy curl; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release -q -p airlock-proxy --bin airlock-proxy --example bench-origin
PROXY=target/release/airlock-proxy
ORIGIN=target/release/examples/bench-origin

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench.sh: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

for port in "$ORIGIN_PORT" "$AIRLOCK_PORT" "$TINY_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench.sh: 127.0.0.1:$port is already in use (set ORIGIN_PORT/AIRLOCK_PORT/TINY_PORT)" >&2
        exit 1
    fi
done

"$ORIGIN" "127.0.0.1:$ORIGIN_PORT" 2>"$tmp/origin.log" & pids+=($!)
env -u http_proxy -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY -u no_proxy -u NO_PROXY \
    "$PROXY" --listen "127.0.0.1:$AIRLOCK_PORT" --ignore-proxy-env --log-level warn 2>"$tmp/airlock.log" & pids+=($!)
cat >"$tmp/tinyproxy.conf" <<EOF
Port $TINY_PORT
Listen 127.0.0.1
Timeout 60
MaxClients 256
LogLevel Error
EOF
tinyproxy -d -c "$tmp/tinyproxy.conf" >"$tmp/tinyproxy.log" 2>&1 & pids+=($!)
wait_port "$ORIGIN_PORT"; wait_port "$AIRLOCK_PORT"; wait_port "$TINY_PORT"

# Every path must deliver the right bytes before anything is timed.
for via in "" "-x http://127.0.0.1:$AIRLOCK_PORT" "-x http://127.0.0.1:$TINY_PORT" \
           "-p -x http://127.0.0.1:$AIRLOCK_PORT" "-p -x http://127.0.0.1:$TINY_PORT"; do
    # shellcheck disable=SC2086
    got=$(curl -sS $via "http://127.0.0.1:$ORIGIN_PORT/hello")
    [ "$got" = "hello, bench" ] || { echo "bench.sh: GET /hello ${via:-direct} returned: $got" >&2; exit 1; }
done

cat >"$tmp/absolute.lua" <<EOF
wrk.path = "http://127.0.0.1:$ORIGIN_PORT/hello"
EOF

rps() { # label, wrk args...
    local label=$1; shift
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@")
    local r lat errs
    r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    lat=$(awk '/^ +50%/ {print $2}' <<<"$out")
    errs=$(awk '/Socket errors|Non-2xx/ {printf "%s ", $0}' <<<"$out")
    printf '| %-32s | %12s | %10s | %s |\n' "$label" "$r" "$lat" "${errs:-none}"
}

best_mibps() { # curl args...
    local best=0 s size
    for _ in $(seq "$RUNS"); do
        read -r s size < <(curl -sS -o /dev/null -w '%{speed_download} %{size_download}\n' "$@")
        [ "$size" = "$SIZE" ] || { echo "bench.sh: curl $* got $size bytes, not $SIZE" >&2; exit 1; }
        best=$(awk -v a="$best" -v b="$s" 'BEGIN { print (b > a) ? b : a }')
    done
    awk -v b="$best" 'BEGIN { printf "%.0f", b / 1048576 }'
}

URL="http://127.0.0.1:$ORIGIN_PORT"
echo "# airlock-proxy loopback benchmark ($(nproc) CPUs, $(uname -r))"
echo
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, GET /hello (13 bytes), keep-alive"
echo
echo "| path                             |   requests/s | median lat | errors |"
echo "|----------------------------------|--------------|------------|--------|"
rps "direct"                         "$URL/hello"
rps "through airlock-proxy"          -s "$tmp/absolute.lua" "http://127.0.0.1:$AIRLOCK_PORT"
rps "through tinyproxy"              -s "$tmp/absolute.lua" "http://127.0.0.1:$TINY_PORT"
echo
echo "curl, 64 MiB download, best of $RUNS"
echo
echo "| path                                   | MiB/s |"
echo "|----------------------------------------|-------|"
printf '| %-38s | %5s |\n' "direct"                          "$(best_mibps "$URL/bytes/$SIZE")"
printf '| %-38s | %5s |\n' "airlock-proxy, forwarded GET"    "$(best_mibps -x "http://127.0.0.1:$AIRLOCK_PORT" "$URL/bytes/$SIZE")"
printf '| %-38s | %5s |\n' "airlock-proxy, CONNECT tunnel"   "$(best_mibps -p -x "http://127.0.0.1:$AIRLOCK_PORT" "$URL/bytes/$SIZE")"
printf '| %-38s | %5s |\n' "tinyproxy, forwarded GET"        "$(best_mibps -x "http://127.0.0.1:$TINY_PORT" "$URL/bytes/$SIZE")"
printf '| %-38s | %5s |\n' "tinyproxy, CONNECT tunnel"       "$(best_mibps -p -x "http://127.0.0.1:$TINY_PORT" "$URL/bytes/$SIZE")"
