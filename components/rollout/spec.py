"""What a rollout declares and the engine runs on: device groups, rings and their gates.

These are the stack file's `groups` and `rollouts` sections (components/stack.py composes them into the whole
stack's schema), validated once when the stack loads, and the values the engine, membership and every
platform's gate read. They depend on the device contract only (hardware profiles, names).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from components.rollout.windows import MaintenanceWindow, Windows, check_timezone, never_opens
from edgefleet_agent.contract.capture import DEFAULT_MAX_SAMPLE_BYTES, MAX_PER_DAY_LIMIT, MAX_SAMPLE_BYTES_LIMIT, CaptureSpec
from edgefleet_agent.contract.manifest import NAME_RE, HardwareProfile

Name = Annotated[str, Field(pattern=NAME_RE)]
Share = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GateConfig(Strict):
    """When a ring counts as healthy. Shares are of the ring's devices; metrics are over devices on the new version."""

    soak_seconds: float = Field(default=300, ge=0)
    deadline_seconds: float = Field(default=3600, gt=0)
    min_reporting_share: Share = 0.9
    success_share: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_failure_share: Share = 0.05
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    max_error_rate: Share | None = None
    max_invalid_output_share: Share | None = 0.0
    # Metric thresholds judge nothing until the new version has served: a ring must not pass on silence.
    min_inferences: int = Field(default=1, ge=0)
    # Quality: what the model says on the devices' real traffic (edgefleet_agent/contract/telemetry.py), against the
    # version it replaces. A criterion judges nothing below min_quality_samples predictions on each side; a ring
    # still short of them at its deadline fails (a quality gate never passes on silence).
    shadow_soak_seconds: Annotated[float, Field(ge=0)] | None = None  # shadow the candidate this long before serving it
    min_agreement: Share | None = None  # shadow: the candidate's top-1 class matches the served model's this often
    max_latency_ratio: Annotated[float, Field(gt=0)] | None = None  # p50 latency: candidate / served (shadow), ring / control
    max_distribution_shift: Share | None = None  # total variation distance of predicted classes, ring vs control
    max_confidence_drop: Share | None = None  # control's mean top-1 confidence minus the ring's
    min_live_accuracy: Share | None = None  # labelled requests (applications sent the true class) answered right
    min_quality_samples: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "GateConfig":
        if self.deadline_seconds < self.soak_seconds + (self.shadow_soak_seconds or 0):
            raise ValueError(
                f"deadline_seconds ({self.deadline_seconds}) is shorter than soak_seconds ({self.soak_seconds})"
                + (f" plus shadow_soak_seconds ({self.shadow_soak_seconds})" if self.shadow_soak_seconds else "")
                + "; no ring could ever pass"
            )
        if self.min_agreement is not None and self.shadow_soak_seconds is None:
            raise ValueError("min_agreement judges a shadow phase: set shadow_soak_seconds too (how long the ring shadows the candidate)")
        return self

    @property
    def quality(self) -> bool:
        """Whether any quality criterion is set."""
        return any(getattr(self, f) is not None for f in QUALITY_CRITERIA)

    @model_serializer(mode="wrap")
    def _quality_unset_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Quality settings left at their defaults are not written: a gate without them serializes (into resource inputs,
        the graph, records) exactly as before they existed, so stacks already deployed see no change."""
        body: dict[str, Any] = handler(self)
        for name in (*QUALITY_CRITERIA, "shadow_soak_seconds", "min_quality_samples"):
            if name in body and body[name] == GateConfig.model_fields[name].default:
                del body[name]
        return body


QUALITY_CRITERIA = ("min_agreement", "max_latency_ratio", "max_distribution_shift", "max_confidence_drop", "min_live_accuracy")
CONTROL_RING = "control"  # the name a rollout's control holdback has among its rings, once it follows


def compares_with_control(gate: GateConfig) -> bool:
    """Whether a ring's serve phase needs devices still on the previous version: prediction shift and confidence drop
    always do, the latency ratio unless the ring judged it beside the served model in a shadow phase."""
    return (
        gate.max_distribution_shift is not None
        or gate.max_confidence_drop is not None
        or (gate.max_latency_ratio is not None and gate.shadow_soak_seconds is None)
    )


def follower_gate(gate: GateConfig) -> GateConfig:
    """The gate of the control holdback when it follows the last ring: the last ring's health criteria, no quality
    criteria (nothing is left on the previous version to compare with, and the version has passed every comparison)."""
    return gate.model_copy(update={**{k: None for k in QUALITY_CRITERIA}, "shadow_soak_seconds": None})


class CaptureConfig(Strict):
    """Sample capture on a ring's devices (opt-in; docs/capture.md): requests the model was unsure about, or on which a
    shadowed candidate disagreed, kept with their predictions for labelling and retraining. The stack must declare
    where captured data may go (`edgefleet:capture`); the policy `capture-destination-declared` refuses it otherwise."""

    low_confidence_below: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="capture a request whose top-1 confidence (a classifier's, in any row) is below this"
    )
    on_shadow_disagreement: bool = Field(
        default=False, description="capture a request on which the shadowed candidate's top-1 class differs from the served model's"
    )
    max_per_device_per_day: int = Field(
        default=100, ge=1, le=MAX_PER_DAY_LIMIT, description="at most this many captures per device per UTC day (kept across restarts)"
    )
    min_seconds_between: float = Field(default=60.0, ge=0, allow_inf_nan=False, description="rate limit: seconds between two captures")
    max_sample_bytes: int = Field(
        default=DEFAULT_MAX_SAMPLE_BYTES, ge=1, le=MAX_SAMPLE_BYTES_LIMIT, description="requests whose inputs are larger are not captured"
    )

    @model_validator(mode="after")
    def _has_criterion(self) -> "CaptureConfig":
        if self.low_confidence_below is None and not self.on_shadow_disagreement:
            raise ValueError("capture needs a criterion: set low_confidence_below, on_shadow_disagreement, or both")
        return self

    def spec(self) -> CaptureSpec:
        """The contract's form, what the ring's desired state carries."""
        return CaptureSpec(**self.model_dump())


DOWNLOAD_CAP_DESCRIPTION = (
    "a cap on each device's download rate for the models it installs, in bytes a second (e.g. 125000 for 1 Mbit/s); "
    "unset: no cap. Carried by the desired state, kept by the agent's downloader (full artifacts, variants, patches)"
)


def check_download_cap(value: Any) -> Any:
    """A download cap is a positive whole number of bytes a second, or unset: said in the stack file's terms."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{value!r} is not a download cap: give a positive whole number of bytes a second (e.g. 125000 for 1 Mbit/s, "
            "1000000 for 1 MB/s), or remove the key for no cap"
        )
    return value


class RingConfig(Strict):
    """A step of a rollout: which devices of a group, and the gate they must pass before the next ring.

    `percent` is cumulative: a ring with percent 30 after one with 5 adds the next 25% of the group.
    Rings are disjoint: a device belongs to the first ring that selects it.
    """

    name: Name
    group: Name
    percent: Annotated[float, Field(gt=0, le=100)] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    gate: GateConfig = GateConfig()
    capture: CaptureConfig | None = None  # opt-in sample capture on this ring's devices; None: off
    max_download_bytes_per_second: int | None = Field(
        default=None, description=DOWNLOAD_CAP_DESCRIPTION + "; on a ring, it overrides its group's for the ring's devices"
    )

    _download_cap = field_validator("max_download_bytes_per_second", mode="before")(check_download_cap)

    @model_serializer(mode="wrap")
    def _capture_unset_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A ring without capture or a download cap serializes (resource inputs, records) exactly as before they existed."""
        body: dict[str, Any] = handler(self)
        for name in ("capture", "max_download_bytes_per_second"):
            if body.get(name, 0) is None:
                del body[name]
        return body

    def download_cap(self, group: DeviceGroupConfig) -> int | None:
        """The cap the ring's devices download under: the ring's own when it sets one, else its group's."""
        return self.max_download_bytes_per_second if self.max_download_bytes_per_second is not None else group.max_download_bytes_per_second


class RolloutConfig(Strict):
    name: Name
    model: Name
    rings: list[RingConfig] = Field(min_length=1)
    # A share of each group's devices kept on the previous version as the control group that rings compare against
    # (max_distribution_shift, max_confidence_drop, max_latency_ratio); after the last gate passes they follow.
    control_holdback: Annotated[float, Field(ge=0, lt=0.5)] = 0.0

    @model_validator(mode="after")
    def _unique_rings(self) -> "RolloutConfig":
        names = [r.name for r in self.rings]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"ring names must be unique within a rollout: {', '.join(dupes)}")
        if self.control_holdback > 0 and CONTROL_RING in names:
            raise ValueError(f"ring name {CONTROL_RING!r} is the control holdback's once it follows the last ring: rename the ring")
        last = self.rings[-1]
        if self.control_holdback == 0 and compares_with_control(last.gate):
            raise ValueError(
                f"the last ring {last.name!r} compares with a control group (max_distribution_shift, max_confidence_drop or "
                "max_latency_ratio without a shadow phase), but it takes every remaining device, so none would be left on the "
                "previous version to compare with: declare control_holdback (a share of each group kept on the previous "
                "version until the last gate passes, e.g. 0.05)"
            )
        return self


class DeviceGroupConfig(Strict):
    """Devices of one hardware profile, chosen by labels (thing attributes / twin tags) or explicit ids."""

    name: Name
    platform: str | None = None  # the stack checks it names one of its platforms
    hardware: HardwareProfile
    labels: dict[str, str] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=list)
    timezone: str = Field(default="UTC", description="the devices' IANA time zone (e.g. Europe/Berlin): windows are on its clock")
    maintenance_windows: list[MaintenanceWindow] = Field(
        default_factory=list,
        description="when the group's devices may swap models (none: any time); a ring over the group swaps only while "
        "one is open (local: the engine orders each swap then, a shadowing ring's serve swap too, and the ring's deadline "
        "pauses while the window is closed and its devices are still to swap; Greengrass and IoT Edge: the agent holds "
        "the swap). Rollbacks and revocations ignore windows",
    )
    max_download_bytes_per_second: int | None = Field(default=None, description=DOWNLOAD_CAP_DESCRIPTION)

    _download_cap = field_validator("max_download_bytes_per_second", mode="before")(check_download_cap)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_timezone(value)

    @model_serializer(mode="wrap")
    def _windows_unset_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A group without windows serializes (resource inputs, the graph) exactly as before windows existed."""
        body: dict[str, Any] = handler(self)
        if body.get("timezone") == "UTC":
            del body["timezone"]
        if body.get("maintenance_windows") == []:
            del body["maintenance_windows"]
        if body.get("max_download_bytes_per_second", 0) is None:
            del body["max_download_bytes_per_second"]
        return body

    def windows(self) -> Windows | None:
        return Windows(self.timezone, tuple(self.maintenance_windows)) if self.maintenance_windows else None

    def windows_document(self) -> str:
        """The windows as the cloud platforms' desired states carry them to the devices, which enforce them there
        (edgefleet_agent/contract/windows.py); "" for a group without windows."""
        windows = self.windows()
        return windows.to_document() if windows is not None else ""

    @model_validator(mode="after")
    def _selects_something(self) -> "DeviceGroupConfig":
        if not self.labels and not self.devices:
            raise ValueError("a group needs labels or devices to select its members")
        if never_opens(self.maintenance_windows, self.timezone, time.time()):
            raise ValueError(
                f"maintenance_windows: none of {[w.cron for w in self.maintenance_windows]} opens within a year "
                "(e.g. a day that does not exist, such as 30 February): the group's rings would wait forever"
            )
        return self
