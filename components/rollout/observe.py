"""A ring's observation from per-device reports: the classification every platform that sees devices one by
one shares (the local hub, and the AWS and Azure gates when they list offending devices).

A desired state is adopted by a device that serves its version, healthy, and shadows nothing else: a shadow summary
it reports must be of the desired state's candidate (a device with no traffic reports none: the gate's quality
criteria then wait for samples and fail closed), and a desired state without a candidate is adopted only once the
device stopped shadowing (a ring set back from a shadow phase). A device that reports the candidate as its failed
version (it could not load it beside the served model) has failed it.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Iterable, NamedTuple

from components.rollout.quality import PartArrays, RunningTelemetry, Summary, Telemetry, part_arrays
from components.rollout.types import OFFENDER_METRICS, OFFENDERS_PER_METRIC, Lazy, RingObservation
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow


def shadow_of(report: DeviceReport) -> Shadow | None:
    return Shadow.from_json(report.shadow) if report.shadow else None


def is_on(report: DeviceReport, desired: DesiredModel | None) -> bool:
    return _is_on(report, desired, shadow_of(report))


def _is_on(report: DeviceReport, desired: DesiredModel | None, shadow: Shadow | None) -> bool:
    """is_on, with the shadow summary the caller has already parsed (or summed over the phase)."""
    if desired is None:
        return report.version is None
    if not (report.version == desired.version and report.sha256 == desired.sha256 and report.status == "ok"):
        return False
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
    rates: tuple[tuple[str, float], ...] = ()  # (metric, value) of OFFENDER_METRICS in its window, adopted devices
    variant: str | None = None  # the build it reported serving (adopted, failed devices); None: unknown or not grouped

    @functools.cached_property
    def arrays(self) -> PartArrays:
        """Its histograms as arrays, converted once for every running sum it is added to and taken out of."""
        assert self.parts is not None
        return part_arrays(self.parts)

    @functools.cached_property
    def summary(self) -> Summary:
        """That device's own summary: only a failed gate names devices by it, so it is made when first asked for."""
        one = Telemetry()
        if self.parts is not None:
            one.add(*self.parts)
        return one.summary()


def device_summaries(devices: Mapping[str, _Device]) -> Lazy[tuple[str, Summary]]:
    """(device, its own summary) of a set of adopted devices, in device order, made when first read."""
    held = dict(devices)  # a copy: the memo it comes from moves on at its next poll
    return Lazy(lambda: tuple((dev, held[dev].summary) for dev in sorted(held)), size=len(held))


def _device(r: DeviceReport | None, desired: DesiredModel | None, since: float, parts: tuple[Any, ...] | None = None) -> _Device:
    """`parts`: the device's telemetry where the caller has it (SoakWindows' sums of the phase); None: r's own."""
    fresh = r is not None and r.reported_at >= since
    if r is None or not fresh:
        return _Device("pending", fresh)
    if failed_on(r, desired):
        return _Device("failed", True, r.error or "failed", variant=r.variant)
    if not _is_on(r, desired, parts[2] if parts is not None else shadow_of(r)):
        return _Device("pending", True)
    rates: list[tuple[str, float]] = []
    if r.p99_latency_ms is not None:
        rates.append(("p99_latency_ms", round(r.p99_latency_ms, 3)))
    if r.inferences:
        rates.append(("error_rate", round(r.errors / r.inferences, 6)))
        rates.append(("invalid_output_share", round(r.invalid_outputs / r.inferences, 6)))
    if parts is None:
        if not has_telemetry(r):
            return _Device("adopted", True, rates=tuple(rates), variant=r.variant)
        parts = telemetry_of(r)
    return _Device("adopted", True, parts=parts, rates=tuple(rates), variant=r.variant)


class _Running:
    """The counts and per-device figures of one set of devices (a ring, or one build's devices in it), kept as devices
    come and go: `count(…, -1)` takes out exactly what `count(…, 1)` put in."""

    def __init__(self) -> None:
        self.devices = self.adopted = self.failed = self.reporting = self.inferences = self.errors = self.invalid = 0
        self.pending_fresh = 0  # pending devices that reported since the phase began
        self.p99s: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self.pending: set[str] = set()
        self.rates: dict[str, dict[str, float]] = {k: {} for k in OFFENDER_METRICS}
        self.summaries: dict[str, _Device] = {}  # adopted devices with telemetry

    def count(self, dev: str, seen: _Device, r: DeviceReport | None, sign: int) -> None:
        self.devices += sign
        if seen.fresh:
            self.reporting += sign
        if seen.state == "failed":
            self.failed += sign
            _keep(self.failures, dev, seen.error, sign)
        elif seen.state == "adopted":
            assert r is not None
            self.adopted += sign
            self.inferences += sign * r.inferences
            self.errors += sign * r.errors
            self.invalid += sign * r.invalid_outputs
            if r.p99_latency_ms is not None:
                _keep(self.p99s, dev, r.p99_latency_ms, sign)
            for metric, value in seen.rates:
                if value > 0:  # a zero rate is nobody's fault: never an offender
                    _keep(self.rates[metric], dev, value, sign)
            if seen.parts is not None:
                _keep(self.summaries, dev, seen, sign)
        else:
            if seen.fresh:
                self.pending_fresh += sign
            if sign > 0:
                self.pending.add(dev)
            else:
                self.pending.discard(dev)

    def observation(self, summed: Summary | None, variants: tuple[tuple[str, RingObservation], ...] = ()) -> RingObservation:
        p99s = sorted(self.p99s.values())
        return RingObservation(
            devices=self.devices,
            adopted=self.adopted,
            failed=self.failed,
            reporting=self.reporting,
            inferences=self.inferences,
            errors=self.errors,
            invalid_outputs=self.invalid,
            p99_latency_ms=p99s[min(len(p99s) - 1, int(len(p99s) * 0.99))] if p99s else None,
            failures=tuple(sorted(self.failures.items())[:50]),
            pending=tuple(heapq.nsmallest(50, self.pending)),
            offenders=worst_devices({metric: dict(values) for metric, values in self.rates.items()}),
            summary=summed if self.summaries else None,
            device_summaries=device_summaries(self.summaries),
            variants=variants,
        )


def _keep(held: dict[str, Any], dev: str, value: Any, sign: int) -> None:
    if sign > 0:
        held[dev] = value
    else:
        held.pop(dev, None)


class ObserveMemo:
    """One set of devices (a ring, or a control group) as observed so far under one desired state and phase: each
    device's part and the running sums of all of them, so that a poll costs the devices whose report changed, not the
    ring. A platform that can tell which devices reported since its last poll passes only those (the local hub);
    otherwise every device is passed and those whose report is the very object seen before cost a lookup.

    Per build: while every adopted or failed device reports the same build (nearly every ring), that build's figures are
    the ring's less its pending devices, and are derived so; sums per build are kept only from the poll a second build
    (or a device reporting none beside one that does) appears, rebuilt then from what each device last reported.
    `split=True` keeps them from the start (the reference the tests compare with)."""

    def __init__(self, split: bool = False) -> None:
        self._always_split = split
        self._reset(None)

    def _reset(self, key: tuple[DesiredModel | None, float] | None) -> None:
        self.key = key
        self.seen: dict[str, tuple[DeviceReport | None, _Device]] = {}
        self.total = RunningTelemetry()
        self.by_variant: dict[str, RunningTelemetry] = {}  # the same sums per reported variant (devices that report one)
        self.ring = _Running()
        self.kinds: dict[str, _Running] = {}  # adopted and failed devices per build they report serving, once split
        self.builds: dict[str | None, int] = {}  # adopted and failed devices per build reported (None: none reported)
        self.split = self._always_split
        self.read = -1  # for the platform: how far into its own record of reports this memo has caught up
        self.members: frozenset[str] = frozenset()  # for the platform: the devices observed

    def begin(self, desired: DesiredModel | None, since: float) -> bool:
        """A poll starts: another desired state or phase starts the memo over (True: every device must be passed)."""
        if self.key is not None and self.key[1] == since and self.key[0] == desired:
            return False
        self._reset((desired, since))
        return True

    def device(
        self, dev: str, r: DeviceReport | None, desired: DesiredModel | None, since: float, parts: tuple[Any, ...] | None = None
    ) -> _Device:
        """`parts`: the device's telemetry where the caller has it (SoakWindows' sums); None: r's own."""
        held = self.seen.get(dev)
        if held is not None and held[0] is r:
            return held[1]
        seen = _device(r, desired, since, parts)
        if not self.split and seen.state != "pending" and any(n and kind != seen.variant for kind, n in self.builds.items()):
            self._split()
        if held is not None:
            self._count(dev, held[1], held[0], -1)
        self._count(dev, seen, r, 1)
        self.seen[dev] = (r, seen)
        return seen

    def _count(self, dev: str, seen: _Device, r: DeviceReport | None, sign: int, whole: bool = True) -> None:
        if whole:
            self.ring.count(dev, seen, r, sign)
            if seen.parts is not None:
                self.total.add(seen.parts, sign, seen.arrays)
            if seen.state != "pending":
                self.builds[seen.variant] = self.builds.get(seen.variant, 0) + sign
        if not self.split or seen.variant is None:
            return
        if seen.state != "pending":
            self.kinds.setdefault(seen.variant, _Running()).count(dev, seen, r, sign)
        if seen.parts is not None:
            self.by_variant.setdefault(seen.variant, RunningTelemetry()).add(seen.parts, sign, seen.arrays)

    def _split(self) -> None:
        """From now on keep sums per build, starting from what each device last reported."""
        self.split = True
        for dev, (r, seen) in self.seen.items():
            self._count(dev, seen, r, 1, whole=False)

    def _single(self) -> str | None:
        """The one build every adopted or failed device reports, while unsplit (None: no such device, or none reported)."""
        kinds = [kind for kind, n in self.builds.items() if n]
        return kinds[0] if len(kinds) == 1 else None

    def observation(self) -> RingObservation:
        summed = self.total.summary()
        if not self.split:
            whole = self.ring.observation(summed)
            kind = self._single()
            if kind is None:
                return whole
            ring = self.ring
            own = replace(whole, devices=ring.adopted + ring.failed, reporting=ring.reporting - ring.pending_fresh, pending=())
            return replace(whole, variants=((kind, own),))
        variants = tuple(
            (kind, run.observation(self.by_variant[kind].summary() if kind in self.by_variant else None))
            for kind, run in sorted(self.kinds.items())
            if run.devices
        )
        return self.ring.observation(summed, variants)

    def control(self) -> Summary:
        """What the devices on the desired state reported: the control group of a comparison."""
        return replace(self.total.summary(), devices=self.ring.adopted)

    def control_variants(self) -> dict[str, Summary]:
        """The same per build the devices report serving; devices that report none are left out."""
        if not self.split:
            kind = self._single()
            return {kind: self.control()} if kind is not None and self.ring.adopted else {}
        return {
            kind: replace((self.by_variant.get(kind) or RunningTelemetry()).summary(), devices=run.adopted)
            for kind, run in sorted(self.kinds.items())
            if run.adopted
        }


def _pass(
    devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel | None, since: float, memo: ObserveMemo | None
) -> ObserveMemo:
    memo = memo if memo is not None else ObserveMemo()
    memo.begin(desired, since)
    for dev in devices:
        memo.device(dev, reports.get(dev), desired, since)
    return memo


def control_summary(
    devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel, since: float, memo: ObserveMemo | None = None
) -> Summary:
    """What the devices still on `desired` (the control group of a comparison) reported since `since`; with `memo`, at
    the cost of what changed since the last poll (ObserveMemo)."""
    return _pass(devices, reports, desired, since, memo).control()


def control_summaries(
    devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel, since: float, memo: ObserveMemo | None = None
) -> dict[str, Summary]:
    """control_summary per build the devices on `desired` report serving (kind: summary); devices that report none
    are left out. With the memo control_summary keeps, at the cost of what changed since the last poll."""
    return _pass(devices, reports, desired, since, memo).control_variants()


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
    summed again."""
    return _pass(devices, reports, desired, since, memo).observation()


def worst_devices(per_device: dict[str, dict[str, float]]) -> Lazy[tuple[str, str, float]]:
    """(device, metric, value): the worst devices per metric, bounded, ranked when first read (only a breached threshold
    names devices). `per_device` holds no zero rate (_Running.count keeps none: nobody's fault)."""

    def rank() -> tuple[tuple[str, str, float], ...]:
        out: list[tuple[str, str, float]] = []
        for metric, values in per_device.items():
            ranked = heapq.nsmallest(OFFENDERS_PER_METRIC, values.items(), key=lambda v: (-v[1], v[0]))
            out += [(dev, metric, value) for dev, value in ranked]
        return tuple(out)

    return Lazy(rank)


def _merge(a: Any, b: Any) -> Any:
    """Two windows' summaries of one kind, or the newer alone where they cannot add up (another output watched)."""
    if a is None or b is None:
        return b if b is not None else a
    try:
        return a.merged(b)
    except ValueError:
        return b


class Summed(NamedTuple):
    """A device's latest report (its health figures, what it serves) and its telemetry summed over the phase: the four
    parts of telemetry_of, or None where no window of the phase carried any."""

    report: DeviceReport
    parts: tuple[Any, ...] | None


class SoakWindows:
    """Each device's report windows summed over a gate's phase, for platforms that keep only a device's latest window
    (the local hub, a module twin). A gate that read one window at a time would need `min_quality_samples` requests
    within a single report period, whatever the ring's size: a ring of 50 cameras answering a frame each per period
    would never be judged. Windows are told apart by `reported_at`; one the observer polled past unseen is not
    counted (sampled, never counted twice). A device's sum starts again when what it serves or shadows changes, or
    the phase does (another `since`). Health figures (requests, errors, p99) stay the latest window's. The sums stay
    parsed (never written back into a report as JSON): the observer adds them up as they are."""

    def __init__(self) -> None:
        # (what is served and shadowed, since), the newest window summed, the latest report, the sum
        self._sums: dict[tuple[str, str], tuple[tuple[Any, ...], float, DeviceReport, tuple[Any, ...]]] = {}

    def summed(self, reports: dict[str, DeviceReport], since: float) -> dict[str, Summed]:
        out: dict[str, Summed] = {}
        for dev, r in reports.items():
            held = self._sums.get((dev, r.model))
            if held is not None and held[2] is r and held[0][-1] == since:
                out[dev] = Summed(r, held[3])  # the same report as at the last poll: nothing to parse or add
                continue
            if r.reported_at < since:
                out[dev] = Summed(r, None)
                continue
            if not has_telemetry(r):
                # a window without requests (a device whose applications were quiet) keeps what its earlier windows of
                # the phase said: the sum is the phase's, not the latest window's
                if held is not None and held[0][:2] == (r.version, r.sha256) and held[0][-1] == since:
                    self._sums[(dev, r.model)] = (held[0], held[1], r, held[3])
                    out[dev] = Summed(r, held[3])
                else:
                    out[dev] = Summed(r, None)
                continue
            mine = telemetry_of(r)
            shadow = mine[2]
            key = (r.version, r.sha256, shadow.version if shadow else None, shadow.sha256 if shadow else None, since)
            if held is None or held[0] != key:
                parts = mine
            elif r.reported_at > held[1]:
                parts = tuple(_merge(a, b) for a, b in zip(held[3], mine, strict=True))
            else:
                out[dev] = Summed(held[2], held[3])
                continue
            self._sums[(dev, r.model)] = (key, r.reported_at, r, parts)
            out[dev] = Summed(r, parts)
        return out
