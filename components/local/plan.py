"""Turns declarations (stack config, or a gate resource's inputs under `pulumi up`) into engine plans
against the local hub. Shared by the dynamic providers and `edgefleet up`, so both run the same rollout."""

from __future__ import annotations

from typing import Any

from edgefleet.config import DeviceGroupConfig, RingConfig, RolloutConfig
from edgefleet.signing import LocalKeySigner

from components.local.hub import LocalHub
from components.rollout.engine import FAILED, RingPlan, RolloutEngine, RolloutPlan, last_good, rollout_id
from components.rollout.hub import WallClock
from components.rollout.membership import ring_members
from components.rollout.report import failure_summary
from components.rollout.rollback import rollback_authorizer
from components.rollout.types import DesiredModel, RingTarget

def ring_plans(hub: LocalHub, rollout: RolloutConfig, groups: dict[str, DeviceGroupConfig], rid: str,
               rings: list[RingConfig] | None = None) -> list[RingPlan]:
    """Ring membership from the hub's device registry (pure function of registry and config)."""
    rings = list(rings if rings is not None else rollout.rings)
    members = ring_members(rollout.name, rings, groups, hub.devices())
    return [RingPlan(RingTarget(rollout=rollout.name, ring=r.name, index=i, selector=tuple(members[r.name])), r.gate)
            for i, r in enumerate(rings)]


def engine_for(hub: LocalHub, key_file: str, poll_seconds: float, on_update=None) -> RolloutEngine:
    return RolloutEngine(hub, WallClock(), rollback_authorizer(LocalKeySigner(key_file)), poll_seconds=poll_seconds, on_update=on_update)


# -- the Pulumi face: resources' inputs -> plans ------------------------------------------------------------
def desired_from_props(props: dict[str, Any]) -> DesiredModel:
    d = DesiredModel(model=props["model"], version=props["version"], sha256=props["sha256"], size=int(props["size"]),
                     uri=props["uri"], manifest=props["manifest"], signature=props["signature"])
    return DesiredModel(**{**d.__dict__, "rollout": rollout_id(props["rollout"], d)})


def _rollout_from_props(props: dict[str, Any]) -> tuple[RolloutConfig, dict[str, DeviceGroupConfig]]:
    rings = [RingConfig.model_validate(r, strict=False) for r in props["rings"]]
    groups = {n: DeviceGroupConfig.model_validate(g, strict=False) for n, g in props["groups"].items()}
    return RolloutConfig(name=props["rollout"], model=props["model"], rings=rings), groups


def ring_plan_from_props(hub: LocalHub, props: dict[str, Any], index: int) -> RingPlan:
    rollout, groups = _rollout_from_props(props)
    return ring_plans(hub, rollout, groups, rollout_id(props["rollout"], desired_from_props(props)))[index]


def run_gate(props: dict[str, Any]) -> dict[str, Any]:
    """Drives the engine through ring `index` (the whole rollout for the last ring); raises on rollback."""
    hub = LocalHub(props["hub"])
    rollout, groups = _rollout_from_props(props)
    desired = desired_from_props(props)
    rid = rollout_id(rollout.name, desired)
    plan = RolloutPlan(rollout.name, desired, last_good(hub.rollouts(rollout.name), before=rid), tuple(ring_plans(hub, rollout, groups, rid)))
    index = int(props["index"])
    last = index == int(props["total_rings"]) - 1
    progress = engine_for(hub, props["key_file"], float(props["poll_seconds"])).run(plan, until_ring=None if last else index)
    if progress["status"] in FAILED:
        raise RuntimeError(failure_summary(progress, later_rings=int(props["total_rings"]) - len(progress["rings"])))
    return progress
