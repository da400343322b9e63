"""What `edgefleet status` shows for the local platform: each ring's desired and reported versions and drift,
from the local hub, and whether what is declared is what the rings run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from components.local.hub import LocalHub
from components.local.up import declared_state
from edgefleet_agent.contract.errors import EdgefleetError

STALE = "metadata stale since "


def read_status(project_dir: Path, cfg: Any, source: str, stack: str, graph: dict[str, Any]) -> dict[str, Any]:
    project_dir = Path(project_dir).resolve()
    path = project_dir / cfg.local.hub
    if not path.is_file():
        raise EdgefleetError(str(path), "no local hub yet", f"run `edgefleet up --stack {stack}` first")
    hub = LocalHub(path)
    rings = []
    for state in hub.ring_states():
        desired = state["desired"]
        reports = hub.reports(state["model"], state["devices"])
        want = desired.version if desired else None
        reported = Counter(r.version for r in reports.values())
        rings.append(
            {
                "rollout": state["rollout"],
                "ring": state["ring"],
                "desired": (f"{want} (rollback)" if desired and desired.is_rollback else want),
                "devices": len(state["devices"]),
                "reported": dict(sorted(reported.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
                "drift": sum(1 for r in reports.values() if r.version != want),
                "drift_devices": sorted(d for d, r in reports.items() if r.version != want)[:20],
                "silent": len(state["devices"]) - len(reports),
                "failures": sorted({r.error for r in reports.values() if r.status == "failed" and r.error})[:5],
                # devices serving on, whose update metadata expired: a frozen channel (docs/signing.md)
                "stale": sum(1 for r in reports.values() if (r.error or "").startswith(STALE)),
                "notices": sorted({r.error for r in reports.values() if r.status != "failed" and r.error})[:5],
            }
        )
    latest: dict[str, dict] = {}
    for p in hub.rollouts():
        latest[p["rollout"]] = p
    return {
        "rings": rings,
        "rollouts": [{"rollout": k, "version": v["version"], "status": v["status"]} for k, v in latest.items()],
        "declared": declared_state(project_dir, stack, graph),
    }
