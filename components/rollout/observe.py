"""A ring's observation from per-device reports: the classification every platform that sees devices one by
one shares (the local hub, and the AWS and Azure gates when they list offending devices).

A desired state is adopted by a device that serves its version, healthy, and shadows nothing else: a shadow summary
it reports must be of the desired state's candidate (a device with no traffic reports none: the gate's quality
criteria then wait for samples and fail closed), and a desired state without a candidate is adopted only once the
device stopped shadowing (a ring set back from a shadow phase). A device that reports the candidate as its failed
version (it could not load it beside the served model) has failed it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Any, Iterable

from components.rollout.quality import RunningTelemetry, Summary, Telemetry
from components.rollout.types import OFFENDER_METRICS, OFFENDERS_PER_METRIC, RingObservation
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow


def shadow_of(report: DeviceReport) -> Shadow | None:
    return Shadow.from_json(report.shadow) if report.shadow else None


def is_on(report: DeviceReport, desired: DesiredModel | None) -> bool:
    if desired is None:
        return report.version is None
    if not (report.version == desired.version and report.sha256 == desired.sha256 and report.status == "ok"):
        return False
    shadow = shadow_of(report)
    if shadow is None:
        return True
    want = desired.shadow
    return want is not None and (shadow.version, shadow.sha256) == (want.version, want.sha256)


def failed_on(report: DeviceReport, desired: DesiredModel | None) -> bool:
    if desired is None or report.failed_version is None:
        return False
    if report.status == "failed" and report.failed_version == desired.version:
        return True
    return desired.shadow is not None and report.failed_version == desired.shadow.version


def telemetry_of(report: DeviceReport) -> tuple[Predictions | None, Latency | None, Shadow | None, Labelled | None]:
    """The contract's telemetry a report carries (None where it carries none)."""
    return (
        Predictions.from_json(report.predictions) if report.predictions else None,
        Latency.from_json(report.latency) if report.latency else None,
        shadow_of(report),
        Labelled.from_json(report.labelled) if report.labelled else None,
    )


def has_telemetry(report: DeviceReport) -> bool:
    return any(x is not None for x in (report.predictions, report.latency, report.shadow, report.labelled))


def summarize(reports: Iterable[DeviceReport]) -> Summary:
    """The summed telemetry of `reports` (each device's latest window)."""
    total = Telemetry()
    for r in reports:
        total.add(*telemetry_of(r))
    return total.summary()


@dataclass(frozen=True)
class _Device:
    """One device's part in a ring's observation, from its report: what the gate adds up."""

    state: str  # "failed" | "adopted" | "pending"
    fresh: bool
    error: str = ""
    parts: tuple[Any, ...] | None = None  # telemetry_of(report), adopted devices with telemetry
    summary: Summary | None = None  # that device's own
    rates: tuple[tuple[str, float], ...] = ()  # (metric, value) of OFFENDER_METRICS in its window, adopted devices
    variant: str | None = None  # the build it reported serving (adopted, failed devices); None: unknown or not grouped


def _device(r: DeviceReport | None, desired: DesiredModel | None, since: float) -> _Device:
    fresh = r is not None and r.reported_at >= since
    if r is None or not fresh:
        return _Device("pending", fresh)
    if failed_on(r, desired):
        return _Device("failed", True, r.error or "failed", variant=r.variant)
    if not is_on(r, desired):
        return _Device("pending", True)
    rates: list[tuple[str, float]] = []
    if r.p99_latency_ms is not None:
        rates.append(("p99_latency_ms", round(r.p99_latency_ms, 3)))
    if r.inferences:
        rates.append(("error_rate", round(r.errors / r.inferences, 6)))
        rates.append(("invalid_output_share", round(r.invalid_outputs / r.inferences, 6)))
    if not has_telemetry(r):
        return _Device("adopted", True, rates=tuple(rates), variant=r.variant)
    parts = telemetry_of(r)
    one = Telemetry()
    one.add(*parts)
    return _Device("adopted", True, parts=parts, summary=one.summary(), rates=tuple(rates), variant=r.variant)


class ObserveMemo:
    """One ring's devices as seen at the last poll, and the running sum of the adopted ones' telemetry: kept by a
    platform between polls so that a poll parses and sums only what changed since the last one."""

    def __init__(self) -> None:
        self.key: tuple[DesiredModel | None, float] | None = None
        self.seen: dict[str, tuple[DeviceReport, _Device]] = {}
        self.total = RunningTelemetry()
        self.by_variant: dict[str, RunningTelemetry] = {}  # the same sums per reported variant (devices that report one)

    def begin(self, desired: DesiredModel | None, since: float) -> None:
        """A poll starts: another desired state or phase starts the ring's memory over."""
        if self.key is None or self.key[1] != since or self.key[0] != desired:
            self.key, self.seen, self.total, self.by_variant = (desired, since), {}, RunningTelemetry(), {}

    def _add(self, seen: _Device, sign: int) -> None:
        assert seen.parts is not None
        self.total.add(seen.parts, sign)
        if seen.variant is not None:
            self.by_variant.setdefault(seen.variant, RunningTelemetry()).add(seen.parts, sign)

    def device(self, dev: str, r: DeviceReport | None, desired: DesiredModel | None, since: float) -> _Device:
        held = self.seen.get(dev)
        if held is not None and held[0] is r:
            return held[1]
        seen = _device(r, desired, since)
        if held is not None and held[1].parts is not None:
            self._add(held[1], -1)
        if seen.parts is not None:
            self._add(seen, 1)
        if r is None:
            self.seen.pop(dev, None)
        else:
            self.seen[dev] = (r, seen)
        return seen


def control_summary(
    devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel, since: float, memo: ObserveMemo | None = None
) -> Summary:
    """What the devices still on `desired` (the control group of a comparison) reported since `since`; with `memo`, at
    the cost of what changed since the last poll (ObserveMemo)."""
    if memo is None:
        return summarize(r for d in devices if (r := reports.get(d)) is not None and r.reported_at >= since and is_on(r, desired))
    memo.begin(desired, since)
    on = sum(1 for d in devices if memo.device(d, reports.get(d), desired, since).state == "adopted")
    return replace(memo.total.summary(), devices=on)


class _Tally:
    """The sums of one observation (a ring, or one variant's devices in it) as devices are added."""

    def __init__(self) -> None:
        self.devices = self.adopted = self.failed = self.reporting = self.inferences = self.errors = self.invalid = 0
        self.p99s: list[float] = []
        self.failures: list[tuple[str, str]] = []
        self.pending: list[str] = []
        self.per_device: dict[str, list[tuple[str, float]]] = {k: [] for k in OFFENDER_METRICS}
        self.total = Telemetry()
        self.summaries: list[tuple[str, Summary]] = []

    def add(self, dev: str, seen: _Device, r: DeviceReport | None, sum_telemetry: bool) -> None:
        self.devices += 1
        if seen.fresh:
            self.reporting += 1
        if seen.state == "failed":
            self.failed += 1
            self.failures.append((dev, seen.error))
        elif seen.state == "adopted":
            assert r is not None
            self.adopted += 1
            self.inferences += r.inferences
            self.errors += r.errors
            self.invalid += r.invalid_outputs
            if r.p99_latency_ms is not None:
                self.p99s.append(r.p99_latency_ms)
            for metric, value in seen.rates:
                self.per_device[metric].append((dev, value))
            if seen.parts is not None and seen.summary is not None:
                if sum_telemetry:
                    self.total.add(*seen.parts)
                self.summaries.append((dev, seen.summary))
        else:
            self.pending.append(dev)

    def observation(self, summed: Summary | None, variants: tuple[tuple[str, RingObservation], ...] = ()) -> RingObservation:
        p99s = sorted(self.p99s)
        return RingObservation(
            devices=self.devices,
            adopted=self.adopted,
            failed=self.failed,
            reporting=self.reporting,
            inferences=self.inferences,
            errors=self.errors,
            invalid_outputs=self.invalid,
            p99_latency_ms=p99s[min(len(p99s) - 1, int(len(p99s) * 0.99))] if p99s else None,
            failures=tuple(self.failures[:50]),
            pending=tuple(self.pending[:50]),
            offenders=_worst(self.per_device),
            summary=(summed if summed is not None else self.total.summary()) if self.summaries else None,
            device_summaries=tuple(self.summaries),
            variants=variants,
        )


def control_summaries(
    devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel, since: float, memo: ObserveMemo | None = None
) -> dict[str, Summary]:
    """control_summary per build the devices on `desired` report serving (kind: summary); devices that report none
    are left out. With the memo control_summary keeps, at the cost of what changed since the last poll."""
    on: dict[str, int] = {}
    if memo is None:
        groups: dict[str, list[DeviceReport]] = {}
        for d in devices:
            r = reports.get(d)
            if r is not None and r.variant is not None and r.reported_at >= since and is_on(r, desired):
                groups.setdefault(r.variant, []).append(r)
        return {k: summarize(rs) for k, rs in sorted(groups.items())}
    memo.begin(desired, since)
    for d in devices:
        seen = memo.device(d, reports.get(d), desired, since)
        if seen.state == "adopted" and seen.variant is not None:
            on[seen.variant] = on.get(seen.variant, 0) + 1
    return {k: replace((memo.by_variant.get(k) or RunningTelemetry()).summary(), devices=n) for k, n in sorted(on.items())}


def observe_reports(
    devices: list[str],
    reports: dict[str, DeviceReport],
    desired: DesiredModel | None,
    since: float,
    memo: ObserveMemo | None = None,
) -> RingObservation:
    """Classifies each device of a ring against `desired`. Shared by every platform that sees per-device reports.

    The devices that adopted or failed the desired state and report the build they serve (`DeviceReport.variant`)
    are also observed per build, in `RingObservation.variants` (kind order), so that a gate judges each build's
    devices on their own (gate.evaluate_variants); devices still pending belong to no build yet.

    With `memo` (kept by the caller between polls of one ring, whose devices do not change), a device whose report
    is the very object seen at the last poll, under the same desired state and phase, is not parsed, summarized or
    summed again: a poll of a 10,000-device ring costs what changed since the last one."""
    ring = _Tally()
    kinds: dict[str, _Tally] = {}
    if memo is not None:
        memo.begin(desired, since)
    for dev in devices:
        r = reports.get(dev)
        seen = memo.device(dev, r, desired, since) if memo is not None else _device(r, desired, since)
        ring.add(dev, seen, r, memo is None)
        if seen.variant is not None and seen.state != "pending":
            kinds.setdefault(seen.variant, _Tally()).add(dev, seen, r, memo is None)
    variants = tuple(
        (kind, kinds[kind].observation(memo.by_variant[kind].summary() if memo is not None and kind in memo.by_variant else None))
        for kind in sorted(kinds)
    )
    return ring.observation(memo.total.summary() if memo is not None else None, variants)


def _worst(per_device: dict[str, list[tuple[str, float]]]) -> tuple[tuple[str, str, float], ...]:
    """The worst devices per metric, bounded; zero rates are nobody's fault and are left out."""
    out: list[tuple[str, str, float]] = []
    for metric, values in per_device.items():
        ranked = heapq.nsmallest(OFFENDERS_PER_METRIC, (v for v in values if v[1] > 0), key=lambda v: (-v[1], v[0]))
        out += [(dev, metric, value) for dev, value in ranked]
    return tuple(out)


def _merge(a: Any, b: Any) -> Any:
    """Two windows' summaries of one kind, or the newer alone where they cannot add up (another output watched)."""
    if a is None or b is None:
        return b if b is not None else a
    try:
        return a.merged(b)
    except ValueError:
        return b


class SoakWindows:
    """Each device's report windows summed over a gate's phase, for platforms that keep only a device's latest window
    (the local hub, a module twin). A gate that read one window at a time would need `min_quality_samples` requests
    within a single report period, whatever the ring's size: a ring of 50 cameras answering a frame each per period
    would never be judged. Windows are told apart by `reported_at`; one the observer polled past unseen is not
    counted (sampled, never counted twice). A device's sum starts again when what it serves or shadows changes, or
    the phase does (another `since`). Health figures (requests, errors, p99) stay the latest window's."""

    def __init__(self) -> None:
        # (what is served and shadowed, since), the newest window summed, the sum, the report it came from, the sum's
        # telemetry parsed
        self._sums: dict[tuple[str, str], tuple[tuple[Any, ...], float, DeviceReport, DeviceReport, tuple[Any, ...]]] = {}

    def summed(self, reports: dict[str, DeviceReport], since: float) -> dict[str, DeviceReport]:
        out: dict[str, DeviceReport] = {}
        for dev, r in reports.items():
            held = self._sums.get((dev, r.model))
            if held is not None and held[3] is r and held[0][-1] == since:
                out[dev] = held[2]  # the same report as at the last poll: nothing to parse or add
                continue
            if r.reported_at < since:
                out[dev] = r
                continue
            if not has_telemetry(r):
                # a window without requests (a device whose applications were quiet) keeps what its earlier windows of
                # the phase said: the sum is the phase's, not the latest window's
                if held is not None and held[0][:2] == (r.version, r.sha256) and held[0][-1] == since:
                    t = held[2]
                    carried = replace(r, predictions=t.predictions, latency=t.latency, shadow=t.shadow, labelled=t.labelled)
                    self._sums[(dev, r.model)] = (held[0], held[1], carried, r, held[4])
                    out[dev] = carried
                else:
                    out[dev] = r
                continue
            mine = telemetry_of(r)
            shadow = mine[2]
            key = (r.version, r.sha256, shadow.version if shadow else None, shadow.sha256 if shadow else None, since)
            if held is None or held[0] != key:
                total, parts = r, mine
            elif r.reported_at > held[1]:
                p, lat, sh, lab = parts = tuple(_merge(a, b) for a, b in zip(held[4], mine, strict=True))
                total = replace(
                    r,
                    predictions=p.to_json() if p else None,
                    latency=lat.to_json() if lat else None,
                    shadow=sh.to_json() if sh else None,
                    labelled=lab.to_json() if lab else None,
                )
            else:
                out[dev] = held[2]
                continue
            self._sums[(dev, r.model)] = (key, r.reported_at, total, r, parts)
            out[dev] = total
        return out
