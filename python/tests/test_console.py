"""The web console in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium) against a real `pd serve`, agents and example targets: live fleet counts after
an ack and a rollback, the approval diff, inclusion proofs checked in the page (and a
tampered one caught), requests only to the page's own origin, and a screenshot of each view
under target/console-screenshots/."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple
import urllib.request
from urllib.parse import urlsplit

import pytest

from conftest import REPO, World

CHROMIUM = Path(os.environ.get("PD_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PD_CHROMEDRIVER", "/usr/bin/chromedriver"))
SHOTS = REPO / "target" / "console-screenshots"
INSTALL = "install Debian's chromium and chromium-driver with `scripts/install-test-tools` (as root)"

POLICY_1 = "allow:\n  - model: openai/gpt-4o\n    for: nsf_research_staff\n"
POLICY_2 = "allow:\n  - model: openai/gpt-4o\n    for: [nsf_research_staff, nsf_admins]\n  - model: openai/o3\n    for: nsf_admins\n"

#: How long the page may take to show what a CLI command just did.
LIVE_S = 2.0
#: How long agents may take to install and ack a version.
AGENT_S = 30.0

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait

    SELENIUM = ""
except ImportError as e:  # reported by the `browser` fixture as a failure, never a skip
    SELENIUM = f"selenium is not installed ({e}): run scripts/python-env"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, logging every request and console message."""
    if SELENIUM:
        pytest.fail(SELENIUM)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: {INSTALL}")
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                "--force-device-scale-factor=1", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server; in dev an agent `dev-1`, an agent `dev-3` whose target refuses PD-0.2.0 and a
    target key `dev-2` with no agent (the test acks for it); PD-0.1.0 pushed to dev, PD-0.2.0
    (a changed policy) packaged and waiting for its approval."""
    w = World(tmp_path_factory.mktemp("console"))
    for name in ("dev-2", "dev-3"):
        w.pd("key", "new", name, "--role", "target", "--env", "dev", "--generate-here", "--label", "region=eu")
    w.write("governance/llm_policy.yaml", POLICY_1)
    w.serve()
    w.agent("dev-1", "dev")
    w.agent("dev-3", "dev", refuse="PD-0.2.0")
    w.pd("ledger", "package", "governance/llm_policy.yaml", "--reason", "GPT-4o for research staff")
    w.pd("ledger", "approve", "PD-0.1.0", "--reason", "Approved in HITL", actor="carol")
    w.pd("ledger", "deploy", "PD-0.1.0", "--until", "dev", "--no-wait", "--reason", "first rollout")
    w.write("governance/llm_policy.yaml", POLICY_2)
    w.pd("ledger", "package", "governance/llm_policy.yaml", "--reason", "o3 for admins")
    yield w
    w.stop()


def url(w: World) -> str:
    assert w.server is not None
    return w.server.url


def wait(driver: Any, timeout: float, what: str, cond: Callable[[Any], Any]) -> Any:
    """WebDriverWait with a message that says what did not happen."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond, f"within {timeout}s: {what}")


def cell(driver: Any, env: str, set_: str) -> Dict[str, str]:
    """The fleet grid's cell as its data attributes and text, read in one script (the page
    redraws the grid on every event), or {} if not drawn yet."""
    script = """const el = document.querySelector(`td.cell[data-env="${arguments[0]}"][data-set="${arguments[1]}"]`);
                return el ? {...el.dataset, text: el.innerText} : {};"""
    found: Dict[str, str] = driver.execute_script(script, env, set_)
    return found


def dev_slot(**want: str) -> Callable[[Any], bool]:
    """A WebDriverWait condition: dev's llm_policy cell has these data attributes."""
    return lambda d: (lambda c: all(c.get(k) == v for k, v in want.items()))(cell(d, "dev", "llm_policy"))


def text_of(driver: Any, css: str) -> str:
    """The text of the first element `css` selects, read in one script; "" if none."""
    found: str = driver.execute_script("return document.querySelector(arguments[0])?.innerText ?? '';", css)
    return found


def shot(driver: Any, name: str) -> None:
    assert driver.save_screenshot(str(SHOTS / f"{name}.png")), name


def test_the_fleet_shows_versions_and_counts_and_follows_an_ack_and_a_rollback_live(browser: Any, fleet: World) -> None:
    browser.get(f"{url(fleet)}/#/fleet")
    wait(browser, AGENT_S, "both agents acked PD-0.1.0", dev_slot(loaded="2"))
    c = cell(browser, "dev", "llm_policy")
    assert (c["desired"], c["targets"], c["failed"]) == ("PD-0.1.0", "3", "0"), c
    assert "2/3 loaded" in c["text"] and "1 waiting" in c["text"], c["text"]

    fleet.pd("ledger", "ack", "PD-0.1.0", actor="dev-2")
    wait(browser, LIVE_S, "the fleet shows dev-2's ack", dev_slot(loaded="3"))
    assert "3/3 loaded" in cell(browser, "dev", "llm_policy")["text"]

    fleet.pd("ledger", "approve", "PD-0.2.0", "--reason", "Approved in HITL", actor="carol")
    fleet.pd("ledger", "deploy", "PD-0.2.0", "--until", "dev", "--no-wait", "--reason", "second rollout")
    wait(browser, AGENT_S, "dev-1 loaded PD-0.2.0 and dev-3 refused it", dev_slot(desired="PD-0.2.0", loaded="1", failed="1"))
    assert "1 failed" in cell(browser, "dev", "llm_policy")["text"]
    shot(browser, "fleet-dev-failing")

    browser.find_element(By.ID, "env-dev").click()
    row = wait(browser, LIVE_S, "dev's targets table", lambda d: text_of(d, 'tr[data-target="dev-3"]'))
    assert "failed" in row and "PD-0.2.0" in row and "region=eu" in row, row
    assert "this target refuses to load PD-0.2.0" in row, f"the failure text is shown: {row}"
    shot(browser, "fleet-dev-targets")

    browser.get(f"{url(fleet)}/#/fleet")
    wait(browser, LIVE_S, "the grid", dev_slot(desired="PD-0.2.0"))
    fleet.pd("ledger", "rollback", "dev", "--no-wait", "--reason", "error spike")
    wait(browser, LIVE_S, "the fleet shows the rollback to PD-0.1.0", dev_slot(desired="PD-0.1.0"))
    assert "rollback #" in cell(browser, "dev", "llm_policy")["text"]
    wait(browser, AGENT_S, "both agents run PD-0.1.0 again", dev_slot(loaded="2"))

    browser.get(f"{url(fleet)}/#/rollouts")
    step = wait(browser, LIVE_S, "the rollback in the timeline",
                lambda d: text_of(d, 'article[data-version="PD-0.1.0"] li.step.rollback'))
    assert "dev rolled back to PD-0.1.0 · error spike" in step, step
    shot(browser, "rollouts")

    browser.set_window_size(390, 844)
    try:
        browser.get(f"{url(fleet)}/#/fleet")
        wait(browser, LIVE_S, "the grid at phone width", dev_slot(desired="PD-0.1.0"))
        shot(browser, "fleet-phone")
        # The page fits the phone's width: wide tables scroll in their own box, not the page.
        widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
        assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"
    finally:
        browser.set_window_size(1280, 800)


def test_the_approval_view_shows_the_changed_lines_and_the_command(browser: Any, tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.write("governance/llm_policy.yaml", POLICY_1)
        w.serve()
        w.pd("ledger", "package", "governance/llm_policy.yaml", "--reason", "GPT-4o for research staff")
        w.pd("ledger", "approve", "PD-0.1.0", "--reason", "ok", actor="carol")
        w.pd("ledger", "deploy", "PD-0.1.0", "--until", "dev", "--no-wait", "--reason", "first")
        w.write("governance/llm_policy.yaml", POLICY_2)
        w.pd("ledger", "package", "governance/llm_policy.yaml", "--reason", "o3 for admins")

        browser.get(f"{url(w)}/#/approvals")
        card = wait(browser, LIVE_S, "PD-0.2.0's card", lambda d: d.find_elements(By.CSS_SELECTOR, 'article[data-version="PD-0.2.0"]'))[0]
        assert not browser.find_elements(By.CSS_SELECTOR, 'article[data-version="PD-0.1.0"]'), "PD-0.1.0 is approved"
        against = card.find_element(By.CSS_SELECTOR, 'section[data-base="PD-0.1.0"]')
        wait(browser, LIVE_S, "the diff against PD-0.1.0", lambda d: against.find_elements(By.CSS_SELECTOR, "table.diff"))
        added = [r.text.strip() for r in against.find_elements(By.CSS_SELECTOR, "table.diff tr.add .line")]
        removed = [r.text.strip() for r in against.find_elements(By.CSS_SELECTOR, "table.diff tr.del .line")]
        assert added == ["for: [nsf_research_staff, nsf_admins]", "- model: openai/o3", "for: nsf_admins"], added
        assert removed == ["for: nsf_research_staff"], removed
        assert "what dev runs now" in against.text and "modified · +3 −1" in against.text, against.text
        # staging and prod run nothing: there the whole file is added.
        fresh = card.find_element(By.CSS_SELECTOR, 'section[data-base="nothing"]')
        wait(browser, LIVE_S, "the diff against nothing", lambda d: fresh.find_elements(By.CSS_SELECTOR, "table.diff"))
        assert "staging, prod" in fresh.text and "added · +5 −0" in fresh.text, fresh.text
        command = card.find_element(By.CSS_SELECTOR, "code.approve-command").text
        assert command == 'pd ledger approve PD-0.2.0 --reason "…"'
        assert "o3 for admins" in card.text and "YAML/JSON/TOML parsed" in card.text
        shot(browser, "approvals")
    finally:
        w.stop()


def seq_of(w: World, kind: str, version: str) -> int:
    return next(e["seq"] for e in w.log() if e["kind"] == kind and e["body"][kind].get("version") == version)


def verdict(driver: Any, timeout: float = 10.0) -> WebElement:
    """The proof section once it reached a verdict."""
    return wait(driver, timeout, "the page's verdict on the inclusion proof",
                lambda d: [p for p in d.find_elements(By.ID, "proof") if p.get_attribute("data-verdict") in ("verified", "failed")])[0]


def test_an_entrys_inclusion_proof_verifies_in_the_page(browser: Any, fleet: World) -> None:
    push = seq_of(fleet, "push", "PD-0.1.0")
    browser.get(f"{url(fleet)}/#/audit/{push}")
    proof = verdict(browser)
    checks = proof.find_elements(By.CSS_SELECTOR, "ul.checks li")
    assert proof.get_attribute("data-verdict") == "verified", proof.text
    assert len(checks) == 5 and all(c.get_attribute("class") == "ok" for c in checks), proof.text
    assert "VERIFIED in this browser" in proof.text and "Ed25519 note signature" in proof.text
    entry = next(e for e in fleet.log() if e["seq"] == push)
    assert browser.find_element(By.ID, "entry-id").text == entry["id"]
    assert browser.find_element(By.ID, "custody").text.startswith("holder"), "admin's own key, made by pd init"
    shot(browser, "audit-entry")


def test_the_genesis_entry_more_than_one_blake3_chunk_long_verifies_in_the_page(browser: Any, fleet: World) -> None:
    """The page's BLAKE3 joins chunks into parent nodes only past 1 KiB: genesis is longer."""
    with urllib.request.urlopen(f"{url(fleet)}/v1/proofs/inclusion?seq=0", timeout=30) as r:
        size = len(json.load(r)["entry"]) // 2
    assert size > 1024, f"genesis is {size} bytes: two chunks or more"
    browser.get(f"{url(fleet)}/#/audit/0")
    proof = verdict(browser)
    assert proof.get_attribute("data-verdict") == "verified", proof.text


class Tamper(http.server.BaseHTTPRequestHandler):
    """Forwards every GET to the real server; flips one byte of each inclusion proof, or
    (`what = "body"`) shows version PD-0.1.0 as PD-0.9.0 in every entry it passes on."""

    upstream: Tuple[str, int] = ("127.0.0.1", 0)
    what = "proof"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        skip = {"host", "connection", "accept-encoding"}
        conn.request("GET", self.path, headers={k: v for k, v in self.headers.items() if k.lower() not in skip})
        r = conn.getresponse()
        drop = {"transfer-encoding", "content-length", "connection"}
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in drop:
                self.send_header(k, v)
        if self.path.startswith("/v1/events"):
            self.end_headers()
            while chunk := r.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
            return
        body = r.read()
        if self.what == "body" and self.path.startswith("/v1/entries") and r.status == 200:
            body = body.replace(b'"PD-0.1.0"', b'"PD-0.9.0"')
        if self.what == "proof" and self.path.startswith("/v1/proofs/inclusion") and r.status == 200:
            at = body.index(b'"hashes":["') + len(b'"hashes":["')
            body = body[:at] + (b"1" if body[at:at + 1] == b"0" else b"0") + body[at + 1:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def tampered_verdict(browser: Any, fleet: World, what: str) -> Tuple[str, str, List[str]]:
    """The verdict, text and failed checks of the PD-0.1.0 push's proof, seen through Tamper."""
    up = urlsplit(url(fleet))
    handler = type("Handler", (Tamper,), {"upstream": (up.hostname, up.port), "what": what})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        push = seq_of(fleet, "push", "PD-0.1.0")
        browser.get(f"http://127.0.0.1:{proxy.server_address[1]}/#/audit/{push}")
        proof = verdict(browser)
        failed = [c.text for c in proof.find_elements(By.CSS_SELECTOR, "ul.checks li.bad")]
        if what == "proof":
            shot(browser, "audit-entry-tampered")
        return proof.get_attribute("data-verdict"), proof.text, failed
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_tampered_proof_is_shown_as_failed(browser: Any, fleet: World) -> None:
    verdict_, text, failed = tampered_verdict(browser, fleet, "proof")
    assert verdict_ == "failed", text
    assert "PROOF FAILED" in text
    assert len(failed) == 1 and "SHA-256 audit path" in failed[0], failed


def test_a_body_the_server_changed_is_not_shown_as_verified(browser: Any, fleet: World) -> None:
    verdict_, text, failed = tampered_verdict(browser, fleet, "body")
    assert verdict_ == "failed", text
    assert len(failed) == 1 and "fields and body are the ones shown" in failed[0], failed


def requests_made(driver: Any) -> List[str]:
    """URLs the page requested since the last call (Chrome's performance log)."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            out.append(msg["params"]["request"]["url"])
    return out


def test_every_view_loads_only_from_the_servers_origin(browser: Any, fleet: World) -> None:
    origin = url(fleet)
    browser.get_log("performance")
    browser.get_log("browser")
    views = {
        "fleet": ("#/fleet", 'td.cell[data-env="dev"]'),
        "rollouts": ("#/rollouts", 'article[data-version="PD-0.1.0"] li.step.push'),
        "approvals": ("#/approvals", "section.view-head, header.view-head"),
        "audit": ("#/audit", "table#entries tbody tr"),
    }
    for name, (hash_, ready) in views.items():
        browser.get(f"{origin}/{hash_}")
        wait(browser, 10, f"the {name} view", lambda d: d.find_elements(By.CSS_SELECTOR, ready))
        shot(browser, f"view-{name}")
    browser.get(f"{origin}/#/rollouts")
    wait(browser, 10, "the rollouts view", lambda d: d.find_elements(By.CSS_SELECTOR, 'article[data-version="PD-0.1.0"]'))
    browser.find_element(By.ID, "theme").click()
    shot(browser, "rollouts-dark")

    urls = requests_made(browser)
    assert any(u.endswith("/v1/fleet") for u in urls) and any("/console/app.js" in u for u in urls), urls
    # data: URLs (Chromium's own date-picker icon) are no request at all.
    foreign = [u for u in urls if not u.startswith((origin + "/", "data:"))]
    assert foreign == [], f"requests left the page's origin: {foreign}"
    problems = [m["message"] for m in browser.get_log("browser")
                if m["level"] == "SEVERE" and ("Content Security Policy" in m["message"] or "Uncaught" in m["message"])]
    assert problems == [], problems


def test_the_page_asks_for_the_token_when_the_api_needs_one(browser: Any, tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.server = w.spawn(["serve", "--listen", "127.0.0.1:0", "--require-token", "s3cret"], "serve", "listening on")
        browser.get(f"{w.server.url}/#/fleet")
        dialog = wait(browser, LIVE_S, "the token dialog", lambda d: [x for x in d.find_elements(By.ID, "token") if x.is_displayed()])[0]
        field = dialog.find_element(By.NAME, "token")
        field.send_keys("wrong\n")
        wait(browser, LIVE_S, "the refusal", lambda d: dialog.find_element(By.CLASS_NAME, "wrong").is_displayed())
        field.send_keys("s3cret\n")
        wait(browser, LIVE_S, "the fleet behind the token", lambda d: d.find_elements(By.CSS_SELECTOR, "main .notice, #fleet-grid"))
        assert browser.execute_script("return sessionStorage.getItem('pd-token')") == "s3cret"
        assert browser.execute_script("return localStorage.getItem('pd-token')") is None
        browser.execute_script("sessionStorage.clear()")
    finally:
        w.stop()
