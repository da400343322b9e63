"""The one gate driver: a ring gate's inputs become an engine run, the same on every platform.

Under `pulumi up` each ring's gate resource (components/dynamic.py, RingGateProvider) calls `run_gate` with the
platform's hub (how it reads and sets rings), a signer for rollback orders and the typed inputs of the gate. The
platform supplies only those; deciding what the declaration means (components/rollout/decide.py), running the
engine to this ring's verdict and failing with the engine's report are the same everywhere.

With the platform's TUF repository (`trust`, a `TrustHook`: components/trust/repository.py over the platform's store),
the driver lists the declared version as a signed target and re-signs the timestamp before it deploys (a version
revoked earlier stays out) and, when a gate rejected a version some device served, removes it from the signed targets,
so every device refuses it afterwards even if its old desired state is replayed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

from components.rollout.decide import Decision, RestoreHint, attempt_id, burned, decide, plan_for
from components.rollout.engine import RingPlan, RolloutEngine
from components.rollout.hub import Clock, FleetHub
from components.rollout.progress import FAILED, Progress, RingState, RolloutStatus, as_progress, last_good, rollout_id
from components.rollout.report import failure_summary
from components.rollout.rollback import rollback_authorizer
from edgefleet_agent.contract.signing import Signer
from edgefleet_agent.contract.state import DesiredModel


class TrustHook(Protocol):
    """The platform's TUF repository, as the driver uses it (components/trust/repository.py implements it)."""

    def publish_desired(self, desired: DesiredModel) -> object:
        """Lists the declared version as a signed target (never one that was revoked)."""
        ...

    def refresh(self) -> object:
        """Re-signs the timestamp (devices refuse new installs on expired metadata)."""
        ...

    def revoke(self, model: str, version: str, sha256: str, reason: str) -> bool:
        """Removes the artifact from the signed targets; True if anything changed."""
        ...


def revoke_rejected(trust: TrustHook | None, record: Mapping[str, Any]) -> bool:
    """A version a gate rejected leaves the signed targets once it is burned (decide.burned: a ring served it and a
    device ran it); one that was only ever shadowed, or that no device ran, may be declared again, so it stays."""
    if trust is None or not burned(dict(record)):
        return False
    return trust.revoke(record["model"], record["version"], record["sha256"], failure_summary(as_progress(dict(record))))


class GateHub(FleetHub, Protocol):
    def rollouts(self, rollout: str) -> list[dict[str, Any]]:
        """The rollout's progress records, oldest first."""
        ...


@dataclass(frozen=True)
class GateInputs:
    """What a ring's gate resource carries, typed: this ring, the rings up to it, and the declared artifact."""

    rollout: str
    ring: str
    index: int
    total_rings: int  # rings the rollout declares; those after `rings` are counted in a failure report
    rings: tuple[RingPlan, ...]  # rings 0..index: how the platform addresses each, and its gate
    declared: DesiredModel  # the artifact the stack declares (its rollout id comes from the decision)
    poll_seconds: float
    apply: str = "run `pulumi up`"  # the command that applies the stack, for refusals' fixes

    @property
    def last(self) -> bool:
        return self.index == self.total_rings - 1


class GateFailed(RuntimeError):
    """The gate did not pass: the engine rolled the touched rings back, or the declaration was refused. The message
    is what `pulumi up` prints."""


def gate_decision(
    gate: GateInputs, hub: GateHub, restore_hint: RestoreHint | None = None, model_dir: str | None = None, stack: str | None = None
) -> Decision:
    records = hub.rollouts(gate.rollout)
    current = {r.name: hub.desired(r.target) for r in gate.rings}
    decision = decide(
        gate.rollout,
        gate.rings,
        records,
        current,
        gate.declared,
        model_dir=model_dir,
        apply=gate.apply,
        stack=stack,
        restore_hint=restore_hint,
    )
    if decision.action == "up-to-date" and not _passed(decision.record, gate.ring):
        # Every ring is set to the declared artifact, yet no record shows this ring's gate passed: a platform whose own
        # deployment resource set the ring before its gate ran (AWS, Azure). Nobody judged it: judge it now.
        rid = (
            decision.record["rollout_id"]
            if decision.record and decision.record["status"] not in FAILED
            else attempt_id(records, rollout_id(gate.rollout, gate.declared))
        )
        decision = replace(decision, action="run", rollout_id=rid, previous=last_good(records, before=rid))
    return decision


def run_gate(
    gate: GateInputs,
    hub: GateHub,
    signer: Signer,
    clock: Clock,
    *,
    decision: Decision | None = None,
    lease: Callable[[], AbstractContextManager[Any]] = nullcontext,
    on_update: Callable[[Progress], None] | None = None,
    trust: TrustHook | None = None,
) -> Progress:
    """Runs the engine until this ring's gate passes (the whole rollout for the last ring) and returns the record;
    raises GateFailed when the declaration is refused or the engine rolled back."""
    decision = decision or gate_decision(gate, hub)
    if decision.action == "refused":
        if decision.status == "previously-rolled-back" and decision.record is not None:
            # a platform whose deployment resource runs before its gate has just set the rejected version again: undo that
            revoke_rejected(trust, decision.record)  # a replay of the rejected desired state finds it revoked
            restored = restore_rollback(gate, hub, decision.record)
            again = (
                f" Rings {', '.join(restored)} were set to it again and are back on the version they were rolled back to."
                if restored
                else ""
            )
            raise GateFailed(f"{failure_summary(as_progress(decision.record))}.{again} {decision.problem}. Fix: {decision.fix}")
        raise GateFailed(f"{decision.problem}. Fix: {decision.fix}")
    if decision.action == "up-to-date":
        assert decision.record is not None
        return as_progress(decision.record)
    plan = plan_for(gate.rollout, decision, gate.declared, signer)
    engine = RolloutEngine(hub, clock, rollback_authorizer(signer), poll_seconds=gate.poll_seconds, on_update=on_update)
    if trust is not None:
        trust.publish_desired(gate.declared)  # the declared version is a signed target (a revoked one stays out)
        trust.refresh()  # and the timestamp is fresh before this ring deploys
    with lease():
        progress = engine.run(plan, until_ring=None if gate.last else gate.index)
    revoke_rejected(trust, progress)
    if progress["status"] in FAILED:
        raise GateFailed(failure_summary(progress, later_rings=gate.total_rings - len(gate.rings)))
    if progress["status"] == RolloutStatus.SUPERSEDED:
        raise GateFailed(f"rollout {progress['rollout_id']} was superseded by a newer rollout of {gate.rollout!r}; run `pulumi up` again")
    return progress


def restore_rollback(gate: GateInputs, hub: GateHub, record: dict[str, Any]) -> list[str]:
    """A finished rollback stays in force: the rings it covered that run the rejected version again go back."""
    rb = record.get("rollback") or {}
    target = DesiredModel.from_json(rb.get("desired"))
    restored = []
    for ring in gate.rings:
        if ring.name in rb.get("rings", []) and hub.desired(ring.target) != ring.capped(target):
            hub.set_desired(ring.target, ring.capped(target))
            restored.append(ring.name)
    return restored


def _passed(record: dict[str, Any] | None, ring: str) -> bool:
    return record is not None and any(r["name"] == ring and r["state"] == RingState.PASSED for r in record["rings"])
