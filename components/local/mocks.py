"""What the local dynamic providers compute at deploy time, as `edgefleet synth` shows it (never a real value)."""

from __future__ import annotations

from typing import Any

COMPUTED = "[computed at deploy]"
PREFIX = "pulumi-python:dynamic/edgefleet-local:"


def computed(type_: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any] | None:
    if not type_.startswith(PREFIX):
        return None
    kind = type_.removeprefix(PREFIX)
    return {
        "ModelStore": {"uri": COMPUTED},
        "SigningKey": {"key_id": COMPUTED, "public_key_pem": COMPUTED},
        "Artifact": {"uri": COMPUTED, "signature": COMPUTED},
        "RingDeployment": {"devices": COMPUTED},
        "RingGate": {"gate": f"{inputs.get('rollout')}:{inputs.get('ring')}:{COMPUTED}", "measured": COMPUTED},
    }.get(kind)
