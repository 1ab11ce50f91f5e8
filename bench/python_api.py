"""Per-call time of the Python API next to shelling out to the pd CLI (see bench/python.sh).

Usage: python bench/python_api.py PD WORKDIR CALLS"""

import json
import os
import statistics
import subprocess
import sys
import time

pd, work, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
home = os.path.join(work, "home")
os.environ["PD_HOME"] = home
os.makedirs(os.path.join(work, "policies"))
subprocess.run([pd, "init"], check=True, capture_output=True)

import hms_deploy  # noqa: E402  (after PD_HOME is set, as a user's program would be)


def cli(*args: str) -> object:
    out = subprocess.run([pd, "--json", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def policy(i: int, side: str) -> str:
    path = os.path.join(work, "policies", f"{side}-{i}.yaml")
    with open(path, "w") as f:
        f.write(f"max_tokens: {i}\nside: {side}\n")
    return path


ops = {
    "state()": (lambda i: hms_deploy.state(), lambda i: cli("state")),
    "package(file)": (
        lambda i: hms_deploy.package(policy(i, "api"), "bench"),
        lambda i: cli("ledger", "package", policy(i, "cli"), "--reason", "bench"),
    ),
}
print(f"{calls} calls each, interleaved; median and p90 in ms")
print("| call | hms_deploy | subprocess pd --json | ratio (median) |")
print("|---|---|---|---|")
for name, (api, shell) in ops.items():
    times = {"api": [], "cli": []}
    for i in range(calls):
        for side, f in (("api", api), ("cli", shell)):
            t = time.perf_counter()
            f(i)
            times[side].append((time.perf_counter() - t) * 1000)
    cols = []
    for side in ("api", "cli"):
        s = sorted(times[side])
        cols.append(f"{statistics.median(s):.2f} / {s[int(len(s) * 0.9)]:.2f}")
    ratio = statistics.median(times["cli"]) / statistics.median(times["api"])
    print(f"| {name} | {cols[0]} | {cols[1]} | {ratio:.1f}× faster |")
