"""How many devices each ring of each rollout reaches, before deploy: counted over the devices the local fleet
registers, or as a cloud stack declares its rings (`edgefleet:<platform>.rings.<ring>.devices`).

Pure over a graph's stack config; imports the stack config model, the rollout engine's membership function and
the local fleet's device list when asked (pydantic, no Pulumi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edgefleet_agent.contract.errors import ConfigError


def local_devices(cfg) -> list:
    """The local fleet's devices exactly as the local platform registers them (components/local/fleet.py),
    as the membership module's Devices, so the plan's rings are the rings the hub will form."""
    from components.local.fleet import local_devices as fleet_devices
    from components.rollout.membership import Device

    return [Device(d.id, dict(d.labels)) for d in fleet_devices(cfg)]


@dataclass(frozen=True)
class Membership:
    """Per rollout: ring -> device count, and how many devices the rollout's rings hold.

    Local rollouts are counted over the devices the local fleet registers, exactly. Cloud rings select by
    thing attributes / twin tags, so the only size they have before deploy is the one the stack declares
    (`edgefleet:aws.rings.<ring>.devices`); those rollouts are listed in `declared`.
    """

    rings: dict[str, dict[str, int]]
    rollout_devices: dict[str, int]
    fleet: int | None
    declared: frozenset[str] = frozenset()
    control: Mapping[str, int] | None = None  # rollout -> devices its control holdback keeps on the previous version
    # rollout -> ring -> the hardware its devices report, as (arch, execution providers, memory MB) -> devices: what
    # decides which build each device gets (plan/variants.py); local rings from each registered device's arch and
    # providers (memory: its group's profile), declared rings from their group's hardware profile
    hardware: Mapping[str, Mapping[str, Mapping[tuple[str, tuple[str, ...], int], int]]] | None = None

    def counted(self, rollout: str) -> str | None:
        if rollout not in self.rings:
            return None
        return "declared" if rollout in self.declared else "local"


def _declared_sizes(cfg, platform: str) -> Mapping[str, int]:
    """Ring name -> the devices the stack declares it must reach, for a cloud platform that declares them."""
    policies = getattr(getattr(cfg, platform, None), "rings", None) or {}
    return {name: p.devices for name, p in policies.items() if isinstance(getattr(p, "devices", None), int)}


def membership(graph: Mapping[str, Any]) -> Membership:
    """Ring membership from the graph's stack config (the same function the hub uses); empty when not computable."""
    if not graph.get("config") or not graph.get("stack_file"):
        return Membership({}, {}, None)
    from pydantic import ValidationError

    from components.rollout.membership import control_members, in_group, ring_members
    from components.stack import StackConfig

    # Typed, but not held to today's cross-field rules: a base that a newer rule rejects (the PR that fixes it)
    # must still plan. The working tree's own synth has already enforced them on the head.
    try:
        cfg = StackConfig.model_validate(graph["config"])
    except ValidationError:
        return Membership({}, {}, None)
    try:
        devices = local_devices(cfg)
    except ConfigError:
        devices = []
    groups = {g.name: g for g in cfg.groups}
    if any(r.group not in groups for ro in cfg.rollouts for r in ro.rings):
        return Membership({}, {}, None)
    rings, totals, declared, control = {}, {}, set(), {}
    hardware: dict[str, dict[str, dict[tuple[str, tuple[str, ...], int], int]]] = {}
    facts = _device_facts(cfg) if devices else {}
    for ro in cfg.rollouts:
        rollout_groups = [groups[r.group] for r in ro.rings]
        platforms = {cfg.group_platform(g) for g in rollout_groups}
        if platforms == {"local"} and devices:
            holdback = ro.control_holdback
            members = ring_members(ro.name, ro.rings, groups, devices, holdback)
            rings[ro.name] = {r: len(ids) for r, ids in members.items()}
            memory = {r.name: groups[r.group].hardware.memory_mb for r in ro.rings}
            hardware[ro.name] = {}
            for r, ids in members.items():
                counts: dict[tuple[str, tuple[str, ...], int], int] = {}
                for dev in ids:
                    arch, providers = facts[dev]
                    key = (arch, providers, memory[r])
                    counts[key] = counts.get(key, 0) + 1
                hardware[ro.name][r] = counts
            totals[ro.name] = sum(1 for d in devices if any(in_group(d, g) for g in rollout_groups))
            if holdback:
                control[ro.name] = len(control_members(ro.name, ro.rings, groups, devices, holdback))
        elif len(platforms) == 1 and platforms != {"local"}:
            sizes = _declared_sizes(cfg, next(iter(platforms)))
            if sizes and all(r.name in sizes for r in ro.rings):
                rings[ro.name] = {r.name: sizes[r.name] for r in ro.rings}
                hardware[ro.name] = {
                    r.name: {(hw.arch, tuple(hw.execution_providers), hw.memory_mb): sizes[r.name]}
                    for r in ro.rings
                    if (hw := groups[r.group].hardware) is not None
                }
                totals[ro.name] = sum(rings[ro.name].values())
                declared.add(ro.name)
    return Membership(rings, totals, len(devices) if devices else None, frozenset(declared), control, hardware)


def _device_facts(cfg) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each registered local device's arch and execution providers, as the local platform registers them."""
    from components.local.fleet import local_devices as fleet_devices

    return {d.id: (d.arch, tuple(d.providers)) for d in fleet_devices(cfg)}
