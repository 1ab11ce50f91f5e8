"""A harness for the Python API's tests: a pd home in a temp dir, and real `pd serve`,
`pd agent` and `pd example-target` processes on loopback, as tests/harness.rs has for Rust.

The `pd` binary is $PD_BIN, else the workspace's target/debug/pd (scripts/test builds it)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PD = Path(os.environ.get("PD_BIN", REPO / "target" / "debug" / "pd"))
POLICY = "allow:\n  - model: openai/gpt-4o\n    for: nsf_research_staff\n"


class Proc:
    """A child process that printed `marker` on stdout; the rest of its output goes to a log."""

    def __init__(self, args: List[str], log: Path, marker: str, env: Dict[str, str]) -> None:
        self.log = log
        self.child = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL, env=env, text=True
        )
        assert self.child.stdout is not None
        for line in self.child.stdout:
            if marker in line:
                self.url = next((w for w in line.split() if w.startswith("http://")), "")
                break
        else:
            self.child.wait()
            raise AssertionError(f"{args} exited before printing {marker!r}: {log.read_text()}")
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self.child.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()


class World:
    """A temp dir with a pd home at `.pd`: an admin, an approver `carol`, one target key per
    environment (`dev-1`, `staging-1`, `prod-1`) and `governance/llm_policy.yaml`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / ".pd"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
        self.env["PD_HOME"] = str(self.home)
        self.procs: List[Proc] = []
        self.server: Optional[Proc] = None
        self.pd("init")
        self.pd("key", "new", "carol", "--role", "approver", "--generate-here")
        for env in ("dev", "staging", "prod"):
            self.pd("key", "new", f"{env}-1", "--role", "target", "--env", env, "--generate-here")
        self.policy = self.write("governance/llm_policy.yaml", POLICY)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, *args: str, actor: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """`pd [--as ACTOR] ARGS…` in the world's directory, whatever its exit code."""
        who = [f"--as={actor}"] if actor else []
        return subprocess.run([str(PD), *who, *args], cwd=self.root, env=self.env, capture_output=True, text=True)

    def pd(self, *args: str, actor: Optional[str] = None) -> str:
        """`pd ARGS…`, which must succeed; its stdout."""
        out = self.run(*args, actor=actor)
        assert out.returncode == 0, f"pd {' '.join(args)} failed: {out.stderr}"
        return out.stdout

    def log(self) -> List[Dict[str, Any]]:
        """`pd ledger log --json`, from the CLI."""
        return json.loads(self.pd("ledger", "log", "--all", "--json"))

    def serve(self) -> str:
        """Starts `pd serve` on a free loopback port and makes it the home's server."""
        self.server = self.spawn(["serve", "--listen", "127.0.0.1:0"], "serve", "listening on")
        with open(self.home / "config.toml", "a") as config:
            config.write(f'server = "{self.server.url}"\n')
        return self.server.url

    def agent(self, target: str, env: str, refuse: Optional[str] = None) -> Path:
        """Starts an example target (refusing version `refuse`) and the agent of key `target`
        beside it. Returns the agent's directory."""
        assert self.server is not None, "serve() first"
        dir = self.root / "agents" / target
        args = ["example-target", "--listen", "127.0.0.1:0", "--policy-dir", str(dir / "current")]
        t = self.spawn(args + ([f"--refuse={refuse}"] if refuse else []), f"target-{target}", "listening on")
        agent = ["--server", self.server.url, "agent", "--env", env, "--dir", str(dir)]
        self.spawn([f"--as={target}", *agent, "--reload-url", f"{t.url}/reload"], f"agent-{target}", "following")
        return dir

    def spawn(self, args: List[str], name: str, marker: str) -> Proc:
        p = Proc([str(PD), *args], self.root / f"{name}.log", marker, self.env)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A fresh world; this process's environment and directory point the API at its home."""
    assert PD.exists(), f"{PD} is missing: build it with `cargo build --bins` (scripts/test does)"
    w = World(tmp_path)
    for key in [k for k in os.environ if k.startswith("PD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PD_HOME", str(w.home))
    monkeypatch.chdir(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def net(world: World) -> World:
    """A world with `pd serve` and an agent per target key, all following."""
    world.serve()
    for env in ("dev", "staging", "prod"):
        world.agent(f"{env}-1", env)
    return world
