"""Which devices fall in which ring. Pure and deterministic, so plans, tests and the hub all agree.

A group selects devices by labels (all must match) or explicit ids. Within a group, devices are ordered by
a stable hash of (rollout, device id): a ring with `percent: 5` takes the first 5% of that order, the next
ring with `percent: 30` takes up to the first 30%, and so on. Adding devices to the fleet moves only the
new devices into rings; existing devices keep their ring as long as the ring's cut-off does not move past
them. Rings are disjoint: a device belongs to the first ring that selects it.

A rollout's control holdback (`control_holdback`, a share) keeps the last floor(share x n) devices of each of its
groups' order out of every ring: they stay on the previous version as the control group the rings' quality is
compared with, and follow once the last gate passes. Taken from the end of the order, it moves no device of a ring
whose percent is at most 100 x (1 - share).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from components.rollout.spec import DeviceGroupConfig, RingConfig


@dataclass(frozen=True)
class Device:
    id: str
    labels: dict[str, str] = field(default_factory=dict)


def in_group(device: Device, group: DeviceGroupConfig) -> bool:
    if group.devices and device.id in group.devices:
        return True
    return bool(group.labels) and all(device.labels.get(k) == v for k, v in group.labels.items())


def rank(rollout: str, device_id: str) -> str:
    return hashlib.sha256(f"{rollout}\0{device_id}".encode()).hexdigest()


def control_members(
    rollout: str, rings: list[RingConfig], groups: dict[str, DeviceGroupConfig], devices: list[Device], holdback: float
) -> list[str]:
    """The control holdback: per group the rings use, the last floor(holdback x members) devices of the rollout's order."""
    out: set[str] = set()
    if holdback <= 0:
        return []
    for name in dict.fromkeys(r.group for r in rings):
        members = sorted((d for d in devices if in_group(d, groups[name])), key=lambda d: rank(rollout, d.id))
        count = math.floor(len(members) * holdback + 1e-9)
        out.update(d.id for d in members[len(members) - count :] if count)
    return sorted(out)


def ring_members(
    rollout: str, rings: list[RingConfig], groups: dict[str, DeviceGroupConfig], devices: list[Device], holdback: float = 0.0
) -> dict[str, list[str]]:
    """Ring name -> sorted device ids (the control holdback's devices in none)."""
    taken: set[str] = set(control_members(rollout, rings, groups, devices, holdback))
    out: dict[str, list[str]] = {}
    for ring in rings:
        group = groups[ring.group]
        members = sorted(
            (d for d in devices if in_group(d, group) and all(d.labels.get(k) == v for k, v in ring.labels.items())),
            key=lambda d: rank(rollout, d.id),
        )
        if ring.percent is not None:
            members = members[: math.ceil(len(members) * ring.percent / 100)]
        chosen = [d.id for d in members if d.id not in taken]
        taken.update(chosen)
        out[ring.name] = sorted(chosen)
    return out


def selectors_may_overlap(a: DeviceGroupConfig, b: DeviceGroupConfig) -> bool:
    """Whether two device groups can select one device: on one platform, shared ids, or labels no key of which differs.
    (policies/rollouts.py restates it for the standard library.)"""
    if a.platform != b.platform:
        return False
    if set(a.devices) & set(b.devices):
        return True
    return bool(a.labels) and bool(b.labels) and all(a.labels[k] == b.labels[k] for k in a.labels.keys() & b.labels.keys())
