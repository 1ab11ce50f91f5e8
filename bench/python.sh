#!/usr/bin/env bash
# The Python API's cost per call: hms_deploy.state() and hms_deploy.package() in-process, next
# to what a Python program would otherwise do, shelling out to the pd CLI (subprocess.run), on
# the same home, interleaved in the same run. Both sides are release builds.
# Usage: bench/python.sh [CALLS]   (builds pd and a release wheel into a throwaway virtualenv)
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-200}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked --bin pd >/dev/null
python3 -m venv "$work/venv"
export PATH="$work/venv/bin:$PATH" VIRTUAL_ENV="$work/venv"
python -m pip install --quiet --disable-pip-version-check maturin==1.16.0
python -m pip install --quiet --disable-pip-version-check --no-build-isolation ./python
python bench/python_api.py "$PWD/target/release/pd" "$work" "$calls"
