"""Data that crosses between the engine, the platforms and the device agent. JSON-friendly on purpose:
it is stored in the local hub, in cloud deployment documents, and in the agent's reports."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

DeviceStatus = Literal["ok", "failed", "updating", "idle"]
OFFENDER_METRICS = ("error_rate", "invalid_output_share", "p99_latency_ms")   # keys of gate.measure()
OFFENDERS_PER_METRIC = 20


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
    rollback_order: str | None = None        # set only on a sanctioned downgrade: signed JSON (signing.rollback_order)
    rollback_signature: str | None = None

    @property
    def is_rollback(self) -> bool:
        return self.rollback_order is not None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "DesiredModel | None":
        return None if not text else cls(**json.loads(text))


@dataclass(frozen=True)
class DeviceReport:
    """What an agent says about itself: the version it serves and how that version behaves."""

    device_id: str
    model: str
    version: str | None                      # version being served; None when nothing verified is loaded
    sha256: str | None
    status: DeviceStatus
    error: str | None = None                 # why the desired version was refused or broke
    failed_version: str | None = None        # the desired version that was refused
    inferences: int = 0                      # in the last reporting window
    errors: int = 0
    invalid_outputs: int = 0                 # outputs holding NaN / Inf
    p99_latency_ms: float | None = None
    agent_version: str = ""
    reported_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DeviceReport":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RingTarget:
    """How a platform addresses one ring: device ids (local), a thing group ARN (AWS), a target condition (Azure)."""

    rollout: str
    ring: str
    index: int
    selector: Any


@dataclass(frozen=True)
class RingObservation:
    """What the platform can tell about a ring for one desired version. Local knows each device; clouds give counts.

    `offenders` lets a failed metric gate name the devices behind it: for each of the metrics in
    OFFENDER_METRICS, the worst devices serving the desired version (at most OFFENDERS_PER_METRIC each,
    worst first). Optional: a platform that only has aggregates leaves it empty; the report then names none.
    """

    devices: int                             # targeted
    adopted: int                             # serving the desired version, healthy
    failed: int                              # reported a failure for the desired version
    reporting: int                           # reported anything since the ring was deployed
    inferences: int = 0                      # summed over adopted devices, last window
    errors: int = 0
    invalid_outputs: int = 0
    p99_latency_ms: float | None = None
    failures: tuple[tuple[str, str], ...] = ()   # (device, reason), a sample for the report
    pending: tuple[str, ...] = ()            # devices not yet on the desired version (a sample)
    offenders: tuple[tuple[str, str, float], ...] = ()   # (device, metric, value) from that device's own window

    @property
    def pending_count(self) -> int:
        return max(0, self.devices - self.adopted - self.failed)


@dataclass
class Verdict:
    outcome: Literal["wait", "soak", "pass", "fail"]
    reasons: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    offenders: list[dict[str, Any]] = field(default_factory=list)   # on a metric failure: devices over the breached thresholds
