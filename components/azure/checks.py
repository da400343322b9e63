"""Azure-specific rules over a stack's config. Pure, so `edgefleet policy` and the CrossGuard pack can call them.

AzurePlatform runs them before it declares anything, so a bad stack fails naming the stack file and key.
"""

from __future__ import annotations

from edgefleet.config import StackConfig

from components.azure.manifest import label_problems

METRICS_INTERVAL_SECONDS = 300          # IoT Hub evaluates deployments and their metrics about every five minutes


def check_azure_stack(cfg: StackConfig) -> list[tuple[str, str, str]]:
    """(key, problem, fix) for each rule an Azure stack breaks."""
    out: list[tuple[str, str, str]] = []
    if "azure" not in cfg.platforms:
        return out
    for i, g in enumerate(cfg.groups):
        if cfg.group_platform(g) != "azure":
            continue
        out += label_problems(dict(g.labels), f"groups[{i}].labels")
        for j, d in enumerate(g.devices):
            if "'" in d or "\\" in d:
                out.append((f"groups[{i}].devices[{j}]", f"device id {d!r} cannot be quoted in a target condition", "use the device's IoT Hub id"))
    groups = {g.name: g for g in cfg.groups}
    for i, r in enumerate(cfg.rollouts):
        platforms = {cfg.group_platform(groups[ring.group]) for ring in r.rings if ring.group in groups}
        if "azure" not in platforms:
            continue
        if len(platforms) > 1:
            out.append((f"rollouts[{i}].rings", f"rollout {r.name!r} has rings on {sorted(platforms)}; a rollout's gates drive one platform",
                        "declare one rollout per platform (the same model may be in several)"))
            continue
        for j, ring in enumerate(r.rings):
            key = f"rollouts[{i}].rings[{j}]"
            out += label_problems(dict(ring.labels), f"{key}.labels")
            if ring.gate.deadline_seconds < 2 * METRICS_INTERVAL_SECONDS:
                out.append((f"{key}.gate.deadline_seconds", f"{ring.gate.deadline_seconds:g}s is shorter than two IoT Hub metric evaluations "
                            f"({2 * METRICS_INTERVAL_SECONDS}s); healthy rings would fail before their devices are counted",
                            f"use at least {2 * METRICS_INTERVAL_SECONDS} for rings on Azure"))
            for k, earlier in enumerate(r.rings[:j]):
                if earlier.group == ring.group and set(earlier.labels.items()) <= set(ring.labels.items()):
                    out.append((f"{key}.labels", f"ring {ring.name!r} selects only devices that ring {earlier.name!r} (rings[{k}]) already took; "
                                "rings are disjoint, so it would be empty", "give the ring a twin tag of its own, such as {ring: early}"))
                    break
    return out
