"""Deploy governance policies from Python with pd.

    from hms_deploy import deploy_policy
    deploy_id = deploy_policy(file_path="governance/llm_policy.yaml",
                              reason="Enable OpenAI GPT for nsf_research_staff")
    print(deploy_id)   # -> 'PD-23.1.0'

Every function runs the same Rust code as the ``pd`` command, in this process: packaging,
signing, the ledger's rules and verification are not reimplemented here. Defaults follow the
CLI: the home is ``PD_HOME`` or ``.pd``, the acting key ``PD_ACTOR`` or the home's configured
actor, the server ``PD_SERVER`` or the home's ``server`` setting (else the home's own ledger).
Failures raise a :class:`PolicyDeployError` subclass whose message is the CLI's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import _native
from ._native import (
    AdoptionError,
    AdoptionTimeoutError,
    NotApprovedError,
    PolicyDeployError,
    RefusedError,
    TargetFailedError,
    UnreachableError,
    UsageError,
    VerificationError,
)

__all__ = [
    "deploy_policy",
    "package",
    "approve",
    "rollback",
    "state",
    "log",
    "export",
    "verify",
    "Report",
    "PolicyDeployError",
    "RefusedError",
    "NotApprovedError",
    "AdoptionError",
    "AdoptionTimeoutError",
    "TargetFailedError",
    "VerificationError",
    "UnreachableError",
    "UsageError",
]

PathLike = Union[str, "os.PathLike[str]"]
Timeout = Union[float, timedelta]
Progress = Callable[[Dict[str, Any]], None]


def deploy_policy(
    file_path: PathLike,
    reason: str,
    *,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
    actor: Optional[str] = None,
    until: Optional[str] = None,
    wait: bool = True,
    timeout: Optional[Timeout] = None,
    on_progress: Optional[Progress] = None,
) -> str:
    """Deploy a policy file env by env (dev -> staging -> prod) and return its id, 'PD-x.y.z'.

    Like ``pd ledger deploy FILE --reason REASON``: finds the package holding exactly the file
    (or packages it now), checks its hashes and OpenPGP signature, then pushes it to each
    environment in promotion order and waits until every target there acknowledged it.
    ``file_path`` may also be a version such as 'PD-23.1.0' to promote it further.

    until: stop after this environment. wait=False: push one environment and return.
    timeout: seconds (or a timedelta) to wait for each environment; default 10 minutes.
    on_progress: called with each step as a dict: {"event": "packaged" | "pushed" | "wave" |
    "acks" | "baking" | "gate" | "bake" | "adopted" | "rolled back" | "converged", "env": ...,
    "version": ..., ...}.

    Raises NotApprovedError (the package needs an approver's `pd ledger approve`; its
    ``version`` attribute names it), AdoptionTimeoutError or TargetFailedError (targets did not
    all load it), RefusedError (another rule), VerificationError, UnreachableError, UsageError.
    """
    args = ["ledger", "deploy", f"--reason={reason}"]
    if until is not None:
        args.append(f"--until={until}")
    args += _waiting(wait, timeout)
    result = _run(_globals(home, server, actor) + args + ["--", os.fspath(file_path)], on_progress)
    return str(result["version"])


def package(
    files: Union[PathLike, Sequence[PathLike]],
    reason: str,
    *,
    version: Optional[str] = None,
    bump: Optional[str] = None,
    name: Optional[str] = None,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
    actor: Optional[str] = None,
) -> str:
    """Build, sign and record a package of policy files; return its version, 'PD-x.y.z'.

    Like ``pd ledger package FILES --reason REASON``. version: an exact version instead of
    the next one; bump: "major", "minor" (default) or "patch"; name: the policy name.
    """
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    args = ["ledger", "package", f"--reason={reason}"]
    if version is not None:
        args.append(f"--version={version}")
    if bump is not None:
        args.append(f"--bump={bump}")
    if name is not None:
        args.append(f"--name={name}")
    result = _run(_globals(home, server, actor) + args + ["--"] + [os.fspath(p) for p in paths])
    return str(result["version"])


def approve(
    version: str,
    reason: str,
    *,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
    actor: Optional[str] = None,
) -> Dict[str, Any]:
    """Approve a package as the acting key (an approver who did not author it).

    Like ``pd ledger approve VERSION --reason REASON``. Returns {"version", "approver", "seq",
    "approvals", "required"}.
    """
    args = ["ledger", "approve", f"--reason={reason}", "--", version]
    result: Dict[str, Any] = _run(_globals(home, server, actor) + args)
    return result


def rollback(
    env: str,
    to: Optional[str] = None,
    *,
    reason: str,
    wait: bool = True,
    timeout: Optional[Timeout] = None,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
    actor: Optional[str] = None,
    on_progress: Optional[Progress] = None,
) -> str:
    """Make an earlier version desired again in one environment; return that version.

    Like ``pd ledger rollback ENV --reason REASON`` (``to``: the version, default the one
    before the current). With a server it waits until the targets run it again, unless
    wait=False.
    """
    args = ["ledger", "rollback", f"--reason={reason}"]
    if to is not None:
        args.append(f"--to={to}")
    args += _waiting(wait, timeout)
    result = _run(_globals(home, server, actor) + args + ["--", env], on_progress)
    return str(result["version"])


def state(
    env: Optional[str] = None,
    *,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
) -> Dict[str, Any]:
    """The state of every environment (or one), folded from the ledger, as ``pd state --json``."""
    args = ["state"] + ([] if env is None else ["--", env])
    result: Dict[str, Any] = _run(_globals(home, server, None) + args)
    return result


def log(*, home: Optional[PathLike] = None, server: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every ledger entry (checkpoints included), oldest first, as ``pd ledger log --all --json``."""
    entries: List[Dict[str, Any]] = _run(_globals(home, server, None) + ["ledger", "log", "--all"])
    return entries


def export(
    path: PathLike,
    with_artifacts: bool = False,
    *,
    home: Optional[PathLike] = None,
    server: Optional[str] = None,
    actor: Optional[str] = None,
) -> Dict[str, Any]:
    """Write the whole ledger with a head signed by the acting key to ``path``, for
    :func:`verify` or ``pd-verify``. with_artifacts: include every package tarball.
    Returns {"file", "entries", "artifacts", "bytes", "head"}."""
    args = ["ledger", "export"] + (["--with-artifacts"] if with_artifacts else [])
    result: Dict[str, Any] = _run(_globals(home, server, actor) + args + ["--", os.fspath(path)])
    return result


@dataclass(frozen=True)
class Report:
    """What a passing :func:`verify` established."""

    ledger_id: str
    entries: int
    head: str
    head_signed_by: str
    artifacts_checked: int
    extends: Optional[Dict[str, Any]]
    envs: Dict[str, Any]
    packages: List[Dict[str, Any]]


def verify(path: PathLike, *, no_artifacts: bool = False) -> Report:
    """Replay an exported ledger offline as ``pd-verify FILE`` does: encoding, chain, Ed25519
    signatures, every rule, the signed head and the artifacts. An export of entries only is
    refused unless ``no_artifacts`` accepts it (``pd-verify --no-artifacts``).

    Raises VerificationError with pd-verify's message, naming the first thing wrong (``seq``
    is the bad entry's, if one is), UsageError if the file cannot be read.
    """
    report = json.loads(_native.verify(os.fspath(path), no_artifacts))
    return Report(**{f.name: report[f.name] for f in dataclasses.fields(Report)})


def _globals(home: Optional[PathLike], server: Optional[str], actor: Optional[str]) -> List[str]:
    args = []
    if home is not None:
        args.append(f"--home={os.fspath(home)}")
    if server is not None:
        args.append(f"--server={server}")
    if actor is not None:
        args.append(f"--as={actor}")
    return args


def _run(args: List[str], on_progress: Optional[Progress] = None) -> Any:
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be callable, not {type(on_progress).__name__}")
    out = _native.run(args, on_progress)
    return None if out is None else json.loads(out)


def _waiting(wait: bool, timeout: Optional[Timeout]) -> List[str]:
    """`--no-wait` and `--timeout=…ms` for a command that waits for targets."""
    args = [] if wait else ["--no-wait"]
    if timeout is not None:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {timeout!r}")
        args.append(f"--timeout={math.ceil(seconds * 1000)}ms")
    return args
