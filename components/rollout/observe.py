"""A ring's observation from per-device reports: the classification every platform that sees devices one by
one shares (the local hub, and the AWS and Azure gates when they list offending devices)."""

from __future__ import annotations

import heapq

from components.rollout.types import OFFENDER_METRICS, OFFENDERS_PER_METRIC, RingObservation
from edgefleet_agent.contract.state import DesiredModel, DeviceReport


def is_on(report: DeviceReport, desired: DesiredModel | None) -> bool:
    if desired is None:
        return report.version is None
    return report.version == desired.version and report.sha256 == desired.sha256 and report.status == "ok"


def observe_reports(devices: list[str], reports: dict[str, DeviceReport], desired: DesiredModel | None, since: float) -> RingObservation:
    """Classifies each device of a ring against `desired`. Shared by every platform that sees per-device reports."""
    adopted = failed = reporting = inferences = errors = invalid = 0
    p99s: list[float] = []
    failures: list[tuple[str, str]] = []
    pending: list[str] = []
    per_device: dict[str, list[tuple[str, float]]] = {k: [] for k in OFFENDER_METRICS}
    for dev in devices:
        r = reports.get(dev)
        fresh = r is not None and r.reported_at >= since
        if fresh:
            reporting += 1
        if r is not None and fresh and is_on(r, desired):
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
        elif r is not None and fresh and desired is not None and r.status == "failed" and r.failed_version == desired.version:
            failed += 1
            failures.append((dev, r.error or "failed"))
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
    )


def _worst(per_device: dict[str, list[tuple[str, float]]]) -> tuple[tuple[str, str, float], ...]:
    """The worst devices per metric, bounded; zero rates are nobody's fault and are left out."""
    out: list[tuple[str, str, float]] = []
    for metric, values in per_device.items():
        ranked = heapq.nsmallest(OFFENDERS_PER_METRIC, (v for v in values if v[1] > 0), key=lambda v: (-v[1], v[0]))
        out += [(dev, metric, value) for dev, value in ranked]
    return tuple(out)
