"""A `--policy-pack-config` file for the CrossGuard pack, from a stack's settings: what `edgefleet policy
--pack-config` writes so `pulumi preview --policy-pack policies` judges as `edgefleet policy` does.

Standard library only; imports rules and settings, as `policies.x` or, in the pack's own virtualenv, as `x`.
"""

from __future__ import annotations

from typing import Any, Mapping

if __package__:
    from .rules import RULES
    from .settings import Settings
else:
    from rules import RULES  # type: ignore[no-redef]
    from settings import Settings  # type: ignore[no-redef]


def crossguard_config(settings: Settings) -> dict[str, Any]:
    """A `--policy-pack-config` file for the CrossGuard pack: each rule's level and the settings it reads."""
    out: dict[str, Any] = {}
    for rule in RULES:
        entry: dict[str, Any] = {"enforcementLevel": settings.level(rule)}
        for key in rule.settings:
            value = getattr(settings, key)
            if value is not None:
                entry[key] = dict(value) if isinstance(value, Mapping) else value
        out[rule.name] = entry
    return out
