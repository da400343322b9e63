"""SoakWindows: a gate on a platform that keeps only each device's latest report judges every window of its phase once."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from components.rollout.observe import ObserveMemo, SoakWindows, Summed, observe_reports
from edgefleet_agent.contract.state import DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow
from tests.rollout.fakes import desired


def window(at: float, classes: list[int], right: int = 0, version: str = "1.1.0", shadow: str | None = None) -> DeviceReport:
    preds, lat = Predictions("classes", "scores"), Latency()
    for c in classes:
        preds.add_class(c, 0.9)
        lat.add(2.0)
    extra = {}
    if shadow is not None:
        extra["shadow"] = Shadow(shadow, "c" * 64, len(classes), len(classes), 0, 0, lat, lat).to_json()
    return DeviceReport(
        "cam-1",
        "detector",
        version,
        "b" * 64,
        "ok",
        inferences=len(classes),
        reported_at=at,
        predictions=preds.to_json(),
        latency=lat.to_json(),
        labelled=Labelled(len(classes), right).to_json(),
        **extra,
    )


def predictions_of(got: Summed) -> int:
    """How many answers the phase's summed predictions count."""
    assert got.parts is not None and isinstance(got.parts[0], Predictions)
    return got.parts[0].n


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=30), st.integers(min_value=1, max_value=4))
def test_every_window_counts_once_however_often_the_gate_polls(sizes, polls_per_window):
    soak = SoakWindows()
    seen = None
    for i, n in enumerate(sizes):
        r = window(100.0 + i, [i % 3] * n, right=n // 2)
        for _ in range(polls_per_window):  # the engine polls faster than devices report: the same window again
            seen = soak.summed({"cam-1": r}, since=100.0)["cam-1"]
    assert seen is not None and seen.parts is not None
    predictions, _, _, labelled = seen.parts
    assert predictions.n == sum(sizes)
    assert labelled.n == sum(sizes) and labelled.correct == sum(n // 2 for n in sizes)
    assert seen.report.inferences == sizes[-1], "health figures stay the latest window's"


def test_a_new_phase_or_another_version_starts_the_sum_again():
    soak = SoakWindows()
    soak.summed({"cam-1": window(10.0, [0] * 5)}, since=10.0)
    assert predictions_of(soak.summed({"cam-1": window(11.0, [0] * 5)}, since=10.0)["cam-1"]) == 10
    after = soak.summed({"cam-1": window(12.0, [1] * 3)}, since=11.5)["cam-1"]
    assert predictions_of(after) == 3, "a window of an earlier phase leaked into the next"
    other = soak.summed({"cam-1": window(13.0, [2] * 4, version="1.2.0")}, since=11.5)["cam-1"]
    assert predictions_of(other) == 4, "two versions' answers summed as one"
    shadowing = soak.summed({"cam-1": window(14.0, [2] * 4, version="1.2.0", shadow="1.3.0")}, since=11.5)["cam-1"]
    assert shadowing.parts is not None and isinstance(shadowing.parts[2], Shadow) and shadowing.parts[2].compared == 4


def test_a_ring_of_devices_answering_one_request_a_window_reaches_the_quality_sample_it_needs():
    """The reason it exists: 50 cameras answering a frame each per report period never gather 200 requests in one
    window; over four periods they do."""
    devices = [f"cam-{i}" for i in range(50)]
    served = desired("1.1.0", "b" * 64)
    soak, obs = SoakWindows(), None
    for period in range(4):
        reports = {dev: replace(window(100.0 + period, [period % 3]), device_id=dev) for dev in devices}
        latest = observe_reports(devices, reports, served, since=100.0)
        memo = ObserveMemo()
        memo.begin(served, 100.0)
        for dev, got in soak.summed(reports, since=100.0).items():
            memo.device(dev, got.report, served, 100.0, got.parts)
        obs = memo.observation()
    assert latest.summary is not None and latest.summary.predictions == 50
    assert obs is not None and obs.summary is not None and obs.summary.predictions == 200


def test_a_quiet_window_keeps_what_the_phase_said():
    """A device whose applications sent nothing in its latest window (the simulator's devices take turns at 10,000)
    still counts what it said earlier in the phase: a gate starved of samples by quiet windows would wait and fail
    closed on a good model."""
    soak = SoakWindows()
    soak.summed({"cam-1": window(10.0, [0] * 5)}, since=10.0)
    quiet = replace(window(11.0, []), predictions=None, latency=None, labelled=None)
    seen = soak.summed({"cam-1": quiet}, since=10.0)["cam-1"]
    assert predictions_of(seen) == 5 and seen.report.inferences == 0 and seen.report.reported_at == 11.0
    after = soak.summed({"cam-1": window(12.0, [1] * 3)}, since=10.0)["cam-1"]
    assert predictions_of(after) == 8, "the quiet window lost or doubled the earlier ones"
    other = soak.summed({"cam-1": replace(quiet, version="1.2.0", reported_at=13.0)}, since=10.0)["cam-1"]
    assert other.parts is None, "another version's quiet window carried the previous version's answers"
