#!/usr/bin/env bash
# Packaging a 10 MiB policy directory: `pd ledger package` (deterministic tar.gz + SHA-256 +
# BLAKE3 + OpenPGP signature + ledger entry) next to `tar czf` + `sha256sum` + `gpg
# --detach-sign` of the same files, in the same run. Prints MB/s for both and the ratio.
# Usage: bench/package.sh   (from anywhere; installs hyperfine from Debian if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/lib.sh
need hyperfine
release_pd

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
policies="$work/policies"
mkdir -p "$policies"
# 200 policy-like YAML files of ~52 KiB each: text that compresses like real policies.
python3 - "$policies" <<'PY'
import sys, os
root = sys.argv[1]
for i in range(200):
    lines = []
    n = 0
    while sum(len(l) for l in lines) < 52 * 1024:
        lines.append(f"- rule: r{i}-{n}\n  allowed_roles: [role_{n % 17}, team_{(n * 7) % 23}]\n  daily_budget_usd: {(n * 13) % 500}\n  model: model-{n % 11}\n")
        n += 1
    with open(os.path.join(root, f"policy_{i:03}.yaml"), "w") as f:
        f.write("".join(lines))
PY
bytes=$(du -sb "$policies" | cut -f1)

home="$work/home"
"$pd" --home "$home" init >/dev/null
export GNUPGHOME="$work/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key 'bench <bench@example.invalid>' ed25519 sign never 2>/dev/null

hyperfine --warmup 2 --runs 10 --export-json "$work/result.json" \
  -n "pd ledger package" "'$pd' --home '$home' ledger package '$policies' --bump patch --reason bench" \
  -n "tar czf + sha256sum + gpg --detach-sign" \
  "tar czf '$work/out.tgz' -C '$policies' . && sha256sum '$work/out.tgz' >/dev/null && gpg --batch --yes --detach-sign '$work/out.tgz'"

python3 - "$work/result.json" "$bytes" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
size = int(sys.argv[2])
rates = {r["command"]: size / r["mean"] / 1e6 for r in results}
for name, rate in rates.items():
    print(f"{name}: {rate:.1f} MB/s ({size / 1e6:.1f} MB)")
pd, tools = rates["pd ledger package"], rates["tar czf + sha256sum + gpg --detach-sign"]
print(f"ratio pd / (tar+sha256sum+gpg): {pd / tools:.2f}")
PY
