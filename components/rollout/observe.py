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
from dataclasses import replace
from typing import Any, Iterable

from components.rollout.quality import Summary, Telemetry
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


def control_summary(devices: Iterable[str], reports: dict[str, DeviceReport], desired: DesiredModel, since: float) -> Summary:
    """What the devices still on `desired` (the control group of a comparison) reported since `since`."""
    return summarize(r for d in devices if (r := reports.get(d)) is not None and r.reported_at >= since and is_on(r, desired))


def observe_reports(devices: list[str], reports: dict[str, DeviceReport], desired: DesiredModel | None, since: float) -> RingObservation:
    """Classifies each device of a ring against `desired`. Shared by every platform that sees per-device reports."""
    adopted = failed = reporting = inferences = errors = invalid = 0
    p99s: list[float] = []
    failures: list[tuple[str, str]] = []
    pending: list[str] = []
    per_device: dict[str, list[tuple[str, float]]] = {k: [] for k in OFFENDER_METRICS}
    total = Telemetry()
    summaries: list[tuple[str, Summary]] = []
    for dev in devices:
        r = reports.get(dev)
        fresh = r is not None and r.reported_at >= since
        if fresh:
            reporting += 1
        if r is not None and fresh and failed_on(r, desired):
            failed += 1
            failures.append((dev, r.error or "failed"))
        elif r is not None and fresh and is_on(r, desired):
            adopted += 1
            inferences += r.inferences
            errors += r.errors
            invalid += r.invalid_outputs
            if r.p99_latency_ms is not None:
                p99s.append(r.p99_latency_ms)
                per_device["p99_latency_ms"].append((dev, round(r.p99_latency_ms, 3)))
            if r.inferences:
                per_device["error_rate"].append((dev, round(r.errors / r.inferences, 6)))
                per_device["invalid_output_share"].append((dev, round(r.invalid_outputs / r.inferences, 6)))
            if has_telemetry(r):
                parts = telemetry_of(r)
                total.add(*parts)
                one = Telemetry()
                one.add(*parts)
                summaries.append((dev, one.summary()))
        else:
            pending.append(dev)
    p99s.sort()
    return RingObservation(
        devices=len(devices),
        adopted=adopted,
        failed=failed,
        reporting=reporting,
        inferences=inferences,
        errors=errors,
        invalid_outputs=invalid,
        p99_latency_ms=p99s[min(len(p99s) - 1, int(len(p99s) * 0.99))] if p99s else None,
        failures=tuple(failures[:50]),
        pending=tuple(pending[:50]),
        offenders=_worst(per_device),
        summary=total.summary() if summaries else None,
        device_summaries=tuple(summaries),
    )


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
        self._sums: dict[tuple[str, str], tuple[tuple[Any, ...], float, DeviceReport]] = {}

    def summed(self, reports: dict[str, DeviceReport], since: float) -> dict[str, DeviceReport]:
        out: dict[str, DeviceReport] = {}
        for dev, r in reports.items():
            if r.reported_at < since or not has_telemetry(r):
                out[dev] = r
                continue
            shadow = shadow_of(r)
            key = (r.version, r.sha256, shadow.version if shadow else None, shadow.sha256 if shadow else None, since)
            held = self._sums.get((dev, r.model))
            if held is None or held[0] != key:
                total = r
            elif r.reported_at > held[1]:
                parts = zip(telemetry_of(held[2]), telemetry_of(r), strict=True)
                p, lat, sh, lab = (_merge(a, b) for a, b in parts)
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
            self._sums[(dev, r.model)] = (key, r.reported_at, total)
            out[dev] = total
        return out
