"""The local platform's side of a rollout: ring membership from the hub's registry, the engine's decision over the
local hub's rings, and the ring resources' inputs under `pulumi up` handed to the shared gate driver. `edgefleet up`
and the dynamic providers use the same functions, so both run the same rollout."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from components.local.fleet import lock_holder, lock_path
from components.local.hub import LocalHub
from components.local.signer import LocalKeySigner
from components.local.trust import repository_for_uri
from components.props import RingGateProps
from components.rollout.decide import Decision, plan_for
from components.rollout.decide import decide as decide_rings
from components.rollout.driver import GateFailed, GateInputs, gate_decision
from components.rollout.driver import run_gate as drive_gate
from components.rollout.engine import RingPlan, RolloutEngine
from components.rollout.hub import WallClock
from components.rollout.membership import control_members, in_group, rank, ring_members
from components.rollout.progress import Progress, RingState, RolloutStatus
from components.rollout.rollback import rollback_authorizer
from components.rollout.spec import CONTROL_RING, DeviceGroupConfig, RingConfig, RolloutConfig, follower_gate
from components.rollout.types import RingTarget
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel

CONTROL_SAMPLE = 1000  # devices a ring's quality is compared with, at most: past that the comparison only costs more


def control_sample(rollout: str, devices: list[str]) -> tuple[str, ...]:
    """The devices still on the previous version a ring's quality is compared with: all of them up to CONTROL_SAMPLE,
    else the last CONTROL_SAMPLE of the rollout's order (the control holdback first, which is the end of that order).
    Reading 9,500 devices' reports on every poll of a 500-device canary would cost the controller more than the
    statistics gain: the comparison's test is decided long before that many devices."""
    if len(devices) <= CONTROL_SAMPLE:
        return tuple(devices)
    return tuple(sorted(sorted(devices, key=lambda d: rank(rollout, d))[-CONTROL_SAMPLE:]))


def ring_plans(
    hub: LocalHub,
    rollout: RolloutConfig,
    groups: dict[str, DeviceGroupConfig],
    rid: str = "",
    rings: list[RingConfig] | None = None,
    complete: bool = True,
) -> list[RingPlan]:
    """Ring membership from the hub's device registry (pure function of registry and config).

    Each ring's control group is every device of the rollout's groups that no ring up to it holds: the later rings'
    and the control holdback's, still on the previous version. With a control holdback, a `complete` plan (every
    ring of the rollout: not a Pulumi gate of an earlier ring) ends with the holdback as ring CONTROL_RING, which
    follows the last ring once its gate passes, under that ring's health criteria."""
    rings = list(rings if rings is not None else rollout.rings)
    devices = hub.devices()
    members = ring_members(rollout.name, rings, groups, devices, rollout.control_holdback)
    in_rollout = sorted(d.id for d in devices if any(in_group(d, groups[r.group]) for r in rings))
    out, taken = [], set()
    for i, r in enumerate(rings):
        taken.update(members[r.name])
        rest = control_sample(rollout.name, [d for d in in_rollout if d not in taken])
        control = (RingTarget(rollout.name, CONTROL_RING, len(rings), rest),) if rest else ()
        target = RingTarget(rollout=rollout.name, ring=r.name, index=i, selector=tuple(members[r.name]))
        out.append(
            RingPlan(
                target,
                r.gate,
                control,
                capture=r.capture.spec() if r.capture else None,
                window=groups[r.group].windows(),
                download_cap=r.download_cap(groups[r.group]),
            )
        )
    if complete and rollout.control_holdback > 0:
        held = tuple(control_members(rollout.name, rings, groups, devices, rollout.control_holdback))
        last = groups[rings[-1].group].windows()
        # the holdback holds devices of every group of the rollout: the strictest of their caps, so none exceeds its own
        caps = [c for c in (groups[g].max_download_bytes_per_second for g in {r.group for r in rings}) if c is not None]
        out.append(
            RingPlan(
                RingTarget(rollout.name, CONTROL_RING, len(rings), held),
                follower_gate(rings[-1].gate),
                window=last,
                download_cap=min(caps) if caps else None,
            )
        )
    return out


def engine_for(hub: LocalHub, key_file: str, poll_seconds: float, on_update=None) -> RolloutEngine:
    return RolloutEngine(hub, WallClock(), rollback_authorizer(LocalKeySigner(key_file)), poll_seconds=poll_seconds, on_update=on_update)


def decide(
    hub: LocalHub,
    rollout: RolloutConfig,
    groups: dict[str, DeviceGroupConfig],
    declared: DesiredModel,
    model_dir: str | None = None,
    apply: str = "apply it",
    stack: str | None = None,
) -> Decision:
    """The engine's decision (components/rollout/decide.py) for the local hub's rings, with the local store's way back
    to a version in flight."""
    plans = tuple(ring_plans(hub, rollout, groups))
    current = {r.name: hub.desired(r.target) for r in plans}
    return decide_rings(
        rollout.name,
        plans,
        hub.rollouts(rollout.name),
        current,
        declared,
        model_dir=model_dir,
        apply=apply,
        stack=stack,
        restore_hint=_restore_hint,
    )


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
        return (
            f"cp {shlex.quote(str(files[0]))} {shlex.quote(f'{model_dir}/model.yaml')} && "
            f"cp {shlex.quote(str(files[1]))} {shlex.quote(f'{model_dir}/{name}')}"
        )

    hint = (
        f". The local store keeps {flight.version} (`edgefleet model add` refuses a version below the manifest's): restore it with "
        f"`{copy(files, flight.manifest)}`, {apply}, "
    )
    if declared.manifest:
        folder = files[1].parent
        hint += (
            f"then put {declared.version} back with "
            f"`{copy((folder / f'{declared.sha256}.yaml', folder / f'{declared.sha256}.onnx'), declared.manifest)}` and {apply} again"
        )
    else:
        hint += f"then declare {declared.version} again"
    return hint


# -- the Pulumi face: the ring resources' typed inputs -> the shared driver ----------------------------------------
class LocalRingProps(RingGateProps):
    """A local ring's deployment and gate: the hub, the rings' groups (membership is computed from the hub's
    registry when the resource runs), the key file that signs rollback orders."""

    hub: str
    total_rings: int
    groups: dict[str, dict[str, Any]]
    key_file: str
    control_holdback: float = 0.0  # written only when the rollout declares one

    def rollout_config(self) -> tuple[RolloutConfig, dict[str, DeviceGroupConfig]]:
        groups = {n: DeviceGroupConfig.model_validate(g, strict=False) for n, g in self.groups.items()}
        # the rings up to this one, validated one by one: the rollout's rules (its last ring's) were checked when it was declared
        rollout = RolloutConfig.model_construct(
            name=self.rollout, model=self.model, rings=self.ring_configs(), control_holdback=self.control_holdback
        )
        return rollout, groups

    @property
    def apply(self) -> str:
        return f"run `pulumi up --stack {self.stack}`"


def _gate(hub: LocalHub, p: LocalRingProps) -> tuple[GateInputs, Decision]:
    rollout, groups = p.rollout_config()
    plans = tuple(ring_plans(hub, rollout, groups, complete=p.index == p.total_rings - 1))
    if not plans[p.index].target.selector:
        raise RuntimeError(
            f"ring {p.ring!r} of rollout {p.rollout!r} has no devices in the local hub {p.hub}: under `pulumi up` nothing registers "
            f"the stack's simulated devices. Run `edgefleet fleet run --stack {p.stack}` in another terminal (it registers them and "
            "runs the fleet until Ctrl-C), then `pulumi up` again"
        )
    gate = GateInputs(
        rollout=p.rollout,
        ring=p.ring,
        index=p.index,
        total_rings=p.total_rings,
        rings=plans,
        declared=p.declared(),
        poll_seconds=p.poll_seconds,
        apply=p.apply,
    )
    decision = gate_decision(gate, hub, restore_hint=_restore_hint)
    if decision.action == "refused":
        raise GateFailed(f"{decision.problem}. Fix: {decision.fix}")
    return gate, decision


def deploy_ring(props: dict[str, Any]) -> list[str]:
    """The RingDeployment resource: records the rollout's intent (so the gates resume this exact plan, with
    the same signed desired state) and points the ring's devices at it. Returns the ring's devices."""
    p = LocalRingProps.of(props)
    hub = LocalHub(p.hub)
    gate, decision = _gate(hub, p)
    ring = gate.rings[p.index]
    if decision.action in ("run", "resume"):
        plan = plan_for(p.rollout, decision, gate.declared, LocalKeySigner(p.key_file))
        with hub.lease(p.rollout, owner="pulumi up (ring deployment)"):
            progress = engine_for(hub, p.key_file, p.poll_seconds).start(plan)
            promoting = progress["status"] == RolloutStatus.RUNNING and all(
                r["state"] == RingState.PASSED for r in progress["rings"][: p.index]
            )
            # in its current phase: a ring that shadows first gets the version it runs with the candidate beside it
            want = plan.ring_desired(ring, progress["rings"][p.index] if p.index < len(progress["rings"]) else None)
            if promoting and hub.desired(ring.target) != want:  # never during a rollback, never past an unpassed gate
                hub.set_desired(ring.target, want)
    return list(ring.target.selector)


def run_gate(props: dict[str, Any]) -> Progress:
    """The RingGate resource: the shared driver over the local hub, holding the rollout's lease (`edgefleet up` may
    drive the same rings) while the stack's fleet (`edgefleet fleet run`) runs the devices."""
    p = LocalRingProps.of(props)
    hub = LocalHub(p.hub)
    gate, decision = _gate(hub, p)
    fleet_lock = lock_path(Path(p.hub), "fleet")
    if decision.action != "up-to-date" and lock_holder(fleet_lock) is None:
        raise RuntimeError(
            f"no local fleet is running on the hub {p.hub} (nobody holds {fleet_lock}), so ring {p.ring!r} could only time out. "
            f"Run `edgefleet fleet run --stack {p.stack}` in another terminal, then `pulumi up` again"
        )
    signer = LocalKeySigner(p.key_file)
    return drive_gate(
        gate,
        hub,
        signer,
        WallClock(),
        decision=decision,
        lease=lambda: hub.lease(p.rollout, owner="pulumi up (ring gate)"),
        trust=repository_for_uri(gate.declared.uri, signer),  # the store the artifact is in is the TUF repository
    )
