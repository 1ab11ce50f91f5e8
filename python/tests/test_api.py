"""The Python API against a real `pd serve` with agents on loopback: the seed's snippet
verbatim, every exception class, and ids that match `pd ledger log`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

import hms_deploy
from hms_deploy import deploy_policy

from conftest import PD, POLICY, REPO, World

def readme_python() -> str:
    """The README's one Python block, which this module runs verbatim."""
    text = (REPO / "README.md").read_text()
    blocks = text.split("```python\n")
    assert len(blocks) == 2, "the README has one Python block"
    return blocks[1].split("```")[0]


SEED = readme_python()


def cli_error(w: World, *args: str, actor: str = "") -> str:
    """The message `pd` prints for a failing command (without `error: `)."""
    out = w.run(*args, actor=actor or None)
    assert out.returncode != 0, out.stdout
    return out.stderr.strip().removeprefix("error: ")


def bodies(log: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [dict(e["body"][kind], actor=e["actor"]) for e in log if e["kind"] == kind]


def pushes(log: List[Dict[str, Any]], version: str) -> List[str]:
    return [b["env"] for b in bodies(log, "push") if b["version"] == version]


def test_the_seed_snippet_runs_verbatim_and_deploys_everywhere(net: World) -> None:
    net.pd("ledger", "package", "governance/llm_policy.yaml", "--version", "23.1.0", "--reason", "GPT for NSF")
    net.pd("ledger", "approve", "PD-23.1.0", "--reason", "Approved in HITL", actor="carol")
    script = net.write("deploy_llm_policy.py", SEED)

    # A separate interpreter in the world's directory: defaults come from .pd/config.toml.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    out = subprocess.run([sys.executable, str(script)], cwd=net.root, env=env, capture_output=True, text=True)

    assert out.returncode == 0, out.stderr
    assert out.stdout == "PD-23.1.0\n"
    assert pushes(net.log(), "PD-23.1.0") == ["dev", "staging", "prod"]
    acks = [(b["actor"], b["version"], b["outcome"]) for b in bodies(net.log(), "ack")]
    assert acks == [(f"{env}-1", "PD-23.1.0", "loaded") for env in ("dev", "staging", "prod")]
    for target in ("dev-1", "staging-1", "prod-1"):
        assert (net.root / "agents" / target / "current" / "llm_policy.yaml").read_text() == POLICY


def test_deploy_packages_a_new_file_and_returns_the_id_pd_ledger_log_records(
    net: World, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(hms_deploy.NotApprovedError) as refused:
        deploy_policy("governance/llm_policy.yaml", "first rollout")
    version = refused.value.version
    assert (refused.value.approvals, refused.value.required, refused.value.exit_code) == (0, 1, 1)
    assert pushes(net.log(), version) == []

    assert hms_deploy.approve(version, "Approved in HITL", actor="carol")["approvals"] == 1
    events: List[Dict[str, Any]] = []
    deploy_id = deploy_policy("governance/llm_policy.yaml", "first rollout", on_progress=events.append)

    assert deploy_id == version
    log = net.log()
    packaged = [b["version"] for b in bodies(log, "package")]
    assert packaged == [deploy_id]
    assert pushes(log, deploy_id) == ["dev", "staging", "prod"]
    assert hms_deploy.log()[: len(log)] == log  # (the server may have checkpointed since)
    assert [(e["event"], e.get("env")) for e in events if e["event"] != "acks"] == [
        ("packaged", None),
        ("pushed", "dev"),
        ("adopted", "dev"),
        ("pushed", "staging"),
        ("adopted", "staging"),
        ("pushed", "prod"),
        ("adopted", "prod"),
    ]
    assert all(env["sets"][0]["desired"] == deploy_id and env["sets"][0]["waiting"] == [] for env in hms_deploy.state()["envs"])
    assert capfd.readouterr().out == "", "the API prints nothing"


def test_not_approved_carries_the_cli_message_and_nothing_is_pushed(world: World) -> None:
    version = hms_deploy.package(world.policy, "draft", version="1.0.0")
    before = world.log()
    with pytest.raises(hms_deploy.NotApprovedError) as refused:
        deploy_policy(world.policy, "too early")
    assert isinstance(refused.value, hms_deploy.RefusedError)
    assert str(refused.value) == cli_error(world, "ledger", "deploy", str(world.policy), "--reason", "too early")
    assert refused.value.version == version == "PD-1.0.0"
    assert world.log() == before


def test_a_failing_target_raises_target_failed_and_rollback_restores(net: World) -> None:
    net.pd("ledger", "package", str(net.policy), "--version", "1.0.0", "--reason", "v1")
    net.pd("ledger", "approve", "PD-1.0.0", "--reason", "ok", actor="carol")
    assert deploy_policy(net.policy, "v1", until="dev") == "PD-1.0.0"
    net.write("governance/llm_policy.yaml", POLICY + "  - model: broken\n")
    net.pd("ledger", "package", str(net.policy), "--version", "2.0.0", "--reason", "v2")
    net.pd("ledger", "approve", "PD-2.0.0", "--reason", "ok", actor="carol")
    net.pd("key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here")
    net.agent("dev-2", "dev", refuse="PD-2.0.0")

    with pytest.raises(hms_deploy.TargetFailedError) as failed:
        deploy_policy(net.policy, "v2")
    e = failed.value
    assert isinstance(e, hms_deploy.AdoptionError)
    assert (e.env, e.version, e.rolled_back_to, e.exit_code) == ("dev", "PD-2.0.0", None, 1)
    assert list(e.failed) == ["dev-2"]
    assert "dev-2 failed" in str(e)

    assert hms_deploy.rollback("dev", reason="error spike") == "PD-1.0.0"
    dev = hms_deploy.state("dev")["envs"][0]["sets"][0]
    assert (dev["desired"], dev["via"], dev["waiting"]) == ("PD-1.0.0", "rollback", [])


def test_targets_that_never_answer_raise_adoption_timeout(net: World) -> None:
    net.pd("key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here")
    net.pd("ledger", "package", str(net.policy), "--version", "1.0.0", "--reason", "v1")
    net.pd("ledger", "approve", "PD-1.0.0", "--reason", "ok", actor="carol")
    with pytest.raises(hms_deploy.AdoptionTimeoutError) as late:
        deploy_policy(net.policy, "v1", timeout=3)
    assert (late.value.env, late.value.missing, late.value.failed) == ("dev", ["dev-2"], {})
    assert "no answer yet from dev-2" in str(late.value)
    assert pushes(net.log(), "PD-1.0.0") == ["dev"]


def test_refusals_and_usage_errors_say_what_the_cli_says(world: World) -> None:
    # A misspelt environment is refused before the new file is packaged.
    with pytest.raises(hms_deploy.RefusedError, match='unknown environment "prdo"'):
        deploy_policy(world.policy, "v1", until="prdo")
    assert [e["kind"] for e in world.log()].count("package") == 0

    version = hms_deploy.package([world.policy], "v1")
    with pytest.raises(hms_deploy.RefusedError) as own:
        hms_deploy.approve(version, "mine")
    assert str(own.value) == cli_error(world, "ledger", "approve", version, "--reason", "mine")
    assert own.value.exit_code == 1

    with pytest.raises(hms_deploy.UsageError) as missing:
        deploy_policy("governance/nope.yaml", "x")
    assert "neither a file nor a version" in str(missing.value)
    assert missing.value.exit_code == 2

    with pytest.raises(hms_deploy.UsageError) as no_home:
        hms_deploy.state(home=world.root / "nowhere")
    assert str(no_home.value) == cli_error(world, "--home", str(world.root / "nowhere"), "state")

    with pytest.raises(hms_deploy.UnreachableError) as down:
        hms_deploy.state(server="http://127.0.0.1:9")
    assert "cannot reach the pd server at http://127.0.0.1:9" in str(down.value)
    assert down.value.exit_code == 2
    with pytest.raises(hms_deploy.UsageError, match="^invalid value 'PD-1.x' for '<VERSION>'"):
        hms_deploy.approve("PD-1.x", "x")
    with pytest.raises(ValueError):
        deploy_policy(world.policy, "x", timeout=-1)


def test_export_and_verify_and_a_tampered_export_fails(world: World) -> None:
    version = hms_deploy.package(world.policy, "v1")
    hms_deploy.approve(version, "ok", actor="carol")
    summary = hms_deploy.export("audit.pdx", with_artifacts=True)
    assert (summary["entries"], summary["artifacts"]) == (len(world.log()), 1)

    report = hms_deploy.verify("audit.pdx")
    assert isinstance(report, hms_deploy.Report)
    assert (report.entries, report.artifacts_checked, report.head_signed_by) == (len(world.log()), 1, "admin")
    assert [p["version"] for p in report.packages] == [version]

    data = bytearray(Path("audit.pdx").read_bytes())
    data[len(data) // 2] ^= 1
    Path("tampered.pdx").write_bytes(bytes(data))
    with pytest.raises(hms_deploy.VerificationError) as bad:
        hms_deploy.verify("tampered.pdx")
    cli = subprocess.run([str(PD.parent / "pd-verify"), "tampered.pdx"], capture_output=True, text=True)
    assert cli.returncode == bad.value.exit_code == 1
    assert cli.stderr.strip() == f"✘ {bad.value}"
    with pytest.raises(hms_deploy.UsageError):
        hms_deploy.verify("absent.pdx")


def test_the_gil_is_released_while_deploy_waits_for_targets(world: World) -> None:
    world.serve()
    hms_deploy.package(world.policy, "v1", version="1.0.0")
    hms_deploy.approve("PD-1.0.0", "ok", actor="carol")
    waiting = threading.Event()
    result: List[str] = []

    def on_progress(event: Dict[str, Any]) -> None:
        if event["event"] == "acks":
            waiting.set()

    def deploy() -> None:
        result.append(deploy_policy(world.policy, "v1", until="dev", timeout=120, on_progress=on_progress))

    t = threading.Thread(target=deploy)
    t.start()
    assert waiting.wait(timeout=60), "deploy never started waiting"
    # This thread runs Python and pd while the deploy thread waits inside Rust.
    assert hms_deploy.state("dev")["envs"][0]["sets"][0]["waiting"] == ["dev-1"]
    assert t.is_alive()
    world.agent("dev-1", "dev")
    t.join(timeout=60)
    assert result == ["PD-1.0.0"]


def test_ctrl_c_interrupts_a_wait_and_leaves_the_ledger_whole(world: World) -> None:
    world.serve()
    hms_deploy.package(world.policy, "v1", version="1.0.0")
    hms_deploy.approve("PD-1.0.0", "ok", actor="carol")
    script = world.write(
        "wait.py",
        "import signal, hms_deploy\n"
        "# A terminal's Ctrl-C handling, even if this test runs with SIGINT ignored (as `cmd &` does).\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def show(e):\n"
        "    print(e['event'], flush=True)\n"
        "hms_deploy.deploy_policy('governance/llm_policy.yaml', 'v1', timeout=600, on_progress=show)\n",
    )
    child = subprocess.Popen(
        [sys.executable, str(script)], cwd=world.root, env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "acks":
            break
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err
    log = world.log()
    assert pushes(log, "PD-1.0.0") == ["dev"] and bodies(log, "ack") == []
    world.pd("ledger", "export", "after.pdx")
    with pytest.raises(hms_deploy.VerificationError, match="--no-artifacts"):
        hms_deploy.verify("after.pdx")
    assert hms_deploy.verify("after.pdx", no_artifacts=True).entries == len(world.log())


def test_an_exception_in_on_progress_stops_the_deploy_unchanged(net: World) -> None:
    hms_deploy.package(net.policy, "v1", version="1.0.0")
    hms_deploy.approve("PD-1.0.0", "ok", actor="carol")

    class Stop(Exception):
        pass

    def stop_after_dev(event: Dict[str, Any]) -> None:
        if event["event"] == "adopted":
            raise Stop(event["env"])

    with pytest.raises(Stop, match="dev"):
        deploy_policy(net.policy, "v1", on_progress=stop_after_dev)
    assert pushes(net.log(), "PD-1.0.0") == ["dev"]
