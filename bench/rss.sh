#!/usr/bin/env bash
# Memory of `pd serve` over a 1,000,000-entry ledger: VmRSS and VmHWM after start-up and
# after reads (head, state, entry pages, event streams from the start).
# Usage: bench/rss.sh [ENTRIES]   (needs curl; builds release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-1000000}
cargo build --release --locked --bin pd --example big_home -p pd-server -p pd-cli >/dev/null 2>&1 \
  || cargo build --release --locked --bin pd --example big_home
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
echo "building a home with $n entries…"
start=$(date +%s)
target/release/examples/big_home "$work/home" "$n"
echo "  built in $(( $(date +%s) - start )) s; ledger on disk: $(du -sh "$work/home/ledger" | cut -f1)"
start_ms=$(date +%s%3N)
serve_bg "$work/home"
echo "  serving after $(( $(date +%s%3N) - start_ms )) ms (folds the whole ledger on open)"
echo -n "after start:  "; mem
curl -sf "$url/v1/head" >/dev/null
curl -sf "$url/v1/state" >/dev/null
for from in 0 250000 500000 750000 990000; do
  curl -sf "$url/v1/entries?from=$from" -o /dev/null
done
# Ten followers replaying the event stream from the start for a few seconds each.
for i in $(seq 10); do
  curl -sN --max-time 3 "$url/v1/events?from=0" -o /dev/null || true &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
echo -n "after reads:  "; mem
