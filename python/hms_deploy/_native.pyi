"""Types of the compiled part of hms_deploy (python/src/lib.rs)."""

from typing import Any, Callable, Dict, List, Optional

def run(args: List[str], on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Optional[str]:
    """Run `pd ARGS...` in this process; its --json result as JSON text, or None."""

def verify(path: str, no_artifacts: bool = False) -> str:
    """Verify an exported ledger as `pd-verify FILE` does; the report as JSON text."""

class PolicyDeployError(Exception):
    """Anything pd refused or could not do."""

    exit_code: int
    """The exit code `pd` would have: 1 refused or a check failed, 2 usage or environment."""

class RefusedError(PolicyDeployError):
    """A ledger rule refused the action; the refused step wrote nothing."""

class NotApprovedError(RefusedError):
    """The package lacks the approvals a deployment needs."""

    version: str
    approvals: int
    required: int

class AdoptionError(PolicyDeployError):
    """Targets of an environment did not all load the version."""

    env: str
    version: str
    failed: Dict[str, str]
    """Targets that reported a failed load, with their error."""
    missing: List[str]
    """Targets that did not answer in time."""
    rolled_back_to: Optional[str]

class AdoptionTimeoutError(AdoptionError):
    """Targets did not acknowledge the version before the timeout."""

class TargetFailedError(AdoptionError):
    """A target reported that loading the version failed."""

class VerificationError(PolicyDeployError):
    """A signature, hash, chain or export check failed."""

    seq: Optional[int]
    """The bad entry's seq, when `verify` found one; else None."""

class UnreachableError(PolicyDeployError):
    """The pd server or artifact store could not be reached, or failed the request (a
    missing token, say)."""

class UsageError(PolicyDeployError):
    """Bad arguments or environment: no home, no key, no such file."""
