#!/usr/bin/env bash
# Gate reaction time: from the error spike (the canary loads a bad version, which makes its
# example service fail half its requests) to the canary running the previous version again,
# rolled back by a Prometheus gate during the canary's bake, next to Prometheus' scrape
# interval. Goal: at most 2 scrape intervals + 1 s.
# Usage: [RUNS=5] bench/rollback.sh [SCRAPE_INTERVAL_SECONDS…]   (default: 1 2 5)
# Both ends are the canary's own signed acks (its loaded ack of the bad version, and of the
# old one after the rollback), so the time is the target's clock, read off the ledger.
set -euo pipefail
# A failing step inside `$(one_run …)` stops the bench instead of giving an empty time.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. bench/lib.sh
need prometheus
release_pd
runs=${RUNS:-5}
intervals=("${@:-1 2 5}")
read -r -a intervals <<< "${intervals[*]}"
work=$(mktemp -d)
# Background processes, one pid a line: one_run runs in a subshell, so not in a variable.
pids="$work/pids"
stop_all() { [[ ! -f $pids ]] || while read -r p; do kill "$p" 2>/dev/null || true; done < "$pids"; rm -f "$pids"; }
cleanup() { stop_all; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# free_port: a loopback port nobody listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# one_run INTERVAL DIR: prints the spike-to-rollback time in ms.
one_run() {
  local interval=$1 dir=$2
  mkdir -p "$dir" && cd "$dir"
  export PD_HOME="$dir/.pd"
  "$pd" init --envs prod >/dev/null 2>&1
  "$pd" key new carol --role approver --generate-here >/dev/null 2>&1
  "$pd" key new canary --role target --env prod --label canary --generate-here >/dev/null 2>&1
  "$pd" key new web-1 --role target --env prod --generate-here >/dev/null 2>&1
  "$pd" key new web-2 --role target --env prod --generate-here >/dev/null 2>&1
  local port; port=$(free_port)
  "$pd" serve --listen "127.0.0.1:$port" > serve.log 2>&1 & echo $! >> "$pids"
  export PD_SERVER="http://127.0.0.1:$port"
  until "$pd" state >/dev/null 2>&1; do sleep 0.1; done
  local scrape=()
  for t in canary web-1 web-2; do
    local tp; tp=$(free_port)
    "$pd" example-target --listen "127.0.0.1:$tp" --policy-dir "agent-$t/current" --bad PD-0.2.0 > "target-$t.log" 2>&1 & echo $! >> "$pids"
    "$pd" agent --as "$t" --dir "agent-$t" --reload-url "http://127.0.0.1:$tp/reload" > "agent-$t.log" 2>&1 & echo $! >> "$pids"
    scrape+=("\"127.0.0.1:$tp\"")
  done
  local pp; pp=$(free_port)
  local window=$(( interval * 4 > 5 ? interval * 4 : 5 ))
  printf 'global: {scrape_interval: %ss, evaluation_interval: %ss}\nscrape_configs:\n  - job_name: prod\n    static_configs: [{targets: [%s]}]\n' \
    "$interval" "$interval" "$(IFS=,; echo "${scrape[*]}")" > prometheus.yml
  prometheus --config.file prometheus.yml --storage.tsdb.path prom-data --web.listen-address "127.0.0.1:$pp" > prometheus.log 2>&1 & echo $! >> "$pids"
  local gate="prom:http://127.0.0.1:$pp?query=sum(rate(pd_example_errors_total[${window}s]))/sum(rate(pd_example_requests_total[${window}s]))&max=0.01"
  "$pd" env set prod --waves canary --bake 60s --gate "$gate" --auto-rollback --reason bench >/dev/null
  printf 'a: 1\n' > p.yaml
  "$pd" ledger package p.yaml --reason good >/dev/null
  "$pd" --as carol ledger approve PD-0.1.0 --reason ok >/dev/null
  # The good version bakes its full minute twice; shorten it for the good one only.
  "$pd" env set prod --bake 1s --reason "good version" >/dev/null
  "$pd" ledger deploy PD-0.1.0 --reason good --timeout 120s >/dev/null 2>&1
  "$pd" env set prod --bake 60s --reason "bad version" >/dev/null
  printf 'a: 2\n' > p.yaml
  "$pd" ledger package p.yaml --reason bad >/dev/null
  "$pd" --as carol ledger approve PD-0.2.0 --reason ok >/dev/null
  "$pd" ledger deploy PD-0.2.0 --reason bad --timeout 120s >/dev/null 2>&1 || true
  "$pd" ledger log --json | python3 -c '
import json, sys
log = json.load(sys.stdin)
acks = [e for e in log if e["kind"] == "ack" and e["actor"] == "canary" and e["body"]["ack"]["outcome"] == "loaded"]
bad = next(e for e in acks if e["body"]["ack"]["version"] == "PD-0.2.0")
back = next(e for e in acks if e["seq"] > bad["seq"] and e["body"]["ack"]["version"] == "PD-0.1.0")
print(back["signed_ms"] - bad["signed_ms"])
'
  stop_all
  wait 2>/dev/null || true
  cd - >/dev/null
}

echo "machine: $(nproc) cores, $(uname -sr); Prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}')"
printf '%-16s %5s %10s %10s %10s %12s\n' "scrape interval" runs "min ms" "median ms" "max ms" "goal ms"
for interval in "${intervals[@]}"; do
  times=()
  for i in $(seq "$runs"); do
    t=$(one_run "$interval" "$work/$interval-$i")
    [[ $t =~ ^[0-9]+$ ]] || { echo "run $i at ${interval}s gave no time (\"$t\")" >&2; exit 1; }
    times+=("$t")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  min=$(head -1 <<< "$sorted"); max=$(tail -1 <<< "$sorted")
  median=$(sed -n "$(( (runs + 1) / 2 ))p" <<< "$sorted")
  printf '%-16s %5s %10s %10s %10s %12s\n' "${interval}s" "$runs" "$min" "$median" "$max" "$(( interval * 2000 + 1000 ))"
done
