"""The engine's failure report as one message: what `pulumi up` prints when a gate stops the update."""

from __future__ import annotations

from typing import Any, Mapping

SHOWN = 5
METRICS = {
    "error_rate": ("error rate", "{:.2%}"),
    "invalid_output_share": ("NaN/Inf outputs", "{:.2%}"),
    "p99_latency_ms": ("p99 latency", "{:.2f} ms"),
    "agreement": ("shadow agreement", "{:.1%}"),
    "candidate_error_rate": ("shadowed candidate's error rate", "{:.2%}"),
    "candidate_invalid_share": ("shadowed candidate's NaN/Inf outputs", "{:.2%}"),
    "latency_ratio": ("p50 latency ratio", "{:.2f}x"),
    "distribution_shift": ("prediction shift", "{:.3f}"),
    "confidence_drop": ("confidence drop", "{:.3f}"),
    "live_accuracy": ("live accuracy", "{:.1%}"),
}


def offender_text(o: dict[str, Any]) -> str:
    """`d07 NaN/Inf outputs 12.00% (max 0.00%)`: one device's own window against the gate's threshold; a prediction
    shift names the device's own class shares."""
    label, fmt = METRICS.get(o["metric"], (o["metric"], "{}"))
    bound = (
        f" (max {fmt.format(o['max'])})"
        if o.get("max") is not None
        else f" (min {fmt.format(o['min'])})"
        if o.get("min") is not None
        else ""
    )
    classes = o.get("classes")
    shown = f" classes {{{', '.join(f'{k}: {v:.0%}' for k, v in classes.items())}}}" if isinstance(classes, dict) else ""
    return f"{o['device']} {label} {fmt.format(o['value'])}{bound}{shown}"


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
    shadow_only = r.get("shadow_rings") or []
    undone = (
        f"Rolled back rings {r.get('rolled_back_rings')} to {r.get('rolled_back_to') or 'no model'} ({progress['status']})"
        if r.get("served", True)
        else f"It only ever ran in shadow (rings {shadow_only}), never served: those rings went back to "
        f"{r.get('rolled_back_to') or 'no model'} without the candidate, with no rollback order, and the version is not burned "
        f"({progress['status']})"
    )
    if shadow_only and r.get("served", True):
        undone += f"; rings {shadow_only} only shadowed it and went back without a rollback order"
    return (
        f"rollout {progress['rollout_id']} halted at ring {r.get('failed_ring')!r}: {'; '.join(r.get('reasons', []))}. "
        f"{undone}; never deployed: {never or 'none'}"
        + (f". Failing devices: {failing}" if failing else "")
        + (f". Offending devices: {offending}" if offending else "")
        + (f". Devices that did not confirm the rollback: {'; '.join(unconfirmed)}" if unconfirmed else "")
    )
