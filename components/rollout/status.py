"""What `edgefleet status` shows, as pure data: one shape for every platform, built from what a platform read.

Each platform's status reader (components/<platform>/status.py) makes its calls, then hands the answers to these
functions; nothing here calls anything. The JSON keys below are a contract with scripts (`edgefleet status --json`):
keys are only ever added, never renamed or removed (docs/configuration.md, "edgefleet status --json").

A ring (`ring_row`):
    platform, rollout, ring        where it is
    desired                        the version the ring is set to ("<v> (rollback)" under a rollback order), or None
    devices                        devices the ring selects (None: not read)
    reported                       {version: devices} of devices that reported one (None as a key: no version)
    drift                          devices reporting a version other than desired
    drift_devices                  some of them by name (at most DRIFT_NAMES; cloud readers count, they do not list)
    silent                         devices in the ring with no report to count (never reported, or not connected)
    failures                       a few failure reasons devices reported
    held                           devices whose swap to the desired version waits: for their group's maintenance
                                   window, or an application's deferral (None: not read, or the platform's source
                                   does not carry it)
    held_reasons                   {reason: devices} of those, most held first (at most HELD_REASONS reasons)
    partial                        True when part of this row could not be read (see `gaps`); its numbers are
                                   then lower bounds or None, never a healthy zero
A rollout (`rollout_row`):
    platform, rollout, declared    the version the stack declares
    version, status                the latest rollout record's version and state (running, succeeded, rolled_back, …)
    last_gate                      the latest ring that has a verdict: {ring, state, outcome, reasons, measured}
A gap (`gap`): {platform, where, problem, fix}: what could not be read and why. Any gap makes the answer partial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from edgefleet_agent.contract.errors import FaultError

FORMAT = 1  # the `--json` document's format; additions keep it, a removal or rename would need a new one
DRIFT_NAMES = 20
HELD_REASONS = 5


class CloudError(FaultError):
    """A cloud that could not be reached or would not answer: `kind` is credentials, expired, invalid, denied, throttled,
    unavailable, unreachable or failed. A FaultError, so the CLI exits 5 (README, "Exit codes")."""

    def __init__(self, where: str, problem: str, fix: str | None, kind: str) -> None:
        super().__init__(where, problem, fix)
        self.kind = kind


def sorted_versions(counts: Mapping[str | None, int]) -> dict[str | None, int]:
    """Versions in a stable order (None, a device with no version, last)."""
    return dict(sorted(((v, n) for v, n in counts.items() if n), key=lambda kv: (kv[0] is None, kv[0] or "")))


def ring_row(
    *,
    platform: str,
    rollout: str,
    ring: str,
    desired: str | None,
    rollback: bool = False,
    devices: int | None,
    reported: Mapping[str | None, int] | None,
    drift_devices: Iterable[str] = (),
    failures: Iterable[str] = (),
    stale: int | None = None,
    notices: Iterable[str] = (),
    partial: bool = False,
    held: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One ring's row. `devices` is what the ring selects; devices beyond those that reported are silent. When the
    ring's size is unknown or its reports were not read, the row is partial and the counts it cannot know are None.
    `stale` counts devices serving on with expired update metadata (a frozen channel, docs/signing.md); None where
    the platform's status source does not carry it; so is `held`, {reason: devices} of devices whose swap waits."""
    counts = sorted_versions(reported or {})
    heard = sum(counts.values())
    known = reported is not None and devices is not None
    drift = sum(n for v, n in counts.items() if v != desired) if reported is not None else None
    return {
        "platform": platform,
        "rollout": rollout,
        "ring": ring,
        "desired": f"{desired} (rollback)" if desired and rollback else desired,
        "devices": devices,
        "reported": counts if reported is not None else None,
        "drift": drift,
        "drift_devices": sorted(drift_devices)[:DRIFT_NAMES],
        "silent": max(0, devices - heard) if known and devices is not None else None,
        "failures": sorted(set(failures))[:5],
        "stale": stale,
        "notices": sorted(set(notices))[:5],
        "partial": partial or not known,
        "held": sum(held.values()) if held is not None else None,
        "held_reasons": dict(sorted(((r, n) for r, n in (held or {}).items() if n), key=lambda rn: (-rn[1], rn[0]))[:HELD_REASONS]),
    }


def last_gate(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The latest verdict in a rollout record (a failed ring's first: it is the one that decided), with its values."""
    if not record:
        return None
    rings = [r for r in record.get("rings") or [] if r.get("verdict") or r.get("shadow_verdict")]
    if not rings:
        return None
    failed = [r for r in rings if r.get("state") == "failed"]
    r = failed[0] if failed else max(rings, key=lambda r: (r.get("finished_at") or 0, r.get("index") or 0))
    verdict = r.get("verdict") or r.get("shadow_verdict") or {}
    return {
        "ring": r.get("name"),
        "state": str(r.get("state")) if r.get("state") is not None else None,
        "outcome": verdict.get("outcome"),
        "reasons": list(verdict.get("reasons") or []),
        "measured": verdict.get("measured") or r.get("measured"),
    }


def rollout_row(*, platform: str, rollout: str, declared: str | None, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A rollout's row from its latest record (None: no record read, so its state is unknown)."""
    return {
        "platform": platform,
        "rollout": rollout,
        "declared": declared,
        "version": (record or {}).get("version"),
        "status": str(record["status"]) if record and record.get("status") is not None else None,
        "last_gate": last_gate(record),
    }


def latest_record(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record of the rollout that started last."""
    out = None
    for r in records:
        if out is None or (r.get("started_at") or 0) >= (out.get("started_at") or 0):
            out = r
    return out


def gap(platform: str, where: str, problem: str, fix: str | None = None) -> dict[str, Any]:
    return {"platform": platform, "where": where, "problem": problem, "fix": fix}


def document(stack: str, parts: Iterable[Mapping[str, Any]], at: float) -> dict[str, Any]:
    """The whole answer from each platform's part: rings, rollouts, declared, gaps; partial when anything is."""
    parts = list(parts)
    out: dict[str, Any] = {"format": FORMAT, "stack": stack, "at": round(at, 3), "partial": False}
    for key in ("rings", "rollouts", "declared", "gaps"):
        out[key] = [row for part in parts for row in part.get(key, [])]
    out["partial"] = bool(out["gaps"]) or any(r.get("partial") for r in out["rings"])
    return out
