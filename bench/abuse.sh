#!/usr/bin/env bash
# `pd serve` under abuse: its memory (VmRSS, VmHWM) under 2,000 event-stream followers and
# under 16 concurrent 250 MiB uploads, and /healthz latency while 500 slowloris connections
# dribble headers (with the default 10 s header-read timeout).
# Usage: bench/abuse.sh [FOLLOWERS] [UPLOADS] [UPLOAD_MIB] [SLOWLORIS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
followers=${1:-2000}; uploads=${2:-16}; mib=${3:-250}; slow=${4:-500}; secs=${5:-20}
cargo build --release --locked --bin pd --example abuse -p pd-cli -p pd-server >/dev/null 2>&1 \
  || cargo build --release --locked --bin pd --example abuse
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
target/release/pd --home "$work/home" init >/dev/null
actor=$(sed -n 's/^actor = "\(.*\)"/\1/p' "$work/home/config.toml")
serve_bg "$work/home"
abuse=target/release/examples/abuse
echo -n "at rest:                           "; mem
$abuse followers "$url" "$followers" 5 &
load=$!
# Sampled while every follower holds its stream (the load prints once all are connected).
sleep 3; echo -n "with $followers followers:             "; mem
wait $load
$abuse uploads "$url" "$work/home" "$actor" "$uploads" "$mib"
echo -n "after $uploads × $mib MiB uploads:        "; mem
$abuse slowloris "$url" "$slow" "$secs"
echo -n "after $slow slowloris connections:    "; mem
