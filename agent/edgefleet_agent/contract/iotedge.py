"""The Azure IoT Edge wire format: the agent module twin's desired and reported properties.

desired: `properties.desired` = {"schemaVersion": AGENT_FORMAT, "trust": {"keyId", "publicKeyPem"}, "store": {"sasToken"},
"models": {<model_key(model)>: agent_desired(...)}}; a version with variants lists them in its entry as `variants` =
{<kind>: {"uri", "sha256", "size"}} (an object: twins hold no arrays); a group with maintenance windows adds
`maintenanceWindows`, the windows' document as one string (contract/windows.py; a string, so a layer's windows replace
an earlier layer's whole instead of merging with them), which a forward swap waits for; and a ring with a download cap
(its own or its group's `max_download_bytes_per_second`) carries it as `maxDownloadBytesPerSecond` (a positive integer;
absent: no cap). IoT Hub holds at most 4 KB in a twin string, so the manifest and
signature come in `<name>Chunks` pieces named the way IoT Edge splits createOptions; `desired_from_agent` joins exactly
that many, which reproduces the signed bytes.
reported: `properties.reported.models.<key>` = exactly REPORTED_FIELDS (`reported_entry`). `quality` is what the
applications' requests showed in the window (contract/telemetry.py), bounded so that a module twin's reported
properties (32 KB) hold it for many models: {"n": classified requests, "classes": {"c<class>" | "other": count} (the
window's top-K classes and "other"), "confidence": {"b0" .. "b9": count}, "timed": timed requests, "p50Ms": their median,
"shadow": {"version", "sha256", "compared", "agree", "errors", "invalid", "p50Ms", "servedP50Ms"}, "labelled": {"n",
"correct"}}, each part null when the window had none. Twin patches merge, so a class the window did not see is sent as
null (`reported_entry(previous=...)`): the twin holds this window's counts only, and the gate's queries sum them.
`variant` is the build served (fp32, int8, fp16; null before agent 0.4.0 or with nothing served), so that the gate
groups a ring's devices by build (components/azure/hub.py). `deferred` is why a swap to the desired version waits
(`outside the maintenance window (<windows>)`, `deferred by an application`; contract/state.py), null when nothing
holds it: `edgefleet status` groups a ring's held devices by it. Agents before it write no such key, read as not held.

The controller writes the desired side (components/azure/manifest.py), the agent reads it
(edgefleet_agent/transports/iotedge.py); both import the format from here.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypedDict

from edgefleet_agent.contract.state import DesiredModel, DeviceReport, DeviceStatus
from edgefleet_agent.contract.telemetry import OTHER, Labelled, Latency, Predictions, Shadow

AGENT_FORMAT = "edgefleet-agent/1"  # schemaVersion of the agent module twin's desired properties
TWIN_STRING_LIMIT = 4 * 1024  # IoT Hub: one string value in a twin, UTF-8 bytes
CHUNKED_FIELDS = ("manifest", "signature")  # model entry strings split like createOptions when over TWIN_STRING_LIMIT
MAX_CHUNKS = 100  # `name`, then `name01` … `name99`: IoT Edge's two-digit suffixes
CAP_KEY = "maxDownloadBytesPerSecond"  # a model entry's download cap, bytes a second
CHUNK_KEY_RE = re.compile(rf"^({'|'.join(CHUNKED_FIELDS)})(0[1-9]|[1-9][0-9])$")
REDACTED = "<redacted>"
# Where the module serves the device's other modules: inside the IoT Edge network (Docker's bridge network
# azure-iot-edge), reached by module name, never on a host port: http://edgefleet-agent:8000/v2/...
ENDPOINT_HOST_ENV, ENDPOINT_PORT_ENV = "EDGEFLEET_AGENT_HOST", "EDGEFLEET_AGENT_PORT"
MODULE_LISTEN_HOST = "0.0.0.0"  # the module's own network namespace: its interfaces face only the IoT Edge network
ENDPOINT_PORT = 8000


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
    quality: dict[str, Any] | None  # the window's requests, bounded (see the module's docstring)
    variant: str | None  # the build served (fp32, int8, fp16): the gate judges each build's devices on their own
    deferred: str | None  # why a swap to the desired version waits (DeviceReport.deferred); null: nothing held


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
    if desired.windows:  # one string: replaced whole by a later layer, never merged key by key
        out["maintenanceWindows"] = desired.windows
    if desired.variants:  # twins hold no arrays: keyed by kind
        out["variants"] = {v["kind"]: {"uri": v["uri"], "sha256": v["sha256"], "size": int(v["size"])} for v in desired.variants}
    if desired.download_rate is not None:  # written only when set: an uncapped ring's entry is what it always was
        out[CAP_KEY] = desired.download_rate
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
        variants=_variants(data.get("variants")),
        windows=_windows(data.get("maintenanceWindows")),
        max_download_bytes_per_second=download_cap(data.get(CAP_KEY)),
    )


def download_cap(value: Any) -> int | None:
    """The entry's `maxDownloadBytesPerSecond` as the desired state's cap: a positive integer, else None (no cap). A
    value no controller writes (zero, negative, fractional, text, a boolean) is ignored, as the local hub's desired
    state ignores it (`DesiredModel.download_rate`), rather than failing the install."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _windows(data: Any) -> str | None:
    """The entry's maintenanceWindows document, as text. Not checked here: windows that do not parse are refused by the
    agent for a forward swap (never read as "no windows"), while a rollback in the same entry still goes through."""
    if data is None or data == "":
        return None
    return data if isinstance(data, str) else json.dumps(data, sort_keys=True)


def _variants(data: Any) -> list[dict[str, Any]] | None:
    """The twin's `variants` ({kind: {uri, sha256, size}}, nulls left by a twin merge dropped) as the desired state's."""
    if not isinstance(data, dict):
        return None
    out = [{"kind": kind, **v} for kind, v in sorted(data.items()) if isinstance(v, dict) and isinstance(v.get("uri"), str)]
    return out or None


def class_key(cls: str) -> str:
    """A class's key in the twin: query paths cannot start with a digit."""
    return cls if cls == OTHER else f"c{cls}"


def quality_entry(report: DeviceReport) -> dict[str, Any] | None:
    """The report's telemetry as the twin carries it (None: the window had no requests)."""
    preds = Predictions.from_json(report.predictions) if report.predictions else None
    latency = Latency.from_json(report.latency) if report.latency else None
    shadow = Shadow.from_json(report.shadow) if report.shadow else None
    labelled = Labelled.from_json(report.labelled) if report.labelled else None
    if preds is None and latency is None and shadow is None and labelled is None:
        return None
    classified = preds is not None and preds.kind == "classes"
    bounded = preds.bounded() if preds is not None and classified else None
    timed = latency.n if latency is not None else 0
    return {
        "n": bounded.n if bounded is not None else 0,
        "classes": {class_key(k): v for k, v in sorted(bounded.classes.items())} if bounded is not None else None,
        "confidence": {f"b{i}": c for i, c in enumerate(bounded.confidence)} if bounded is not None and bounded.confidence else None,
        "timed": timed,
        "p50Ms": latency.quantile(0.5) if latency is not None and timed else report.p50_latency_ms,
        "shadow": None
        if shadow is None
        else {
            "version": shadow.version,
            "sha256": shadow.sha256,
            "compared": shadow.compared,
            "agree": shadow.agree,
            "errors": shadow.errors,
            "invalid": shadow.invalid,
            "p50Ms": shadow.latency.quantile(0.5),
            "servedP50Ms": shadow.served_latency.quantile(0.5),
        },
        "labelled": None if labelled is None else {"n": labelled.n, "correct": labelled.correct},
    }


def _nulled(new: Any, old: Any) -> Any:
    """`new` as a merge patch over `old`: keys of `old` that `new` lacks are sent as null, so none lingers."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    out = {k: _nulled(v, old.get(k)) for k, v in new.items()}
    out.update({k: None for k in old if k not in new})
    return out


def reported_entry(
    report: DeviceReport, desired_entry: dict[str, Any], secret: str | None = None, previous: dict[str, Any] | None = None
) -> ReportedEntry:
    """One model's reported properties, exactly the documented fields (ring and rollout echoed from desired). `previous`:
    the entry the twin holds (the last one sent), whose quality keys this window lacks are nulled."""
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
        "quality": _nulled(quality_entry(report), (previous or {}).get("quality")),
        "variant": report.variant,
        "deferred": report.deferred,
    }
