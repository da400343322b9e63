"""The engine's failure report as one message: what `pulumi up` prints when a gate stops the update."""

from __future__ import annotations

from typing import Any


def failure_summary(progress: dict[str, Any], later_rings: int = 0) -> str:
    """`later_rings` counts rings beyond those this run knew: a Pulumi gate resource only knows the rings up
    to its own, so the rings after it (which it never let start) are counted, not named."""
    r = progress.get("report") or {}
    where = ", ".join(f"{d}: {why}" for d, why in r.get("failures", [])[:5])
    never = ", ".join(r.get("never_deployed") or [])
    if later_rings > 0:
        never = (never + ", " if never else "") + f"{later_rings} later ring(s)"
    return (f"rollout {progress['rollout_id']} halted at ring {r.get('failed_ring')!r}: {'; '.join(r.get('reasons', []))}. "
            f"Rolled back rings {r.get('rolled_back_rings')} to {r.get('rolled_back_to') or 'no model'} "
            f"({progress['status']}); never deployed: {never or 'none'}" + (f". Failing devices: {where}" if where else ""))
