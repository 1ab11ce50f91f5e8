"""The package ships its types (py.typed, _native.pyi): mypy --strict accepts correct use of
the API and the package itself, and rejects a wrong call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = '''
from typing import Any, Dict, List
import hms_deploy
from hms_deploy import deploy_policy

deploy_id: str = deploy_policy(file_path="governance/llm_policy.yaml", reason="r", timeout=1.5)
entries: List[Dict[str, Any]] = hms_deploy.log()
report: hms_deploy.Report = hms_deploy.verify("audit.pdx")
n: int = report.entries
try:
    hms_deploy.rollback("prod", reason="error spike")
except hms_deploy.NotApprovedError as e:
    approvals: int = e.approvals
except hms_deploy.AdoptionError as e:
    missing: List[str] = e.missing
'''

BAD = '''
from hms_deploy import deploy_policy
n: int = deploy_policy(file_path="governance/llm_policy.yaml", reason=42)
'''


def mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)


def test_mypy_strict_accepts_the_api_and_rejects_a_wrong_call(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)

    for args in (["good.py"], ["-p", "hms_deploy"]):
        good = mypy(tmp_path, *args)
        assert good.returncode == 0, good.stdout

    bad = mypy(tmp_path, "bad.py")
    assert bad.returncode == 1
    assert 'Argument "reason" to "deploy_policy" has incompatible type "int"; expected "str"' in bad.stdout
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in bad.stdout
