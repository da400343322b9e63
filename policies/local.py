"""The local platform's part of the rules: what an `edgefleet:local` section sets, and its sandbox exemption.

The local platform is a one-machine sandbox (a directory store, a key file): its stores and keys are exempt from
the hardening rules unless the stack is production, and it declares no cloud resources for them to check.

Named by components/registry.py (`policies="policies.local"`); policies/platforms.py describes what such a module
provides. Standard library only; imports settings, as `policies.settings` or, in the CrossGuard pack's own
virtualenv, as `settings`.
"""

from __future__ import annotations

from typing import Any, Mapping

if __package__:
    from .settings import Settings
else:
    from settings import Settings  # type: ignore[no-redef]

AGENT_VERSION = "0.5.0"  # the agent in this checkout, which the local fleet runs (edgefleet_agent.__version__)


MEMBERSHIP_AT_LOAD = True  # components/local/checks.py computes each ring's devices and refuses an empty ring


def stack_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"agent_versions": {"local": AGENT_VERSION}}


def exempt(s: Settings) -> bool:
    return not s.production


PARTS: dict[str, Any] = {}
