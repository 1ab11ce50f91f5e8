#!/usr/bin/env bash
# Artifact serving: requests/s and MB/s of `GET /v1/objects/<hash>` from `pd serve`, next to
# nginx serving the same bytes as static files, in the same run, with the same load (wrk).
# Usage: [ROUNDS=3] [PIN=1] bench/serve.sh [SECONDS]   (installs wrk, nginx and python's blake3 if missing)
# PIN=1 runs both servers on CPU 0 and wrk on CPU 1 (taskset), so the load generator does not
# compete with the server under test for a core. Each row also gives the server's CPU time
# (user + system, all threads or worker processes) per request: the work it did per answer,
# which stays comparable when the load generator, not the server, is what runs out of CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. bench/lib.sh
need wrk
need nginx
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
# CPU time (user + system, in clock ticks) of the given processes and their threads so far.
hz=$(getconf CLK_TCK)
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
declare -A srv_pids=(["pd serve"]="${pids[0]}" [nginx]="$(pgrep -P "${pids[1]}" | tr '\n' ' ')")
printf "| server | object | requests/s (median of %s) | MB/s | ratio | server CPU µs/request |\n|---|---|---|---|---|---|\n" "$rounds"
for obj in "$small 4KiB" "$large 1MiB"; do
  set -- $obj
  declare -A runs=() cpu=()
  for _ in $(seq "$rounds"); do
    for srv in "pd serve|$pd_url" "nginx|$nginx_url"; do
      name=${srv%%|*}; url=${srv#*|}
      before=$(cpu_ticks "${srv_pids[$name]}")
      out=$("${client_cpu[@]}" wrk -t 1 -c 32 -d "${secs}s" "$url/v1/objects/$1")
      used=$(( $(cpu_ticks "${srv_pids[$name]}") - before ))
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      runs[$name]+="$rps "
      # Server CPU time per request, in microseconds (ticks are 1/CLK_TCK s).
      cpu[$name]+="$(python3 -c "print($used / $hz * 1e6 / ($rps * $secs))") "
    done
  done
  size=$(wc -c < "$work/www/$1")
  median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  pd=$(median "${runs[pd serve]}"); ng=$(median "${runs[nginx]}")
  for row in "pd serve|$pd" "nginx|$ng"; do
    name=${row%%|*}; rps=${row#*|}
    ratio=$(python3 -c "print(f'{$rps / $ng:.2f}×')")
    printf "| %s | %s | %.0f | %.1f | %s | %.1f |\n" "$name" "$2" "$rps" "$(python3 -c "print($rps * $size / 1e6)")" "$ratio" "$(median "${cpu[$name]}")"
  done
  unset runs cpu
done
