"""The engine's own values: how a platform addresses a ring, what it observed there, and a gate's verdict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar, overload

from components.rollout.quality import Summary

OFFENDER_METRICS = ("error_rate", "invalid_output_share", "p99_latency_ms")  # keys of gate.measure()
OFFENDERS_PER_METRIC = 20

T = TypeVar("T")


class Lazy(Sequence[T], Generic[T]):
    """A sequence made when first read, then kept: an observation carries what only a failed gate reads (the devices to
    name, each one's summary), and a ring of 10,000 devices is polled every second. `size`: its length, where it is
    known without making it."""

    def __init__(self, read: Callable[[], tuple[T, ...]], size: int | None = None) -> None:
        self._read = read
        self._size = size
        self._items: tuple[T, ...] | None = None

    def _all(self) -> tuple[T, ...]:
        if self._items is None:
            self._items = self._read()
        return self._items

    def __len__(self) -> int:
        return self._size if self._size is not None else len(self._all())

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[T]: ...
    def __getitem__(self, i: int | slice) -> Any:
        return self._all()[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lazy({len(self)} items)"


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

    `summary` sums what the adopted devices' applications saw (predictions, latency, a shadowed candidate, labelled
    requests: components/rollout/quality.py) and `device_summaries` is each adopted device's own, so that a failed
    quality gate can name the devices behind it. Platforms that cannot read telemetry leave both empty.
    `variants` holds the same observation per build (fp32, int8, fp16) for the devices that report theirs.
    """

    devices: int  # targeted
    adopted: int  # serving the desired version, healthy
    failed: int  # reported a failure for the desired version
    reporting: int  # reported anything since the ring was deployed
    inferences: int = 0  # summed over adopted devices, last window
    errors: int = 0
    invalid_outputs: int = 0
    p99_latency_ms: float | None = None
    failures: tuple[tuple[str, str], ...] = ()  # (device, reason), a sample for the report
    pending: tuple[str, ...] = ()  # devices not yet on the desired version (a sample)
    offenders: Sequence[tuple[str, str, float]] = ()  # (device, metric, value) from that device's own window
    summary: Summary | None = None  # telemetry of the adopted devices' latest windows, summed
    device_summaries: Sequence[tuple[str, Summary]] = ()  # (device, its own summary), adopted devices
    # the devices that adopted or failed the desired state, observed per build they report serving (kind, observation),
    # kind order; empty where devices report no build (older agents, platforms that see only counts)
    variants: tuple[tuple[str, RingObservation], ...] = ()
    # False: a build's observation that carries its ring's device counts with its own metrics (AWS: IoT jobs count
    # devices, not builds), so a verdict does not give them as that build's
    own_counts: bool = True

    @property
    def pending_count(self) -> int:
        return max(0, self.devices - self.adopted - self.failed)


class Measured(TypedDict):
    """What a gate measured of a ring: counts, shares of its devices, and the health of those on the new version."""

    devices: int
    adopted: int
    failed: int
    pending: int
    reporting: int
    adopted_share: float
    failure_share: float
    reporting_share: float
    error_rate: float | None
    invalid_output_share: float | None
    p99_latency_ms: float | None
    inferences: int
    phase: NotRequired[str]  # a ring that shadows first: "shadow" or "serve"
    quality: NotRequired[dict[str, Any]]  # the quality criteria's values (quality.judge), with the control group's
    variants: NotRequired[dict[str, Any]]  # a ring of several builds: each build's devices measured alone (gate.evaluate)


@dataclass
class Verdict:
    outcome: Literal["wait", "soak", "pass", "fail"]
    reasons: list[str]
    measured: Measured
    offenders: list[dict[str, Any]] = field(default_factory=list)  # on a metric failure: devices over the breached thresholds
    notes: list[str] = field(default_factory=list)  # criteria that did not apply, and why (never a silent pass)
