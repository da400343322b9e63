"""Turns declarations (stack config, or a gate resource's inputs under `pulumi up`) into engine plans
against the local hub. Shared by the dynamic providers and `edgefleet up`, so both run the same rollout."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from components.rollout.spec import DeviceGroupConfig, RingConfig, RolloutConfig
from edgefleet_agent.contract.manifest import parse_manifest_bytes, version_key
from components.local.signer import LocalKeySigner
from edgefleet_agent.contract.signing import Signer, parse_rollback_order, rollback_order, sign_bytes

from components.local.fleet import lock_holder, lock_path
from components.local.hub import LocalHub
from components.rollout.engine import FAILED, TERMINAL, RingPlan, RolloutEngine, RolloutPlan, extends, last_good, rollout_id
from components.rollout.hub import WallClock
from components.rollout.membership import ring_members
from components.rollout.report import failure_summary
from components.rollout.rollback import rollback_authorizer
from components.rollout.types import RingTarget
from edgefleet_agent.contract.state import DesiredModel


def ring_plans(hub: LocalHub, rollout: RolloutConfig, groups: dict[str, DeviceGroupConfig], rid: str = "",
               rings: list[RingConfig] | None = None) -> list[RingPlan]:
    """Ring membership from the hub's device registry (pure function of registry and config)."""
    rings = list(rings if rings is not None else rollout.rings)
    members = ring_members(rollout.name, rings, groups, hub.devices())
    return [RingPlan(RingTarget(rollout=rollout.name, ring=r.name, index=i, selector=tuple(members[r.name])), r.gate)
            for i, r in enumerate(rings)]


def engine_for(hub: LocalHub, key_file: str, poll_seconds: float, on_update=None) -> RolloutEngine:
    return RolloutEngine(hub, WallClock(), rollback_authorizer(LocalKeySigner(key_file)), poll_seconds=poll_seconds, on_update=on_update)


# -- what to do about a declared version: the hub's rings, not past records, are the truth -------------------
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
    downgrade_from: DesiredModel | None = None    # the rings' version when the declaration is older: a declared rollback
    record: dict[str, Any] | None = None          # the record resumed, or the declared artifact's latest one
    kind: Literal["forward", "rollback"] = "forward"
    status: str = ""                               # refused: previously-rolled-back | refused
    appended: tuple[str, ...] = ()                 # resume of a succeeded rollout: the rings it reopens for
    problem: str = ""
    fix: str = ""


def decide(hub: LocalHub, rollout: RolloutConfig, groups: dict[str, DeviceGroupConfig], declared: DesiredModel,
           model_dir: str | None = None, apply: str = "apply it", stack: str | None = None) -> Decision:
    """Compares the declared artifact with what the hub's rings are set to.

    A declaration older than the rings is an intentional rollback: a staged rollout whose desired state carries
    a signed rollback order. Rings appended to the artifact's succeeded rollout reopen that rollout, so only
    they are deployed and gated (a new attempt would soak every ring again, and its rollback target would be
    this very version). Refused: a version a gate rolled back (a new version number is the retry), a
    different artifact under a version the rings run, and any change while another rollout is in flight —
    superseding it would leave the rings it reached on a version no gate passed, which the new rollout's
    rollback could not undo (a rollback order names the one version it moves devices off). `model_dir` and
    `apply` (the command that applies the stack) make that refusal's fix a command to copy."""
    plans = tuple(ring_plans(hub, rollout, groups))
    records = hub.rollouts(rollout.name)
    artifact = (declared.version, declared.sha256)
    current = {r.name: hub.desired(r.target) for r in plans}
    versions = {name: d.version if d else None for name, d in current.items()}
    base = dict(rings=plans, ring_versions=versions)
    for p in records:
        if p["status"] in TERMINAL:
            continue
        if (p["version"], p["sha256"]) == artifact:
            order = _rollback_of(p)
            if order is None:
                return Decision("resume", **base, rollout_id=p["rollout_id"], previous=last_good(records, before=p["rollout_id"]), record=p)
            return Decision("resume", **base, rollout_id=p["rollout_id"], record=p, kind="rollback",
                            previous=_artifact_desired(records, current, order["from_version"], order["from_sha256"]))
        reached = [r["name"] for r in p["rings"] if r["state"] != "pending"] or ["none yet"]
        return Decision("refused", **base, record=p, status="refused",
                        problem=f"rollout {p['rollout_id']} ({p['model']} {p['previous_version'] or 'nothing'} → {p['version']}) is still in flight "
                                f"({p['status']}, rings reached: {', '.join(reached)}) and {declared.version} is declared now; an unfinished "
                                "rollout is not superseded: the rings it reached would keep a version no gate passed",
                        fix=f"declare {p['model']} {p['version']} again and apply it to finish that rollout (it resumes where it stopped "
                            f"and its gates decide), then declare {declared.version}"
                            + _restore_hint(p, declared, model_dir or f"models/{p['model']}", apply)
                            + (f"; or abandon it: `edgefleet up --stack {stack} --abort REASON` rolls the rings it reached back to "
                               f"{p['previous_version'] or 'no model'} under a signed rollback order" if stack else ""))
    mine = [p for p in records if (p["version"], p["sha256"]) == artifact]
    set_to = {(d.version, d.sha256) for d in current.values() if d is not None}
    if set_to == {artifact} and all(d is not None for d in current.values()):
        return Decision("up-to-date", **base, record=mine[-1] if mine else None)
    reopen = _reopens(mine[-1], plans, current, artifact) if mine else None
    if reopen is not None:
        p = mine[-1]
        order = _rollback_of(p)
        previous = (last_good(records, before=p["rollout_id"]) if order is None
                    else _artifact_desired(records, current, order["from_version"], order["from_sha256"]))
        return Decision("resume", **base, rollout_id=p["rollout_id"], previous=previous, record=p,
                        kind="forward" if order is None else "rollback", appended=reopen)
    if mine and mine[-1]["status"] in FAILED:
        p = mine[-1]
        ring = (p.get("report") or {}).get("failed_ring", "?")
        reasons = "; ".join((p.get("report") or {}).get("reasons") or []) or p["status"]
        return Decision("refused", **base, record=p, status="previously-rolled-back",
                        problem=f"{declared.model} {declared.version} failed the gate of ring {ring!r} in rollout {p['rollout_id']} ({reasons}) "
                                f"and was rolled back; a version a gate rejected is not deployed again",
                        fix=f"if the cause is fixed, declare it as a new version (`edgefleet model add models/{declared.model} --onnx … "
                            f"--version {_next_patch(declared.version, records)}`), or declare the version the rings run "
                            f"({', '.join(sorted({v for v in versions.values() if v})) or 'none'})")
    if any(d is not None and d.version == declared.version and d.sha256 != declared.sha256 for d in current.values()):
        return Decision("refused", **base, status="refused",
                        problem=f"{declared.model} {declared.version} is declared with artifact sha256 {declared.sha256[:12]}…, but the rings run "
                                "a different artifact under that version; devices never replace a version in place",
                        fix=f"give the new artifact a new version: `edgefleet model add models/{declared.model} --onnx … "
                            f"--version {_next_patch(declared.version, records)}`")
    newer = [d for d in current.values() if d is not None and version_key(d.version) > version_key(declared.version)]
    if not newer:
        rid = _attempt_id(records, rollout_id(rollout.name, declared))
        return Decision("run", **base, rollout_id=rid, previous=last_good(records, before=rid))
    if len({(d.version, d.sha256) for d in newer}) > 1:
        running = ", ".join(f"{name} {v or 'none'}" for name, v in versions.items())
        return Decision("refused", **base, status="refused",
                        problem=f"{declared.version} is older than what the rings run ({running}); a rollback moves devices off one "
                                "version, and the rings are set to several",
                        fix=f"declare the newest of them and apply it so every ring runs one version, then declare {declared.version}")
    source = newer[0]
    rid = _attempt_id(records, f"{rollout_id(rollout.name, declared)}~from-{source.version}+{source.sha256[:12]}")
    return Decision("run", **base, rollout_id=rid, previous=_artifact_desired(records, current, source.version, source.sha256),
                    downgrade_from=source, kind="rollback")


def plan_for(rollout: str, decision: Decision, declared: DesiredModel, signer: Signer) -> RolloutPlan:
    """The engine plan for a decision to run or resume; a declared rollback's desired state carries its signed order."""
    if decision.action == "resume":
        desired = DesiredModel.from_json(decision.record["desired"])
    elif decision.downgrade_from is not None:
        src = decision.downgrade_from
        order = rollback_order(declared.model, declared.version, declared.sha256,
                               f"declared rollback of {rollout}: {src.version} → {declared.version}", src.version, src.sha256)
        desired = replace(declared, rollout=decision.rollout_id, rollback_order=order.decode(),
                          rollback_signature=sign_bytes(signer, order).to_bytes().decode())
    else:
        desired = replace(declared, rollout=decision.rollout_id)
    return RolloutPlan(rollout, desired, decision.previous, decision.rings, attempt_id=decision.rollout_id)


def _reopens(record: dict[str, Any], plans: tuple[RingPlan, ...], current: dict[str, DesiredModel | None],
             artifact: tuple[str, str]) -> tuple[str, ...] | None:
    """The rings a succeeded rollout reopens for (the engine's `extends`), when its rings still run its artifact."""
    if not extends(record, RolloutPlan(record["rollout"], DesiredModel.from_json(record["desired"]), None, plans)):
        return None
    known = [r["name"] for r in record["rings"]]
    if any(current[name] is None or (current[name].version, current[name].sha256) != artifact for name in known):
        return None
    newer = [d for d in current.values() if d is not None and version_key(d.version) > version_key(artifact[0])]
    return None if newer else tuple(r.name for r in plans[len(known):])


def _store_files(desired: DesiredModel) -> tuple[Path, Path] | None:
    """The manifest and artifact the local store holds for a published version (store.py's layout)."""
    url = urlparse(desired.uri or "")
    if url.scheme != "file":
        return None
    artifact = Path(unquote(url.path))
    return artifact.with_suffix(".yaml"), artifact


def _restore_hint(record: dict[str, Any], declared: DesiredModel, model_dir: str, apply: str) -> str:
    """A way back to the unfinished version that needs no `model add` (which refuses to go below the manifest's
    version): copy its published manifest and artifact back from the local store, which keeps every version."""
    flight = DesiredModel.from_json(record["desired"])
    files = _store_files(flight) if flight else None
    if files is None or not all(f.is_file() for f in files):
        return ""

    def copy(files: tuple[Path, Path], manifest_text: str) -> str:
        name = parse_manifest_bytes(manifest_text.encode(), "the manifest").file
        return (f"cp {shlex.quote(str(files[0]))} {shlex.quote(f'{model_dir}/model.yaml')} && "
                f"cp {shlex.quote(str(files[1]))} {shlex.quote(f'{model_dir}/{name}')}")

    hint = (f". The local store keeps {flight.version} (`edgefleet model add` refuses a version below the manifest's): restore it with "
            f"`{copy(files, flight.manifest)}`, {apply}, ")
    if declared.manifest:
        folder = files[1].parent
        hint += (f"then put {declared.version} back with "
                 f"`{copy((folder / f'{declared.sha256}.yaml', folder / f'{declared.sha256}.onnx'), declared.manifest)}` and {apply} again")
    else:
        hint += f"then declare {declared.version} again"
    return hint


def _attempt_id(records: list[dict[str, Any]], first: str) -> str:
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


def _artifact_desired(records: list[dict[str, Any]], current: dict[str, DesiredModel | None], version: str, sha256: str) -> DesiredModel | None:
    """What a declared rollback returns to if its gate fails: the artifact the rings ran before it."""
    for p in reversed(records):
        if p["status"] == "succeeded" and (p["version"], p["sha256"]) == (version, sha256):
            return DesiredModel.from_json(p["desired"])
    return next((d for d in current.values() if d is not None and (d.version, d.sha256) == (version, sha256)), None)


def _next_patch(version: str, records: list[dict[str, Any]]) -> str:
    top = max([version_key(version), *(version_key(p["version"]) for p in records)])
    return str(top.bump_patch())


# -- the Pulumi face: resources' inputs -> plans ------------------------------------------------------------
def desired_from_props(props: dict[str, Any]) -> DesiredModel:
    """The declared artifact; the rollout id is set by the decision (plan_for)."""
    return DesiredModel(model=props["model"], version=props["version"], sha256=props["sha256"], size=int(props["size"]),
                        uri=props["uri"], manifest=props["manifest"], signature=props["signature"])


def _rollout_from_props(props: dict[str, Any]) -> tuple[RolloutConfig, dict[str, DeviceGroupConfig]]:
    rings = [RingConfig.model_validate(r, strict=False) for r in props["rings"]]
    groups = {n: DeviceGroupConfig.model_validate(g, strict=False) for n, g in props["groups"].items()}
    return RolloutConfig(name=props["rollout"], model=props["model"], rings=rings), groups


def _decision_from_props(hub: LocalHub, props: dict[str, Any]) -> tuple[Decision, DesiredModel]:
    rollout, groups = _rollout_from_props(props)
    ring = ring_plans(hub, rollout, groups)[int(props["index"])]
    if not ring.target.selector:
        raise RuntimeError(
            f"ring {props['ring']!r} of rollout {props['rollout']!r} has no devices in the local hub {props['hub']}: under `pulumi up` "
            f"nothing registers the stack's simulated devices. Run `edgefleet fleet run --stack {props.get('stack', '<stack>')}` in another "
            "terminal (it registers them and runs the fleet until Ctrl-C), then `pulumi up` again")
    declared = desired_from_props(props)
    decision = decide(hub, rollout, groups, declared, apply=f"run `pulumi up --stack {props.get('stack', '<stack>')}`")
    if decision.action == "refused":
        raise RuntimeError(f"{decision.problem}. Fix: {decision.fix}")
    return decision, declared


def deploy_ring(props: dict[str, Any]) -> list[str]:
    """The RingDeployment resource: records the rollout's intent (so the gates resume this exact plan, with
    the same signed desired state) and points the ring's devices at it. Returns the ring's devices."""
    hub = LocalHub(props["hub"])
    decision, declared = _decision_from_props(hub, props)
    index = int(props["index"])
    ring = decision.rings[index]
    if decision.action in ("run", "resume"):
        plan = plan_for(props["rollout"], decision, declared, LocalKeySigner(props["key_file"]))
        with hub.lease(props["rollout"], owner="pulumi up (ring deployment)"):
            progress = engine_for(hub, props["key_file"], float(props["poll_seconds"])).start(plan)
            promoting = progress["status"] == "running" and all(r["state"] == "passed" for r in progress["rings"][:index])
            if promoting and hub.desired(ring.target) != plan.desired:   # never during a rollback, never past an unpassed gate
                hub.set_desired(ring.target, plan.desired)
    return list(ring.target.selector)


def run_gate(props: dict[str, Any]) -> dict[str, Any]:
    """Drives the engine through ring `index` (the whole rollout for the last ring); raises on rollback."""
    hub = LocalHub(props["hub"])
    fleet_lock = lock_path(Path(props["hub"]), "fleet")
    decision, declared = _decision_from_props(hub, props)
    if decision.action == "up-to-date":
        recorded = decision.record if decision.record and any(r["name"] == props["ring"] for r in decision.record["rings"]) else None
        # every ring is set to the declared artifact already: this ring's gate has nothing left to judge
        return recorded or {"rollout_id": f"{props['rollout']}@{props['version']}", "status": "up-to-date",
                            "rings": [{"name": props["ring"], "state": "passed", "measured": None}]}
    if lock_holder(fleet_lock) is None:
        raise RuntimeError(
            f"no local fleet is running on the hub {props['hub']} (nobody holds {fleet_lock}), so ring {props['ring']!r} could only time out. "
            f"Run `edgefleet fleet run --stack {props.get('stack', '<stack>')}` in another terminal, then `pulumi up` again")
    plan = plan_for(props["rollout"], decision, declared, LocalKeySigner(props["key_file"]))
    index = int(props["index"])
    last = index == int(props["total_rings"]) - 1
    with hub.lease(props["rollout"], owner="pulumi up (ring gate)"):     # `edgefleet up` may drive the same rings
        progress = engine_for(hub, props["key_file"], float(props["poll_seconds"])).run(plan, until_ring=None if last else index)
    if progress["status"] in FAILED:
        raise RuntimeError(failure_summary(progress, later_rings=int(props["total_rings"]) - len(progress["rings"])))
    return progress
