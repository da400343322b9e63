"""What `edgefleet status` shows for the local platform: each ring's desired and reported versions and drift,
from the local hub, and whether what is declared is what the rings run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from components.local.hub import LocalHub
from components.local.up import declared_state
from components.rollout.status import ring_row, rollout_row
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
        rings.append(
            ring_row(
                platform="local",
                rollout=state["rollout"],
                ring=state["ring"],
                desired=want,
                rollback=bool(desired and desired.is_rollback),
                devices=len(state["devices"]),
                reported=Counter(r.version for r in reports.values()),
                drift_devices=(d for d, r in reports.items() if r.version != want),
                failures=(r.error for r in reports.values() if r.status == "failed" and r.error),
                stale=sum(1 for r in reports.values() if (r.error or "").startswith(STALE)),
                notices=(r.error for r in reports.values() if r.status != "failed" and r.error),
                held=Counter(r.deferred for r in reports.values() if r.deferred),
            )
        )
    latest: dict[str, dict] = {}
    for p in hub.rollouts():
        latest[p["rollout"]] = p
    declared = declared_state(project_dir, stack, graph)
    versions = {d["rollout"]: d["declared"] for d in declared}
    names = list(dict.fromkeys([*latest, *versions]))
    return {
        "rings": rings,
        "rollouts": [rollout_row(platform="local", rollout=k, declared=versions.get(k), record=latest.get(k)) for k in names],
        "declared": declared,
    }


def read_history(project_dir: Path, cfg: Any, source: str, stack: str) -> list[dict[str, Any]]:
    """Every rollout the hub recorded, oldest first: outcome, rings reached, duration, and a failing gate's numbers."""
    path = Path(project_dir).resolve() / cfg.local.hub
    if not path.is_file():
        raise EdgefleetError(str(path), "no local hub yet, so no history", f"run `edgefleet up --stack {stack}` first")
    return [history_entry(p) for p in LocalHub(path).rollouts()]


def history_entry(p: dict[str, Any]) -> dict[str, Any]:
    """One rollout record as history shows it; the same shape whichever platform kept the record."""
    report = p.get("report") or {}
    failed = next((r for r in p.get("rings", []) if r.get("state") == "failed"), None)
    verdict = (failed or {}).get("verdict") or {}
    finished = p.get("finished_at")
    return {
        "rollout": p["rollout"],
        "rollout_id": p["rollout_id"],
        "model": p.get("model"),
        "version": p.get("version"),
        "from": p.get("previous_version"),
        "outcome": str(p.get("status")),
        "rings_reached": [r["name"] for r in p.get("rings", []) if r.get("state") not in ("pending", None)],
        "rings_passed": [r["name"] for r in p.get("rings", []) if r.get("state") == "passed"],
        "started_at": p.get("started_at"),
        "finished_at": finished,
        "duration_seconds": round(finished - p["started_at"], 1) if finished and p.get("started_at") else None,
        "failed_ring": report.get("failed_ring"),
        "reasons": report.get("reasons") or verdict.get("reasons") or [],
        "measured": verdict.get("measured"),
    }
