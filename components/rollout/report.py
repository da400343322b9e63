"""The engine's failure report as one message: what `pulumi up` prints when a gate stops the update."""

from __future__ import annotations

from typing import Any, Mapping

SHOWN = 5
METRICS = {
    "error_rate": ("error rate", "{:.2%}"),
    "invalid_output_share": ("NaN/Inf outputs", "{:.2%}"),
    "p99_latency_ms": ("p99 latency", "{:.2f} ms"),
}


def offender_text(o: dict[str, Any]) -> str:
    """`d07 NaN/Inf outputs 12.00% (max 0.00%)`: one device's own window against the gate's threshold."""
    label, fmt = METRICS.get(o["metric"], (o["metric"], "{}"))
    bound = f" (max {fmt.format(o['max'])})" if o.get("max") is not None else ""
    return f"{o['device']} {label} {fmt.format(o['value'])}{bound}"


def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more in the report)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def failure_summary(progress: Mapping[str, Any], later_rings: int = 0) -> str:
    """`later_rings` counts rings beyond those this run knew: a Pulumi gate resource only knows the rings up
    to its own, so the rings after it (which it never let start) are counted, not named."""
    r = progress.get("report") or {}
    failing = _listed([f"{d}: {why}" for d, why in r.get("failures", [])])
    offending = _listed([offender_text(o) for o in r.get("offenders") or []])
    never = ", ".join(r.get("never_deployed") or [])
    if later_rings > 0:
        never = (never + ", " if never else "") + f"{later_rings} later ring(s)"
    unconfirmed = [
        f"ring {ring}: " + (_listed([f"{d}: {why}" for d, why in u.get("failures", [])]) or f"{len(u.get('pending', []))} device(s) silent")
        for ring, u in (r.get("unconfirmed") or {}).items()
    ]
    return (
        f"rollout {progress['rollout_id']} halted at ring {r.get('failed_ring')!r}: {'; '.join(r.get('reasons', []))}. "
        f"Rolled back rings {r.get('rolled_back_rings')} to {r.get('rolled_back_to') or 'no model'} "
        f"({progress['status']}); never deployed: {never or 'none'}"
        + (f". Failing devices: {failing}" if failing else "")
        + (f". Offending devices: {offending}" if offending else "")
        + (f". Devices that did not confirm the rollback: {'; '.join(unconfirmed)}" if unconfirmed else "")
    )
