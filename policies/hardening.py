"""The hardening rules: model stores private and encrypted, registries hardened, signing keys not exportable,
device credentials fresh, IAM without wildcard actions.

Each rule checks edgefleet's own components (ModelStore and SigningKey outputs) here, then adds the part each
registered platform contributes (`PARTS` in policies/<platform>.py) in registry order, so a platform's resource
types and messages live in its own module. A rule is not applicable when neither found anything to check.

Standard library only; imports graph, engine, settings and platforms, as `policies.x` or, in the CrossGuard pack's
own virtualenv, as `x`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

if __package__:
    from . import platforms
    from .engine import Finding, NotApplicable
    from .graph import KEY, STORE, Graph, dig, is_unknown
    from .settings import Settings
else:
    import platforms  # type: ignore[no-redef]
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import KEY, STORE, Graph, dig, is_unknown  # type: ignore[no-redef]
    from settings import Settings  # type: ignore[no-redef]

STORE_RULE = "store-private-encrypted"
REGISTRY_RULE = "registry-hardened"
SIGNING_KEY_RULE = "signing-key-not-exportable"
DEVICE_CREDENTIALS_RULE = "device-credentials-fresh"
IAM_RULE = "iam-no-wildcard-actions"


@dataclass(frozen=True)
class Parts:
    """What the platforms' parts of one rule found."""

    findings: list[Finding]
    checked: bool  # some platform declares something its part checks
    reasons: list[str]  # why each of the other parts had nothing to check


def platform_parts(rule: str, g: Graph, s: Settings) -> Parts:
    findings: list[Finding] = []
    checked, reasons = False, []
    for _name, module in platforms.modules():
        part = module.PARTS.get(rule)
        if part is None:
            continue
        try:
            found = list(part(g, s))
        except NotApplicable as exc:
            reasons.append(str(exc))
            continue
        checked = True
        findings += found
    return Parts(findings, checked, reasons)


def check_store(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    stores = g.of_type(STORE)
    for st in stores:
        if platforms.exempt(st, s):
            continue
        found = True
        out = st.get("outputs") or {}
        for key, what in (("encrypted", "encrypted at rest"), ("publicAccessBlocked", "blocked from public access")):
            if out.get(key) is False:
                yield Finding(f"model store {st['name']!r} ({dig(st, 'inputs', 'platform')}) is not {what}", st["urn"])
            elif is_unknown(out.get(key)):
                yield Finding(f"model store {st['name']!r}: {key} not known before deploy", st["urn"], unverified=True)
    parts = platform_parts(STORE_RULE, g, s)
    yield from parts.findings
    if not (found or parts.checked):
        raise NotApplicable(
            "only local-platform stores (a directory on this machine; checked when policy.production is true)"
            if stores
            else "the stack declares no model stores"
        )


def check_registry(g: Graph, s: Settings) -> Iterator[Finding]:
    parts = platform_parts(REGISTRY_RULE, g, s)
    if not parts.checked:
        raise NotApplicable("no ECR repositories or Azure container registries (the local fleet runs the agent from source)")
    yield from parts.findings


def check_signing_key(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    keys = g.of_type(KEY)
    for k in keys:
        if platforms.exempt(k, s):
            continue
        found = True
        exportable = dig(k, "outputs", "exportable")
        if exportable is True:
            yield Finding(
                f"signing key {k['name']!r} ({dig(k, 'inputs', 'platform')}) is exportable: its private half can leave the key store",
                k["urn"],
            )
        elif is_unknown(exportable):
            yield Finding(f"signing key {k['name']!r}: exportability not known before deploy", k["urn"], unverified=True)
    parts = platform_parts(SIGNING_KEY_RULE, g, s)
    yield from parts.findings
    if not (found or parts.checked):
        raise NotApplicable(
            "only local-platform keys (a key file on this machine; checked when policy.production is true)"
            if keys
            else "the stack declares no signing keys"
        )


def check_device_credentials(g: Graph, s: Settings) -> Iterator[Finding]:
    """Credentials devices download models with that end on a fixed date: after it, every new model fails on every
    device while the old one keeps serving, so nothing looks wrong until a rollout stalls."""
    parts = platform_parts(DEVICE_CREDENTIALS_RULE, g, s)
    if not parts.checked:
        raise NotApplicable("; ".join(parts.reasons) or "no platform of this stack gives devices credentials that expire")
    yield from parts.findings


def check_iam(g: Graph, s: Settings) -> Iterator[Finding]:
    parts = platform_parts(IAM_RULE, g, s)
    if not parts.checked:
        raise NotApplicable("the stack declares no IAM, IoT, KMS key or resource policies")
    yield from parts.findings
