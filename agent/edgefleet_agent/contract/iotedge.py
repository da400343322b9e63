"""The Azure IoT Edge wire format: the agent module twin's desired and reported properties.

desired: `properties.desired` = {"schemaVersion": AGENT_FORMAT, "trust": {"keyId", "publicKeyPem"}, "store": {"sasToken"},
"models": {<model_key(model)>: agent_desired(...)}}. IoT Hub holds at most 4 KB in a twin string, so the manifest and
signature come in `<name>Chunks` pieces named the way IoT Edge splits createOptions; `desired_from_agent` joins exactly
that many, which reproduces the signed bytes.
reported: `properties.reported.models.<key>` = exactly REPORTED_FIELDS (`reported_entry`).

The controller writes the desired side (components/azure/manifest.py), the agent reads it
(edgefleet_agent/transports/iotedge.py); both import the format from here.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

from edgefleet_agent.contract.state import DesiredModel, DeviceReport, DeviceStatus

AGENT_FORMAT = "edgefleet-agent/1"  # schemaVersion of the agent module twin's desired properties
TWIN_STRING_LIMIT = 4 * 1024  # IoT Hub: one string value in a twin, UTF-8 bytes
CHUNKED_FIELDS = ("manifest", "signature")  # model entry strings split like createOptions when over TWIN_STRING_LIMIT
MAX_CHUNKS = 100  # `name`, then `name01` … `name99`: IoT Edge's two-digit suffixes
CHUNK_KEY_RE = re.compile(rf"^({'|'.join(CHUNKED_FIELDS)})(0[1-9]|[1-9][0-9])$")
REDACTED = "<redacted>"


class ReportedEntry(TypedDict):
    """One model's reported properties. None is sent as null, which IoT Hub applies as "remove this property"."""

    version: str | None
    sha256: str | None
    status: DeviceStatus
    error: str | None
    failedVersion: str | None
    inferences: int
    errors: int
    invalidOutputs: int
    p99LatencyMs: float | None
    agentVersion: str
    ring: object  # echoed from the desired entry as the twin holds it
    rollout: object


REPORTED_FIELDS = tuple(ReportedEntry.__annotations__)


def model_key(model: str) -> str:
    """The model's key under `models` in the twin: query paths cannot carry '-' or start with a digit."""
    key = model.replace("-", "_")
    return f"_{key}" if key[:1].isdigit() else key


def split_utf8(text: str, limit: int = TWIN_STRING_LIMIT) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes, cut between characters, so joining them gives the same bytes."""
    data = text.encode("utf-8")
    out, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never inside a multi-byte character
            end -= 1
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out or [""]


def chunk_keys(name: str, count: int) -> list[str]:
    return [name, *(f"{name}{i:02d}" for i in range(1, count))]


def chunked(name: str, text: str) -> dict[str, str | int]:
    """A long string as IoT Edge writes createOptions (`name`, `name01`, `name02`, …), with the number of pieces:
    a layer replaces the model entry of an earlier one, and a twin notification that carries the whole desired
    properties drops keys without nulling them, so a longer predecessor's `name02` may linger where the agent merged it."""
    parts = split_utf8(text)
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"{name} is {len(text.encode())} bytes; a twin entry holds at most {MAX_CHUNKS} chunks of {TWIN_STRING_LIMIT}")
    return {**dict(zip(chunk_keys(name, len(parts)), parts, strict=True)), f"{name}Chunks": len(parts)}


def join_chunks(data: dict[str, Any], name: str) -> str:
    """The string `chunked` split. Raises KeyError for a missing piece, ValueError for a bad count or piece. An entry
    without a count was written before chunking: it is the one string `name`."""
    count = data.get(f"{name}Chunks", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CHUNKS:
        raise ValueError(f"{name}Chunks is {count!r}, not a number of chunks from 1 to {MAX_CHUNKS}")
    parts = []
    for key in chunk_keys(name, count):
        if key not in data:
            raise KeyError(key)
        if not isinstance(data[key], str):
            raise ValueError(f"{key} is not a string")
        parts.append(data[key])
    return "".join(parts)


def agent_desired(desired: DesiredModel, ring_key: str) -> dict[str, Any]:
    """One model as the agent module twin carries it (camelCase, no nulls: a null deletes a twin property). The
    manifest and signature are chunked: IoT Hub limits each twin string to 4 KB, and a model.yaml may be longer."""
    out: dict[str, Any] = {
        "model": desired.model,
        "version": desired.version,
        "sha256": desired.sha256,
        "size": int(desired.size),
        "uri": desired.uri,
        **chunked("manifest", desired.manifest),
        **chunked("signature", desired.signature),
        "rollout": desired.rollout,
        "ring": ring_key,
    }
    if desired.rollback_order is not None:
        out["rollbackOrder"] = desired.rollback_order
        out["rollbackSignature"] = desired.rollback_signature
    return out


def desired_from_agent(data: dict[str, Any]) -> DesiredModel:
    """The DesiredModel a twin entry carries, chunks joined: the exact signed bytes."""
    try:
        size = int(data["size"])
    except (TypeError, ValueError):
        raise ValueError(f"size {data['size']!r} is not an integer") from None
    return DesiredModel(
        model=data["model"],
        version=data["version"],
        sha256=data["sha256"],
        size=size,
        uri=data["uri"],
        manifest=join_chunks(data, "manifest"),
        signature=join_chunks(data, "signature"),
        rollout=data.get("rollout", ""),
        rollback_order=data.get("rollbackOrder"),
        rollback_signature=data.get("rollbackSignature"),
    )


def reported_entry(report: DeviceReport, desired_entry: dict[str, Any], secret: str | None = None) -> ReportedEntry:
    """One model's reported properties, exactly the documented fields (ring and rollout echoed from desired)."""
    error = report.error
    if error and secret:
        error = error.replace(secret, REDACTED)
    return {
        "version": report.version,
        "sha256": report.sha256,
        "status": report.status,
        "error": error,
        "failedVersion": report.failed_version,
        "inferences": report.inferences,
        "errors": report.errors,
        "invalidOutputs": report.invalid_outputs,
        "p99LatencyMs": report.p99_latency_ms,
        "agentVersion": report.agent_version,
        "ring": desired_entry.get("ring"),
        "rollout": desired_entry.get("rollout"),
    }
