"""What applying a declared model version to a rollout's rings does: run, resume, nothing, or a refusal that says why.

Pure: a platform reads its rollout records and what each ring is set to, this decides, and every platform's
gate (components/rollout/driver.py) and `edgefleet up` act on the same decision. The rings, not past records,
are the truth about what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

from components.rollout.engine import RingPlan, RolloutPlan, extends
from components.rollout.progress import FAILED, TERMINAL, RingState, as_progress, last_good, rollout_id, served
from edgefleet_agent.contract.manifest import version_key
from edgefleet_agent.contract.signing import Signer, parse_rollback_order, rollback_order, sign_bytes
from edgefleet_agent.contract.state import DesiredModel


@dataclass(frozen=True)
class Decision:
    """What applying one declared rollout does. `action`: run (a new rollout), resume (one in flight for this
    very artifact, or its succeeded one reopened for appended rings), up-to-date (every ring is set to it), or
    refused (problem and fix say why and what to do)."""

    action: Literal["run", "resume", "up-to-date", "refused"]
    rings: tuple[RingPlan, ...]
    ring_versions: dict[str, str | None]
    rollout_id: str | None = None
    previous: DesiredModel | None = None
    downgrade_from: DesiredModel | None = None  # the rings' version when the declaration is older: a declared rollback
    record: dict[str, Any] | None = None  # the record resumed, or the declared artifact's latest one
    kind: Literal["forward", "rollback"] = "forward"
    status: str = ""  # refused: previously-rolled-back | refused
    appended: tuple[str, ...] = ()  # resume of a succeeded rollout: the rings it reopens for
    problem: str = ""
    fix: str = ""


RestoreHint = Callable[[dict[str, Any], DesiredModel, str, str], str]  # (record in flight, declared, model dir, apply) -> advice


def decide(
    rollout: str,
    plans: tuple[RingPlan, ...],
    records: list[dict[str, Any]],
    current: dict[str, DesiredModel | None],
    declared: DesiredModel,
    *,
    model_dir: str | None = None,
    apply: str = "apply it",
    stack: str | None = None,
    restore_hint: RestoreHint | None = None,
) -> Decision:
    """Compares the declared artifact with what the hub's rings are set to.

    A declaration older than the rings is an intentional rollback: a staged rollout whose desired state carries
    a signed rollback order. Rings appended to the artifact's succeeded rollout reopen that rollout, so only
    they are deployed and gated (a new attempt would soak every ring again, and its rollback target would be
    this very version). Refused: a version a gate rolled back (a new version number is the retry; a version that
    was only ever shadowed, never served, is not burned: applying it again runs a new attempt), a
    different artifact under a version the rings run, and any change while another rollout is in flight —
    superseding it would leave the rings it reached on a version no gate passed, which the new rollout's
    rollback could not undo (a rollback order names the one version it moves devices off). `model_dir` and
    `apply` (the command that applies the stack) make that refusal's fix a command to copy; `restore_hint` adds a
    platform's way back to the version in flight. Pure: the platform reads `records` (oldest first) and what each
    ring is set to (`current`), this decides."""
    artifact = (declared.version, declared.sha256)
    versions = {name: d.version if d else None for name, d in current.items()}
    for p in records:
        if p["status"] in TERMINAL:
            continue
        if (p["version"], p["sha256"]) == artifact:
            order = _rollback_of(p)
            if order is None:
                return Decision(
                    "resume", plans, versions, rollout_id=p["rollout_id"], previous=last_good(records, before=p["rollout_id"]), record=p
                )
            return Decision(
                "resume",
                plans,
                versions,
                rollout_id=p["rollout_id"],
                record=p,
                kind="rollback",
                previous=_artifact_desired(records, current, order["from_version"], order["from_sha256"]),
            )
        reached = [r["name"] for r in p["rings"] if r["state"] != RingState.PENDING] or ["none yet"]
        return Decision(
            "refused",
            plans,
            versions,
            record=p,
            status="refused",
            problem=f"rollout {p['rollout_id']} ({p['model']} {p['previous_version'] or 'nothing'} → {p['version']}) is still in flight "
            f"({p['status']}, rings reached: {', '.join(reached)}) and {declared.version} is declared now; an unfinished "
            "rollout is not superseded: the rings it reached would keep a version no gate passed",
            fix=f"declare {p['model']} {p['version']} again and apply it to finish that rollout (it resumes where it stopped "
            f"and its gates decide), then declare {declared.version}"
            + (restore_hint(p, declared, model_dir or f"models/{p['model']}", apply) if restore_hint else "")
            + (
                f"; or abandon it: `edgefleet up --stack {stack} --abort REASON` rolls the rings it reached back to "
                f"{p['previous_version'] or 'no model'} under a signed rollback order"
                if stack
                else ""
            ),
        )
    mine = [p for p in records if (p["version"], p["sha256"]) == artifact]
    set_to = {(d.version, d.sha256) for d in current.values() if d is not None}
    rejected = bool(mine) and burned(mine[-1])
    if set_to == {artifact} and all(d is not None for d in current.values()) and not rejected:
        # (rings set to a version a gate rejected, its desired state written again, are not up to date: refused below)
        return Decision("up-to-date", plans, versions, record=mine[-1] if mine else None)
    reopen = _reopens(mine[-1], plans, current, artifact) if mine and not rejected else None
    if reopen is not None:
        p = mine[-1]
        order = _rollback_of(p)
        previous = (
            last_good(records, before=p["rollout_id"])
            if order is None
            else _artifact_desired(records, current, order["from_version"], order["from_sha256"])
        )
        return Decision(
            "resume",
            plans,
            versions,
            rollout_id=p["rollout_id"],
            previous=previous,
            record=p,
            kind="forward" if order is None else "rollback",
            appended=reopen,
        )
    if rejected:
        p = mine[-1]
        ring = (p.get("report") or {}).get("failed_ring", "?")
        reasons = "; ".join((p.get("report") or {}).get("reasons") or []) or p["status"]
        return Decision(
            "refused",
            plans,
            versions,
            record=p,
            status="previously-rolled-back",
            problem=f"{declared.model} {declared.version} failed the gate of ring {ring!r} in rollout {p['rollout_id']} ({reasons}) "
            f"and was rolled back; a version a gate rejected is not deployed again",
            fix=f"if the cause is fixed, declare it as a new version (`edgefleet model add models/{declared.model} --onnx … "
            f"--version {_next_patch(declared.version, records)}`), or declare the version the rings run "
            f"({', '.join(sorted({v for v in versions.values() if v})) or 'none'})",
        )
    if any(d is not None and d.version == declared.version and d.sha256 != declared.sha256 for d in current.values()):
        return Decision(
            "refused",
            plans,
            versions,
            status="refused",
            problem=f"{declared.model} {declared.version} is declared with artifact sha256 {declared.sha256[:12]}…, but the rings run "
            "a different artifact under that version; devices never replace a version in place",
            fix=f"give the new artifact a new version: `edgefleet model add models/{declared.model} --onnx … "
            f"--version {_next_patch(declared.version, records)}`",
        )
    newer = [d for d in current.values() if d is not None and version_key(d.version) > version_key(declared.version)]
    if not newer:
        rid = attempt_id(records, rollout_id(rollout, declared))
        return Decision("run", plans, versions, rollout_id=rid, previous=last_good(records, before=rid))
    if len({(d.version, d.sha256) for d in newer}) > 1:
        running = ", ".join(f"{name} {v or 'none'}" for name, v in versions.items())
        return Decision(
            "refused",
            plans,
            versions,
            status="refused",
            problem=f"{declared.version} is older than what the rings run ({running}); a rollback moves devices off one "
            "version, and the rings are set to several",
            fix=f"declare the newest of them and apply it so every ring runs one version, then declare {declared.version}",
        )
    source = newer[0]
    rid = attempt_id(records, f"{rollout_id(rollout, declared)}~from-{source.version}+{source.sha256[:12]}")
    return Decision(
        "run",
        plans,
        versions,
        rollout_id=rid,
        previous=_artifact_desired(records, current, source.version, source.sha256),
        downgrade_from=source,
        kind="rollback",
    )


def plan_for(rollout: str, decision: Decision, declared: DesiredModel, signer: Signer) -> RolloutPlan:
    """The engine plan for a decision to run or resume; a declared rollback's desired state carries its signed order."""
    if decision.action not in ("run", "resume") or decision.rollout_id is None:
        raise ValueError(f"a {decision.action!r} decision has no rollout to plan")
    desired: DesiredModel | None
    if decision.action == "resume":
        assert decision.record is not None, "a resume names the record it resumes"
        desired = DesiredModel.from_json(decision.record["desired"])
    elif decision.downgrade_from is not None:
        src = decision.downgrade_from
        order = rollback_order(
            declared.model,
            declared.version,
            declared.sha256,
            f"declared rollback of {rollout}: {src.version} → {declared.version}",
            src.version,
            src.sha256,
        )
        desired = replace(
            declared,
            rollout=decision.rollout_id,
            rollback_order=order.decode(),
            rollback_signature=sign_bytes(signer, order).to_bytes().decode(),
        )
    else:
        desired = replace(declared, rollout=decision.rollout_id)
    if desired is None:
        raise ValueError(f"the record of {decision.rollout_id} holds no desired state")
    return RolloutPlan(rollout, desired, decision.previous, decision.rings, attempt_id=decision.rollout_id)


def _reopens(
    record: dict[str, Any], plans: tuple[RingPlan, ...], current: dict[str, DesiredModel | None], artifact: tuple[str, str]
) -> tuple[str, ...] | None:
    """The rings a succeeded rollout reopens for (the engine's `extends`), when its rings still run its artifact."""
    desired = DesiredModel.from_json(record["desired"])
    if desired is None or not extends(as_progress(record), RolloutPlan(record["rollout"], desired, None, plans)):
        return None
    known = [r["name"] for r in record["rings"]]
    if any((d := current[name]) is None or (d.version, d.sha256) != artifact for name in known):
        return None
    newer = [d for d in current.values() if d is not None and version_key(d.version) > version_key(artifact[0])]
    return None if newer else tuple(r.name for r in plans[len(known) :])


def ever_served(record: dict[str, Any]) -> bool:
    """Whether any device ran the record's version: a rejected version is burned only then (see `burned`). One no device ran (an
    empty ring that timed out, a candidate every device refused to load) may be declared again, under a new attempt."""
    measured = [r.get("measured") or {} for r in record.get("rings", [])]
    sampled = [s for s in record.get("samples", []) if s.get("adopted")]
    return bool(sampled) or any((m.get("adopted") or 0) > 0 for m in measured)


def burned(record: dict[str, Any]) -> bool:
    """Whether the record's version is burned: a gate rejected it after a ring was set to serve it (`served`; not
    only to shadow it) and a device served it (`ever_served`). A burned version is refused when declared again and
    removed from the signed targets (components/rollout/driver.py, components/local/trust.py); one only ever shadowed,
    or that no device ran, may be declared again, so it stays a target."""
    return record.get("status") in FAILED and served(record) and ever_served(record)


def attempt_id(records: list[dict[str, Any]], first: str) -> str:
    taken = {p["rollout_id"] for p in records}
    n, rid = 1, first
    while rid in taken:
        n += 1
        rid = f"{first}#{n}"
    return rid


def _rollback_of(record: dict[str, Any]) -> dict[str, str] | None:
    desired = DesiredModel.from_json(record["desired"])
    if desired is None or not desired.rollback_order:
        return None
    return parse_rollback_order(desired.rollback_order.encode(), f"rollout {record['rollout_id']}")


def _artifact_desired(
    records: list[dict[str, Any]], current: dict[str, DesiredModel | None], version: str, sha256: str
) -> DesiredModel | None:
    """What a declared rollback returns to if its gate fails: the artifact the rings ran before it."""
    for p in reversed(records):
        if p["status"] == "succeeded" and (p["version"], p["sha256"]) == (version, sha256):
            return DesiredModel.from_json(p["desired"])
    return next((d for d in current.values() if d is not None and (d.version, d.sha256) == (version, sha256)), None)


def _next_patch(version: str, records: list[dict[str, Any]]) -> str:
    top = max([version_key(version), *(version_key(p["version"]) for p in records)])
    return str(top.bump_patch())
