"""Load-time checks for stacks with local groups, so `edgefleet plan`, `policy` and `up` refuse the same stacks:

- every simulated device's hardware is its groups' profile, which plans, policies and model targets are checked
  against (a batch that says otherwise is a config error);
- every ring selects at least one device (a ring of none would wait for its deadline and fail a version no device
  ever ran);
- two rollouts of one model never reach the same device (the second would set a version the first's gates never
  judged, on devices the first one's rollback would not cover);
- a declared capture store (`edgefleet:capture.store`) is a directory of its own, never the model store.
"""

from __future__ import annotations

from typing import Any

from components.local.captures import store_problems
from components.local.fleet import local_devices
from components.rollout.membership import Device, ring_members
from components.stack import PROJECT, Problem
from edgefleet_agent.contract.errors import ConfigError


def check_stack(cfg: Any) -> list[Problem]:
    out = store_problems(cfg)
    if out:
        return out
    try:
        devices = local_devices(cfg)
    except ConfigError as exc:
        key, _, problem = exc.problem.partition(": ")
        return [(key.removeprefix(f"{PROJECT}:"), problem, exc.fix or "")]
    if not devices:
        return []
    fleet = [Device(d.id, d.labels) for d in devices]
    groups = {g.name: g for g in cfg.groups}
    out: list[Problem] = []
    reached: dict[str, tuple[int, str, set[str]]] = {}  # model -> the first local rollout of it: index, name, devices
    for i, rollout in enumerate(cfg.rollouts):
        if not all(cfg.group_platform(groups[r.group]) == "local" for r in rollout.rings if r.group in groups):
            continue
        members = ring_members(rollout.name, list(rollout.rings), groups, fleet)
        for j, ring in enumerate(rollout.rings):
            if not members.get(ring.name):
                out.append(
                    (
                        f"rollouts[{i}].rings[{j}]",
                        f"ring {ring.name!r} of rollout {rollout.name!r} selects no device of the local fleet "
                        f"(group {ring.group!r}{', labels ' + str(dict(ring.labels)) if ring.labels else ''}"
                        f"{f', the first {ring.percent}%' if ring.percent is not None else ''})",
                        "give the ring devices (a larger percent, labels the devices carry, more devices in edgefleet:local.devices) or remove it",
                    )
                )
        mine = {d for ids in members.values() for d in ids}
        if rollout.model in reached:
            first_i, first, theirs = reached[rollout.model]
            both = sorted(mine & theirs)
            if both:
                out.append(
                    (
                        f"rollouts[{i}]",
                        f"rollouts {first!r} (rollouts[{first_i}]) and {rollout.name!r} both ship model {rollout.model!r} to "
                        f"{len(both)} of the same devices ({', '.join(both[:3])}{'…' if len(both) > 3 else ''}): each would set versions "
                        "the other's gates never judged",
                        "give each rollout of a model its own devices, or make them one rollout",
                    )
                )
        else:
            reached[rollout.model] = (i, rollout.name, mine)
    return out
