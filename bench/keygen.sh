#!/usr/bin/env bash
# A holder making their key: `pd key gen` (Ed25519 + OpenPGP secret files and an enrolment
# request with its proof of possession) next to `gpg --quick-gen-key` of one Ed25519 OpenPGP
# key, in the same run; then an admin enrolling the request (`pd key new --request`: bounded
# read, proof checked, rule-checked durable append) next to `gpg --import` of the certificate.
# Usage: bench/keygen.sh   (from anywhere; installs hyperfine from Debian if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/lib.sh
need hyperfine
release_pd

work=$(mktemp -d)
trap 'pkill -f "gpg-agent.*$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -m 700 "$work/gnupg"
"$pd" --home "$work/admin" init >/dev/null
"$pd" --home "$work/admin" key gen carol --out "$work/carol" >/dev/null
gpg --homedir "$work/gnupg" --batch --passphrase '' --quick-gen-key 'carol' ed25519 sign never 2>/dev/null
gpg --homedir "$work/gnupg" --armor --export carol >"$work/carol.asc"

# Each run makes its key in a fresh directory (mktemp), so no run sees another's files.
hyperfine --warmup 3 --runs 30 -N \
  -n "pd key gen" "sh -c 'd=\$(mktemp -d -p $work); exec $pd --home \$d/h key gen carol --out \$d/k'" \
  -n "gpg --quick-gen-key" "sh -c 'd=\$(mktemp -d -p $work); exec gpg --homedir \$d --batch --passphrase \"\" --quick-gen-key carol ed25519 sign never'"

# Enrolment: each run enrols a fresh request under its own name into one growing ledger.
for i in $(seq 1 40); do "$pd" --home "$work/admin" key gen "c$i" --out "$work/req" >/dev/null; done
echo 0 >"$work/n"
hyperfine --warmup 2 --runs 30 -N \
  -n "pd key new --request" "sh -c 'n=\$((\$(cat $work/n) + 1)); echo \$n >$work/n; exec $pd --home $work/admin key new c\$n --role approver --request $work/req/c\$n.request'" \
  -n "gpg --import" "gpg --homedir $work/gnupg --batch --import $work/carol.asc"
