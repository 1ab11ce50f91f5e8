#!/usr/bin/env bash
# S3 transfer: upload and download MB/s of a 100 MiB package through pd against a three-node
# Garage cluster (replication factor 3) on loopback, next to the aws CLI moving the same
# bytes against the same cluster, in the same run (hyperfine).
# Usage: bench/s3.sh [RUNS]   (installs hyperfine and the aws CLI if missing; Garage through
# scripts/install-garage)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
. bench/lib.sh
need hyperfine
work=$(mktemp -d)
if ! command -v aws >/dev/null; then
    python3 -m venv "$work/venv" && "$work/venv/bin/pip" install --quiet awscli
    PATH="$work/venv/bin:$PATH"
fi
garage=$(scripts/install-garage)
release_pd
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
for i in 1 2 3; do
    mkdir -p "$work/n$i"
    rpc=$(port); s3=$(port); admin=$(port)
    [[ $i == 1 ]] && endpoint="http://127.0.0.1:$s3"
    cat > "$work/n$i/garage.toml" <<CONF
metadata_dir = "$work/n$i/meta"
data_dir = "$work/n$i/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
    RUST_LOG=garage=info "$garage" -c "$work/n$i/garage.toml" server > "$work/n$i/log" 2>&1 &
    pids+=($!)
done
for i in 1 2 3; do
    until grep -q "S3 API server listening" "$work/n$i/log"; do sleep 0.1; done
done
g() { "$garage" -c "$work/n1/garage.toml" "$@"; }
for i in 2 3; do g node connect "$("$garage" -c "$work/n$i/garage.toml" node id -q)" >/dev/null; done
for i in 1 2 3; do
    id=$("$garage" -c "$work/n$i/garage.toml" node id -q)
    g layout assign -z dc1 -c 1G "${id:0:16}" >/dev/null
done
g layout apply --version 1 >/dev/null
g bucket create pd-bench >/dev/null
keys=$(g key create bench)
g bucket allow --read --write --owner pd-bench --key bench >/dev/null
export AWS_ENDPOINT_URL="$endpoint" AWS_REGION=garage AWS_DEFAULT_REGION=garage
AWS_ACCESS_KEY_ID=$(sed -n 's/^Key ID: *//p' <<<"$keys")
AWS_SECRET_ACCESS_KEY=$(sed -n 's/^Secret key: *//p' <<<"$keys")
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

# A 100 MiB package of incompressible files, packaged once into a local home.
mkdir -p "$work/policy"
head -c $((50 << 20)) /dev/urandom > "$work/policy/a.bin"
head -c $((50 << 20)) /dev/urandom > "$work/policy/b.bin"
"$pd" --home "$work/home" init >/dev/null
hash=$("$pd" --home "$work/home" ledger package "$work/policy" --reason bench --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["tarball"]["blake3"])')
tarball="$work/package.tgz"
"$pd" --home "$work/home" store get "$hash" -o "$tarball" >/dev/null
bytes=$(stat -c %s "$tarball")
echo "package: $bytes bytes"

# Upload: pd mirrors the home (the artifact plus two small ledger objects) to an emptied
# prefix; aws copies the tarball. Download: pd reads the object by hash and verifies it; aws
# copies it to a file.
hyperfine --runs "$runs" --warmup 1 --export-json "$work/up.json" \
    --prepare "aws s3 rm --quiet --recursive s3://pd-bench/up" \
    -n "pd upload (ledger mirror)" "$pd --home $work/home ledger mirror s3://pd-bench/up" \
    -n "aws s3 cp upload" "aws s3 cp --quiet $tarball s3://pd-bench/aws/package.tgz"
# (--prepare runs before every command, so the download reads a prefix of its own.)
"$pd" --home "$work/home" ledger mirror s3://pd-bench/down >/dev/null
hyperfine --runs "$runs" --warmup 1 --export-json "$work/down.json" \
    --prepare "rm -f $work/out.tgz" \
    -n "pd download (store get)" "$pd --home $work/home --store s3://pd-bench/down store get $hash -o $work/out.tgz" \
    -n "aws s3 cp download" "aws s3 cp --quiet s3://pd-bench/aws/package.tgz $work/out.tgz"
python3 - "$bytes" "$work/up.json" "$work/down.json" <<'PY'
import json, sys
size = int(sys.argv[1])
print(f"\n| what | mean ± σ | MB/s |\n|---|---|---|")
for f in sys.argv[2:]:
    for r in json.load(open(f))["results"]:
        print(f"| {r['command']} | {r['mean']*1000:.0f} ms ± {r['stddev']*1000:.0f} | {size/r['mean']/1e6:.1f} |")
PY
