"""A gate that remembers a ring between polls (ObserveMemo, RunningTelemetry) sees exactly what one that reads the whole
ring afresh sees: the memo is how a 10,000-device ring is polled at the cost of what changed, never another answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.observe import ObserveMemo, observe_reports
from edgefleet_agent.contract.state import DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow
from tests.rollout.fakes import desired

DEVICES = [f"cam-{i}" for i in range(6)]
V2, OTHER = desired("1.1.0"), desired("1.0.0")


def report(dev: str, at: float, version: str, classes: list[int], ms: float, failed: bool, shadow: bool) -> DeviceReport:
    d = V2 if version == "1.1.0" else OTHER
    preds, lat = Predictions("classes", "scores"), Latency()
    for c in classes:
        preds.add_class(c, 0.3 + 0.1 * c)
        lat.add(ms)
    extra = {}
    if shadow and classes:
        extra["shadow"] = Shadow("9.9.9", "c" * 64, len(classes), len(classes) // 2, 0, 0, lat, lat).to_json()
    return DeviceReport(
        dev,
        "detector",
        d.version,
        d.sha256,
        "failed" if failed else "ok",
        error="broke" if failed else None,
        failed_version="1.1.0" if failed else None,
        inferences=len(classes),
        errors=len(classes) // 3,
        p99_latency_ms=ms if classes else None,
        reported_at=at,
        predictions=preds.to_json() if classes else None,
        latency=lat.to_json() if classes else None,
        labelled=Labelled(len(classes), len(classes) // 2).to_json() if classes else None,
        **extra,
    )


one_report = st.tuples(
    st.sampled_from(DEVICES),
    st.sampled_from(["1.1.0", "1.0.0"]),
    st.lists(st.integers(0, 4), max_size=6),
    st.floats(0.1, 500.0),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(one_report, max_size=4), min_size=1, max_size=8), st.sampled_from([0.0, 3.0]))
def test_a_remembered_ring_is_observed_as_if_read_afresh(polls, since):
    """Between polls some devices report again (another version, a failure, more or no traffic, a shadow); after each
    poll the remembering observer's answer equals a fresh one's, counts, offenders and summed telemetry alike."""
    memo = ObserveMemo()
    reports: dict[str, DeviceReport] = {}
    for t, changes in enumerate(polls):
        for dev, version, classes, ms, failed, shadow in changes:
            reports[dev] = report(dev, float(t), version, classes, ms, failed, shadow)
        remembered = observe_reports(DEVICES, dict(reports), V2, since, memo)
        fresh = observe_reports(DEVICES, dict(reports), V2, since)
        assert remembered == fresh


def test_another_desired_state_starts_the_memory_over():
    memo = ObserveMemo()
    reports = {"cam-0": report("cam-0", 5.0, "1.1.0", [1, 2], 2.0, False, False)}
    assert observe_reports(DEVICES, reports, V2, 0.0, memo).adopted == 1
    assert observe_reports(DEVICES, reports, OTHER, 0.0, memo).adopted == 0, "remembered as adopted under another version"
    assert observe_reports(DEVICES, reports, V2, 6.0, memo).adopted == 0, "a window before the phase counted in it"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(one_report, max_size=4), min_size=1, max_size=8))
def test_a_remembered_control_group_is_summed_as_if_read_afresh(polls):
    """The control group's summary (devices still on the previous version) with a memo equals the one summed afresh."""
    from components.rollout.observe import control_summary

    memo = ObserveMemo()
    reports: dict[str, DeviceReport] = {}
    for t, changes in enumerate(polls):
        for dev, version, classes, ms, failed, _ in changes:
            reports[dev] = report(dev, float(t), version, classes, ms, failed, False)
        assert control_summary(DEVICES, dict(reports), OTHER, 0.0, memo) == control_summary(DEVICES, dict(reports), OTHER, 0.0)
