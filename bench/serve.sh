#!/usr/bin/env bash
# Artifact serving: requests/s and MB/s of `GET /v1/objects/<hash>` from `pd serve`, next to
# nginx serving the same bytes as static files, in the same run, with the same load.
# Usage: [ROUNDS=3] [PIN=1] [CLIENTS="wrk oha"] bench/serve.sh [SECONDS]
#   (installs wrk and nginx from Debian, oha with cargo and python's blake3 if missing)
# PIN=1 runs both servers on CPU 0 and the load generator on CPU 1 (taskset), so it does not
# compete with the server under test for a core. Pinned, each row also gives the busy time of
# the server's core per request (user, system, irq and softirq time of CPU 0 from
# /proc/stat, so the kernel's network work on the server's side counts wherever it ran) and
# how busy that core was: the work per answer, comparable even when the load generator, not
# the server, is what runs out of CPU.
# Two load generators, 32 connections each: wrk (C, cheapest per request, but it reads
# answers 8 KiB at a time, so at 1 MiB it runs out of CPU before either server does) and oha
# (Rust, hyper, reads in large buffers: it keeps a server busy at 1 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. bench/lib.sh
need wrk
need nginx
clients=${CLIENTS:-wrk oha}
[[ $clients != *oha* ]] || command -v oha >/dev/null || cargo install --locked --quiet oha --version 1.16.0
python3 -c "import blake3" 2>/dev/null || python3 -m pip install --quiet blake3 || python3 -m pip install --quiet --break-system-packages blake3
cargo build --release --locked --bin pd >/dev/null
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
target/release/pd --home "$work/home" init >/dev/null
mkdir -p "$work/www"
# One 4 KiB and one 1 MiB object of random bytes, in pd's store and in nginx's root.
read -r small large < <(python3 - "$work" <<'PY'
import os, sys, blake3
work = sys.argv[1]
names = []
for size in (4096, 1 << 20):
    data = os.urandom(size)
    h = blake3.blake3(data).hexdigest()
    os.makedirs(f"{work}/home/objects/{h[:2]}", exist_ok=True)
    open(f"{work}/home/objects/{h[:2]}/{h[2:]}", "wb").write(data)
    open(f"{work}/www/{h}", "wb").write(data)
    names.append(h)
print(*names)
PY
)
# nginx's workers run as an unprivileged user: let them read the files.
chmod a+rx "$work" "$work/www" && chmod a+r "$work"/www/*
server_cpu=(); client_cpu=()
if [[ ${PIN:-0} == 1 ]]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi
"${server_cpu[@]}" target/release/pd --home "$work/home" serve --listen 127.0.0.1:0 > "$work/pd.out" 2>/dev/null &
pids+=($!)
until grep -q listening "$work/pd.out" 2>/dev/null; do sleep 0.1; done
pd_url=$(sed -n 's/.*listening on //p' "$work/pd.out")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
master_process on;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=100;
  server {
    listen 127.0.0.1:$port;
    root $work/www;
    location /v1/objects/ { alias $work/www/; }
  }
}
CONF
"${server_cpu[@]}" nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/objects/$small" -o /dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/v1/objects/$small" -o /dev/null || { echo "nginx does not serve the files:"; cat "$work/nginx.err"; exit 1; }
nginx_url="http://127.0.0.1:$port"
curl -sf "$pd_url/v1/objects/$small" -o /dev/null

# Rounds alternate the two servers, so a slow moment of the machine hits both; each row is
# the median round.
rounds=${ROUNDS:-3}
# Busy time of CPU 0 so far, in clock ticks (user, nice, system, irq, softirq, steal).
hz=$(getconf CLK_TCK)
busy() { awk '$1 == "cpu0" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# load CLIENT URL: SECONDS of GETs of URL over 32 connections; the report in $work/load.
load() {
  case $1 in
    wrk) "${client_cpu[@]}" wrk -t 1 -c 32 -d "${secs}s" "$2" > "$work/load" ;;
    oha) "${client_cpu[@]}" oha -z "${secs}s" -w -c 32 --no-tui --output-format json "$2" > "$work/load" ;;
  esac
}
# rate CLIENT: requests/s and requests from the report of `load`; fails unless every answer
# was a 200. (Read after the server's CPU time, so that reading it is not counted.)
rate() {
  case $1 in
    wrk)
      ! grep -q "Non-2xx\|Socket errors" "$work/load" || { echo "wrk saw errors: $(cat "$work/load")" >&2; exit 1; }
      awk '/Requests\/sec/ {rps = $2} / requests in / {n = $1} END {print rps, n}' "$work/load" ;;
    oha)
      python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
if set(d["statusCodeDistribution"]) != {"200"} or d["errorDistribution"]:
    sys.exit("oha saw errors: " + json.dumps([d["statusCodeDistribution"], d["errorDistribution"]]))
print(d["summary"]["requestsPerSec"], d["statusCodeDistribution"]["200"])' "$work/load" ;;
  esac
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2}'; }
printf "| load | server | object | requests/s (median of %s) | MB/s | ratio | server core µs/request | server core busy |\n|---|---|---|---|---|---|---|---|\n" "$rounds"
for client in $clients; do
  for obj in "$small 4KiB" "$large 1MiB"; do
    set -- $obj
    declare -A runs=() cpu=() share=()
    for _ in $(seq "$rounds"); do
      for srv in "pd serve|$pd_url" "nginx|$nginx_url"; do
        name=${srv%%|*}; url=${srv#*|}
        before=$(busy); start=$(date +%s.%N)
        load "$client" "$url/v1/objects/$1"
        used=$(( $(busy) - before )); end=$(date +%s.%N)
        counted=$(rate "$client"); read -r rps requests <<<"$counted"
        took=$(python3 -c "print($end - $start)")
        runs[$name]+="$rps "
        # The server's core: busy microseconds per answer, and busy share of the wall time the
        # load took, start-up included (ticks are 1/CLK_TCK s).
        cpu[$name]+="$(python3 -c "print($used / $hz * 1e6 / $requests)") "
        share[$name]+="$(python3 -c "print(100 * $used / $hz / $took)") "
      done
    done
    size=$(wc -c < "$work/www/$1")
    pd=$(median "${runs[pd serve]}"); ng=$(median "${runs[nginx]}")
    for row in "pd serve|$pd" "nginx|$ng"; do
      name=${row%%|*}; rps=${row#*|}
      ratio=$(python3 -c "print(f'{$rps / $ng:.2f}×')")
      core="– | –"
      [[ ${PIN:-0} != 1 ]] || core=$(printf "%.1f | %.0f%%" "$(median "${cpu[$name]}")" "$(median "${share[$name]}")")
      printf "| %s | %s | %s | %.0f | %.1f | %s | %s |\n" "$client" "$name" "$2" "$rps" "$(python3 -c "print($rps * $size / 1e6)")" "$ratio" "$core"
    done
    unset runs cpu share
  done
done
