"""Which build (variant) of the shipped version each ring's devices get, and the bytes that takes, before deploy.

The choice is the device's own (edgefleet_agent/variants.py `choose`), made here over the hardware the ring's devices
have (membership.py: each registered local device's arch and providers, or a cloud group's hardware profile), so the
plan shows what the devices will download. Pure over the manifest and those counts.
"""

from __future__ import annotations

from typing import Any, Mapping

from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.variants import DeviceFacts, NoVariantFits, choose

Hardware = tuple[str, tuple[str, ...], int]  # arch, execution providers, memory MB


def parse_manifest(manifest: Mapping[str, Any] | None) -> ModelManifest | None:
    """The graph's manifest as the agent reads it; None when absent or not readable (an older or broken one: the plan
    then shows no builds rather than guessing)."""
    if not isinstance(manifest, Mapping):
        return None
    try:
        return ModelManifest.model_validate(dict(manifest))
    except ValueError:
        return None


def ring_variants(
    manifest: ModelManifest, hardware: Mapping[Hardware, int | None]
) -> tuple[dict[str, dict[str, int | None]], dict[str, Any] | None]:
    """({kind: {devices, bytes, size}}, the devices that fit no build with why, or None). `hardware` maps each kind of
    device in the ring to how many there are (None: not known before deploy; devices and bytes are then None too)."""
    out: dict[str, dict[str, int | None]] = {}
    unfit: dict[str, Any] | None = None
    for (arch, providers, memory), n in sorted(hardware.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        device = DeviceFacts(
            f"{arch}/{'+'.join(p.removesuffix('ExecutionProvider') for p in providers)}/{memory}MB", arch, providers, memory
        )
        try:
            build = choose(manifest, device)
        except NoVariantFits as exc:
            unfit = unfit or {"devices": 0, "reasons": []}
            unfit["devices"] = None if n is None or unfit["devices"] is None else unfit["devices"] + n
            unfit["reasons"].append(str(exc))
            continue
        row = out.setdefault(build.kind, {"devices": 0, "bytes": 0, "size": build.size})
        if n is None or row["devices"] is None:
            row["devices"] = row["bytes"] = None
        else:
            row["devices"] += n
            row["bytes"] = row["devices"] * build.size
    return out, unfit
