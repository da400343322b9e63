"""Desired state and device reports: what the controller tells a device and what the device says back.

JSON on the wire (the local hub, IoT Hub twins and Greengrass configuration carry these or their fields).
Each carries `format`, the version of its own shape: an agent refuses a desired state in a format newer than it
reads and says so, instead of failing to parse it; within one format, fields are only ever added, with
defaults, so an older reader ignores what it does not know. Format 1 is written without the key, byte for byte
what agents before formats existed read and wrote.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from edgefleet_agent.contract.errors import FormatError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Doc = TypeVar("_Doc", bound="DataclassInstance")

DESIRED_FORMAT = 4  # 2: a desired state may carry a candidate to shadow and a sample-capture setting (agent 0.3.0)
# 3: it may list the version's variants, where each build is published (agent 0.4.0)
# 4: it may carry the group's maintenance windows, which a forward swap waits for (agent 0.5.0; an older one would ignore them)
REPORT_FORMAT = 1
DEFERRED_LIMIT = 200  # characters of a report's `deferred`: what `edgefleet status` groups a ring's held devices by
DEFERRED_BY_APPLICATION = "deferred by an application"

DeviceStatus = Literal["ok", "failed", "updating", "idle"]


_UNWRITTEN_WHEN_NONE = (
    "shadow",
    "capture",
    "capture_failed",
    "variant",
    "update",
    "variants",
    "max_download_bytes_per_second",
    "windows",
    "deferred",
)


def _unwritten_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """Format 1, and fields a newer format added but this document leaves unset, are not written: an older reader
    gets exactly the bytes it always read."""
    if body.get("format") == 1:
        del body["format"]
    for name in _UNWRITTEN_WHEN_NONE:
        if name in body and body[name] is None:
            del body[name]
    if isinstance(body.get("shadow"), dict):
        body["shadow"] = _unwritten_defaults(body["shadow"])
    return body


def _fields(document: DataclassInstance) -> dict[str, Any]:
    """The document's fields, nested documents as dicts. Unlike dataclasses.asdict it copies no values: json.dumps
    needs none, and a simulated fleet writes thousands of reports a second."""
    out = {}
    for f in dataclasses.fields(document):
        value = getattr(document, f.name)
        out[f.name] = _fields(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
    return out


def _dump(document: DataclassInstance) -> str:
    return json.dumps(_unwritten_defaults(_fields(document)), sort_keys=True)


def _known_fields(cls: type[DataclassInstance], body: dict[str, Any], what: str, newest: int) -> dict[str, Any]:
    fmt = body.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise FormatError(what, f"format {fmt!r} is not a format number")
    if fmt > newest:
        raise FormatError(
            what,
            f"is in format {fmt}, newer than the {newest} this agent reads",
            "upgrade the agent to the version the model's manifest names in min_agent_version",
        )
    names = _field_names(cls)
    if names.issuperset(body):
        return body  # every field known: what nearly every document is (a controller reads thousands of reports)
    return {k: v for k, v in body.items() if k in names}


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _plain_defaults(cls: type[DataclassInstance]) -> tuple[dict[str, Any], frozenset[str]] | None:
    """(defaults, required fields) of a dataclass whose defaults are plain values and that has no __post_init__;
    None for any other, which _build then constructs as usual."""
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(f.default_factory is not dataclasses.MISSING for f in fields):
        return None
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    return defaults, frozenset(f.name for f in fields if f.name not in defaults)


def _build(cls: type[_Doc], fields: dict[str, Any]) -> _Doc:
    """cls(**fields), filled in directly: a frozen dataclass's __init__ sets each of its fields through
    object.__setattr__, five times the rest of decoding a report with orjson, and a controller decodes every report
    of a 10,000-device fleet that changed since its last poll. The same object either way (equal, hashed alike,
    frozen); a document missing a required field goes through __init__, which says which."""
    plain = _plain_defaults(cls)
    if plain is None or not plain[1].issubset(fields):
        return cls(**fields)
    obj = object.__new__(cls)
    obj.__dict__.update(plain[0])
    obj.__dict__.update(fields)
    return obj


def outside_window(description: str) -> str:
    """A report's `deferred` while the maintenance window `description` (contract/windows.py `Windows.describe`) is
    closed."""
    return f"outside the maintenance window ({description})"


def deferral_summary(reason: str | None) -> str | None:
    """`reason` as a report's `deferred`: one line of at most DEFERRED_LIMIT characters, None for none."""
    if not reason:
        return None
    line = " ".join(reason.split())
    return line if len(line) <= DEFERRED_LIMIT else line[: DEFERRED_LIMIT - 1] + "…"


@dataclass(frozen=True)
class DesiredModel:
    """What a device should run. The manifest text is the exact signed bytes (UTF-8)."""

    model: str
    version: str
    sha256: str
    size: int
    uri: str
    manifest: str
    signature: str
    rollout: str = ""
    rollback_order: str | None = None  # set only on a sanctioned downgrade: signed JSON (signing.rollback_order)
    rollback_signature: str | None = None
    shadow: DesiredModel | None = None  # a candidate run beside the served model on the same requests, never answering
    capture: dict[str, Any] | None = None  # opt-in sample capture: CaptureSpec (contract/capture.py) as JSON
    # the version's variants and where each is published: [{kind, uri, sha256, size}] (unsigned: where to fetch only;
    # what is installed is checked against the signed manifest's pins). The device fetches the one it chooses.
    variants: list[dict[str, Any]] | None = None
    # a cap on the device's download rate for this model, bytes a second (its ring's or group's setting; None: no cap).
    # Unsigned, like variants: a rate is no security property. Needs no format: a reader that does not know the field
    # drops it (_known_fields; every agent since the contract had formats), so an older agent downloads uncapped.
    max_download_bytes_per_second: int | None = None
    # the group's maintenance windows (contract/windows.py `Windows.to_document`): a forward swap waits for one to be
    # open; a rollback order never waits. None: no windows, always open. Format 4: an agent that would ignore them
    # (and swap whatever the hour) refuses the desired state instead, saying so
    windows: str | None = None
    format: int = 1  # 2 when shadow or capture is set, 3 with variants, 4 with windows: older agents refuse it, saying so

    def __post_init__(self) -> None:
        need = 4 if self.windows else 3 if self.variants else 2 if (self.shadow is not None or self.capture is not None) else 1
        if self.format < need:
            object.__setattr__(self, "format", need)

    def variant_uri(self, kind: str) -> tuple[str, str] | None:
        """(uri, sha256) of the listed variant `kind`; None when the desired state lists none of that kind."""
        for v in self.variants or ():
            if isinstance(v, dict) and v.get("kind") == kind and isinstance(v.get("uri"), str):
                return v["uri"], str(v.get("sha256", ""))
        return None

    @property
    def download_rate(self) -> int | None:
        """The cap downloads for this desired state keep to, bytes a second: None when it sets none, or a value no
        controller writes (not a positive integer), which is ignored rather than failing the install."""
        cap = self.max_download_bytes_per_second
        return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None

    @property
    def is_rollback(self) -> bool:
        return self.rollback_order is not None

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str | None) -> DesiredModel | None:
        """Raises FormatError for a format newer than this reader, or a body that is not a desired state."""
        if not text:
            return None
        body = json.loads(text)
        if not isinstance(body, dict):
            raise FormatError("desired state", "is not a JSON object")
        fields = _known_fields(cls, body, "desired state", DESIRED_FORMAT)
        if isinstance(fields.get("shadow"), dict):
            fields["shadow"] = cls(**_known_fields(cls, fields["shadow"], "desired state's shadow", DESIRED_FORMAT))
        return cls(**fields)


@dataclass(frozen=True)
class DeviceReport:
    """What an agent says about itself: the version it serves and how that version behaves."""

    device_id: str
    model: str
    version: str | None  # version being served; None when nothing verified is loaded
    sha256: str | None
    status: DeviceStatus
    error: str | None = None  # why the desired version was refused or broke
    failed_version: str | None = None  # the desired version that was refused
    inferences: int = 0  # in the last reporting window
    errors: int = 0
    invalid_outputs: int = 0  # outputs holding NaN / Inf
    p99_latency_ms: float | None = None
    agent_version: str = ""
    reported_at: float = 0.0
    # what the applications' requests showed (contract/telemetry.py), bounded whatever the traffic; None: none sent
    p50_latency_ms: float | None = None
    latency: list[int] | None = None  # Latency counts of the window
    predictions: dict[str, Any] | None = None  # Predictions of the served model
    shadow: dict[str, Any] | None = None  # Shadow: the candidate beside it
    labelled: dict[str, Any] | None = None  # Labelled: requests that carried the true class
    captured: int = 0  # samples captured in the window (opt-in, docs/capture.md)
    capture_failed: int | None = None  # captures whose write failed in the window; written only when some did
    variant: str | None = None  # the build served (agent 0.4.0): fp32 (the reference), int8, fp16; unwritten when None
    # how the last install was fetched (docs/deltas.md): {"path": "delta" | "full" | "reused", "bytes": n,
    # "fallback": why no patch was used, or null}; unwritten when None (nothing installed since the agent started)
    update: dict[str, Any] | None = None
    # why a swap to the desired version is held back now (`deferral_summary`), the same text on every device held for
    # the same cause, so a ring's held devices group by it; None (unwritten) when nothing is held. Needs no format: an
    # older reader drops it, an older agent's report lacks it (read as None)
    deferred: str | None = None
    format: int = REPORT_FORMAT

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str) -> DeviceReport:
        return cls.from_body(json.loads(text))

    @classmethod
    def from_body(cls, body: Any) -> DeviceReport:
        """A report already decoded from JSON: a controller reading thousands decodes them with its own parser."""
        if not isinstance(body, dict):
            raise FormatError("device report", "is not a JSON object")
        return _build(cls, _known_fields(cls, body, "device report", REPORT_FORMAT))
