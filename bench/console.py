#!/usr/bin/env python3
"""The web console's fleet view at scale, measured in headless Chromium with performance.now().

    target/venv/bin/python bench/console.py [TARGETS] [EVENTS_PER_S] [SECONDS]   # 10000 100 10

Serves server/console/ exactly as `pd serve` does (same files, same CSP) next to a simulated
API: a /v1/fleet answer of TARGETS targets (dev 5 %, staging 20 %, prod 75 %, two policy sets)
and a /v1/events stream of EVENTS_PER_S acks, each of which changes one target in the next
/v1/fleet answer. Prints: the first fleet render after navigation, the targets table of the
largest environment, and, under the event stream, how often the page refetched and redrew,
how long each took, the longest main-thread task and the event-loop lag (how long a click
would wait). Needs Debian's chromium and chromium-driver and selenium (scripts/test installs
them)."""

from __future__ import annotations

import http.server
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

CONSOLE = Path(__file__).resolve().parents[1] / "server" / "console"
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'")
TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "html": "text/html; charset=utf-8",
         "svg": "image/svg+xml"}
SETS = ("llm_policy", "web_policy")
VERSIONS = {"llm_policy": ("PD-23.4.0", "PD-23.3.0"), "web_policy": ("PD-23.5.0", "PD-23.2.0")}


class Fleet:
    """A simulated fleet; `ack()` changes one target as an ack entry would."""

    def __init__(self, n: int) -> None:
        self.rng = random.Random(7)
        self.now = int(time.time() * 1000)
        self.seq = 1000
        split = {"dev": n // 20, "staging": n // 5}
        split["prod"] = n - split["dev"] - split["staging"]
        self.envs: Dict[str, List[Dict[str, Any]]] = {
            env: [self.target(f"{env}-{i:05}") for i in range(count)] for env, count in split.items()}
        self.lock = threading.Lock()

    def target(self, name: str) -> Dict[str, Any]:
        r = self.rng.random()
        status: Any = "loaded" if r < 0.9 else "waiting" if r < 0.98 else {"failed": "reload returned 500: bad policy"}
        running = {s: VERSIONS[s][0 if status == "loaded" else 1] for s in SETS}
        return {"name": name, "labels": ["region=eu" if self.rng.random() < 0.5 else "region=us"], "sets": [],
                "liveness": "stale" if self.rng.random() < 0.01 else "live", "last_seen_ms": self.now - 4000,
                "running": running, "status": {s: status for s in SETS},
                "acks": {s: {"version": running[s], "outcome": "loaded", "seq": 900, "time_ms": self.now - 60000} for s in SETS}}

    def ack(self) -> Dict[str, Any]:
        with self.lock:
            env = self.rng.choice(list(self.envs))
            t = self.rng.choice(self.envs[env])
            t["status"] = {s: "loaded" for s in SETS}
            t["running"] = {s: VERSIONS[s][0] for s in SETS}
            self.seq += 1
            return {"seq": self.seq, "kind": "ack", "actor": t["name"], "env": env, "version": VERSIONS["llm_policy"][0], "entry": ""}

    def json(self) -> bytes:
        with self.lock:
            envs = []
            for env, targets in self.envs.items():
                slots = []
                for s in SETS:
                    states = [t["status"][s] for t in targets]
                    loaded = sum(1 for x in states if x == "loaded")
                    failed = sum(1 for x in states if isinstance(x, dict))
                    running: Dict[str, int] = {}
                    for t in targets:
                        running[t["running"][s]] = running.get(t["running"][s], 0) + 1
                    slots.append({"set": s, "desired": {"version": VERSIONS[s][0], "package": "ab" * 32, "seq": 900, "time_ms": self.now, "via": "push"},
                                  "adopted": loaded == len(targets), "min_targets": 1, "targets": len(targets), "loaded": loaded,
                                  "failed": failed, "waiting": len(targets) - loaded - failed, "queued": 0,
                                  "stale": sum(1 for t in targets if t["liveness"] == "stale"), "running": running, "rollout": None})
                envs.append({"env": env, "min_targets": 1, "slots": slots, "targets": targets})
            body = {"ledger_id": "cd" * 32, "len": self.seq + 1, "head": "ef" * 32, "now_ms": int(time.time() * 1000), "envs": envs}
        return json.dumps(body).encode()


def serve(fleet: Fleet, rate: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if path == "/v1/events":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    while True:
                        time.sleep(1 / rate)
                        ev = fleet.ack()
                        self.wfile.write(f"id: {ev['seq']}\nevent: ack\ndata: {json.dumps(ev)}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
            if path == "/v1/fleet":
                return self.answer(fleet.json(), "application/json")
            name = "index.html" if path == "/" else path.removeprefix("/console/")
            file = CONSOLE / name
            if path.startswith("/v1/") or not file.is_file():
                return self.answer(b'{"error":"not simulated"}', "application/json", 404)
            self.answer(file.read_bytes(), TYPES[name.rsplit(".", 1)[1]])

        def answer(self, body: bytes, kind: str, status: int = 200) -> None:
            self.send_response(status)
            for k, v in (("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache"),
                         ("Content-Security-Policy", CSP)):
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away (the benchmark is over)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Recorded in the page: the event-loop lag every 50 ms and every task over 50 ms.
WATCH = """
window.bench = {lag: [], long: []};
new PerformanceObserver((l) => l.getEntries().forEach((e) => bench.long.push(e.duration))).observe({type: 'longtask'});
(function tick(expected) {
  setTimeout(() => { bench.lag.push(performance.now() - expected); tick(performance.now() + 50); }, 50);
})(performance.now() + 50);
"""


def main() -> None:
    n, rate, seconds = (int(sys.argv[1]) if len(sys.argv) > 1 else 10000,
                        float(sys.argv[2]) if len(sys.argv) > 2 else 100, float(sys.argv[3]) if len(sys.argv) > 3 else 10)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    fleet = Fleet(n)
    size = len(fleet.json())
    server = serve(fleet, rate)
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    first: List[float] = []
    try:
        for _ in range(5):
            driver.get("about:blank")
            driver.get(f"{base}/#/fleet")
            perf = driver.execute_async_script(
                "const done = arguments[0]; (function w() { const p = window.pdPerf?.fleet; p?.length ? done(p[0]) : setTimeout(w, 5); })();")
            first.append(perf["at"])
        print(f"{n} targets, /v1/fleet {size / 1e6:.1f} MB")
        print(f"first fleet render after navigation: median {statistics.median(first):.0f} ms, max {max(first):.0f} ms (5 loads)")
        print(f"  last load: fetch+parse {perf['fetch_ms']:.0f} ms, draw {perf['draw_ms']:.0f} ms")

        driver.execute_script("window.pdPerf.fleet.length = 0;" + WATCH)
        time.sleep(seconds)  # the page is under the event stream meanwhile
        out = driver.execute_script("return {fleet: window.pdPerf.fleet, lag: bench.lag, long: bench.long};")
        f = out["fleet"]
        lag = sorted(out["lag"])
        print(f"under {rate:.0f} events/s for {seconds:.0f} s: {len(f)} refetches ({len(f) / seconds:.1f}/s), "
              f"fetch+parse median {statistics.median(x['fetch_ms'] for x in f):.0f} ms, "
              f"draw median {statistics.median(x['draw_ms'] for x in f):.1f} ms")
        print(f"  event-loop lag: median {lag[len(lag) // 2]:.1f} ms, p95 {lag[int(len(lag) * 0.95)]:.1f} ms, max {lag[-1]:.1f} ms; "
              f"longest task {max(out['long'], default=0):.0f} ms ({len(out['long'])} tasks over 50 ms)")

        biggest = max(fleet.envs, key=lambda e: len(fleet.envs[e]))
        driver.execute_script("window.pdPerf.fleet.length = 0; location.hash = arguments[0];", f"#/fleet/{biggest}")
        perf = driver.execute_async_script(
            "const done = arguments[0]; (function w() { const p = window.pdPerf.fleet; p.length ? done(p[0]) : setTimeout(w, 5); })();")
        print(f"targets of {biggest} ({len(fleet.envs[biggest])}, {200} a page): fetch+parse {perf['fetch_ms']:.0f} ms, draw {perf['draw_ms']:.0f} ms")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
