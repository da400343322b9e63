"""Waiting out Azure RBAC propagation in the providers that run right after the stack grants the deploying identity
its data-plane roles.

On a fresh stack the role assignments (Key Vault Crypto User, Storage Blob Data Contributor) are created moments
before SigningPublicKey and ModelArtifact run, and Azure documents that a new assignment can take up to about ten
minutes to take effect. Until then the data planes answer 403 with a code that says exactly that: Key Vault
`ForbiddenByRbac` (inner error of "Forbidden"), Storage `AuthorizationPermissionMismatch`. Only those are waited
out; any other 403 (a firewall, a policy, a wrong tenant) fails at once. The wait is bounded
(`EDGEFLEET_AZURE_RBAC_WAIT_SECONDS`, default 600) and ends in an error naming the role and what to do.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from edgefleet_agent.contract.errors import EdgefleetError

ROLE_FOR_CODE = {
    "ForbiddenByRbac": "Key Vault Crypto User on the vault",
    "AuthorizationPermissionMismatch": "Storage Blob Data Contributor on the storage account",
}
ENV = "EDGEFLEET_AZURE_RBAC_WAIT_SECONDS"
DEFAULT_TIMEOUT = 600.0

T = TypeVar("T")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _clock() -> float:
    return time.monotonic()


@dataclass
class PropagationWait:
    """How long, and how often, to try again. `sleep`/`clock` default to module functions tests can replace."""

    timeout: float = DEFAULT_TIMEOUT
    base_delay: float = 5.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = field(default=lambda s: _sleep(s), repr=False)
    clock: Callable[[], float] = field(default=lambda: _clock(), repr=False)

    @classmethod
    def from_env(cls) -> "PropagationWait":
        """The providers' wait: read in the provider's process, so `EDGEFLEET_AZURE_RBAC_WAIT_SECONDS=0 pulumi up`
        turns it off and CI with slow tenants can lengthen it."""
        text = os.environ.get(ENV, "").strip()
        if not text:
            return cls()
        try:
            timeout = float(text)
        except ValueError:
            raise EdgefleetError(
                ENV, f"{text!r} is not a number of seconds", f"unset it or set e.g. {ENV}={int(DEFAULT_TIMEOUT)}"
            ) from None
        return cls(timeout=max(0.0, timeout))

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base_delay * 2**attempt)
        return d / 2 + random.uniform(0, d / 2)


def pending_code(exc: BaseException) -> str | None:
    """The service's code if `exc` is a 403 meaning "the role assignment is not visible here yet", else None.

    Duck-typed: KeyVaultError carries `status`/`code`; azure-core's HttpResponseError `status_code`/`error_code`.
    """
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    code = getattr(exc, "code", None) or getattr(exc, "error_code", None)
    code = str(getattr(code, "value", code) or "")
    return code if status == 403 and code in ROLE_FOR_CODE else None


def until_granted(what: str, action: Callable[[], T], wait: PropagationWait | None = None) -> T:
    """Runs `action` until it stops failing with a propagation 403, for at most `wait.timeout` seconds.
    `action` must be safe to repeat (the providers' work is idempotent)."""
    wait = wait or PropagationWait.from_env()
    deadline = wait.clock() + wait.timeout
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:
            code = pending_code(exc)
            if code is None:
                raise
            left = deadline - wait.clock()
            if left <= 0:
                role = ROLE_FOR_CODE[code]
                raise EdgefleetError(
                    what,
                    f"still refused (HTTP 403 {code}) after waiting {wait.timeout:g}s for the deploying identity's "
                    f"role assignment ({role}) to take effect: {_first_line(exc)}",
                    f"the stack grants {role} to the identity running `pulumi up`; if it was just created, run `pulumi up` "
                    f"again in a few minutes (or wait longer: {ENV}=1200). Otherwise check that you are signed in as that "
                    "identity and that the assignment exists (`az role assignment list --assignee <your object id> --all`)",
                ) from None
            wait.sleep(min(left, wait.delay(attempt)))
            attempt += 1


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "problem", None) or getattr(exc, "message", None) or exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
