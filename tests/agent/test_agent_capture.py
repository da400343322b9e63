"""Sample capture (opt-in): which requests a device keeps, the limits that bound it, and where it may write."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgefleet_agent.capture import STATE_FILE, Capturer, CaptureSinkError, LocalCaptureSink
from edgefleet_agent.contract.capture import CaptureRecord, CaptureSpec
from edgefleet_agent.contract.errors import FormatError
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Shadow

DAY = 86_400.0


def images(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(n)]


def capturing(desired: DesiredModel, **spec) -> DesiredModel:
    return dataclasses.replace(desired, capture=CaptureSpec(**spec).to_json())


def samples(root: Path) -> list[CaptureRecord]:
    return sorted((CaptureRecord.from_json(p.read_text()) for p in root.rglob("*.json")), key=lambda r: r.id)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "captures"


@pytest.fixture
def capture_agent(make_agent, transport, store):
    def make(desired: DesiredModel | None, **kwargs):
        agent = make_agent(capture_sink=LocalCaptureSink(store, "detector", "dev-1"), **kwargs)
        transport.desired_model = desired
        agent.sync()
        return agent

    return make


# -- the contract -----------------------------------------------------------------------------------------------------
def test_a_capture_setting_makes_the_desired_state_format_2_and_round_trips(v100):
    plain = v100.to_json()
    assert "capture" not in plain and '"format"' not in plain, "a desired state without capture is byte-identical to format 1"
    with_capture = capturing(v100, low_confidence_below=0.5)
    body = json.loads(with_capture.to_json())
    assert body["format"] == 2 and body["capture"]["low_confidence_below"] == 0.5
    assert DesiredModel.from_json(with_capture.to_json()) == with_capture


def test_a_spec_without_a_criterion_or_with_bad_limits_is_refused():
    with pytest.raises(ValueError, match="no criterion"):
        CaptureSpec()
    with pytest.raises(FormatError, match="max_per_device_per_day"):
        CaptureSpec.from_json({"on_shadow_disagreement": True, "max_per_device_per_day": 0})
    with pytest.raises(FormatError, match="low_confidence_below"):
        CaptureSpec.from_json({"low_confidence_below": 2})
    assert CaptureSpec.from_json({"on_shadow_disagreement": True, "from_a_newer_controller": 1}) == CaptureSpec(on_shadow_disagreement=True)


def test_old_reports_without_capture_fields_still_parse():
    old = json.dumps({"device_id": "d", "model": "m", "version": None, "sha256": None, "status": "idle"})
    report = DeviceReport.from_json(old)
    assert (report.captured, report.capture_failed) == (0, None)
    assert "capture_failed" not in report.to_json(), "written only when a capture failed"


# -- off by default ---------------------------------------------------------------------------------------------------
def test_capture_is_off_by_default_writes_nothing_and_reports_zero(capture_agent, v100, store, tmp_path):
    agent = capture_agent(v100)  # a sink exists, the desired state asks for nothing
    for feed in images(5):
        agent.predict(feed)
    report = agent.build_report()
    assert (report.inferences, report.captured, report.capture_failed) == (5, 0, None)
    assert not store.exists()
    assert not (tmp_path / "state" / "detector" / STATE_FILE).exists()


def test_without_a_sink_a_capture_request_captures_nothing(make_agent, transport, v100, tmp_path):
    """The platform gives a device a sink only where the stack declared where captured data may go."""
    agent = make_agent()
    transport.desired_model = capturing(v100, low_confidence_below=1.0, min_seconds_between=0)
    agent.sync()
    for feed in images(3):
        agent.predict(feed)
    assert agent.build_report().captured == 0
    assert not list(tmp_path.rglob("*.npz"))


# -- triggers ---------------------------------------------------------------------------------------------------------
def test_a_low_confidence_request_is_captured_with_its_tensors_and_predictions(capture_agent, v100, store, clock):
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=0))
    feed = images(1)[0]
    pred = agent.predict(feed)
    report = agent.build_report()
    assert report.captured == 1
    [rec] = samples(store)
    assert (rec.device, rec.model, rec.version, rec.sha256, rec.reason) == ("dev-1", "detector", "1.0.0", v100.sha256, "low-confidence")
    assert rec.time == clock.now and rec.top1 == (int(pred.outputs["scores"].argmax()),)
    npz = next(store.rglob(f"{rec.id}.npz"))
    assert npz.parent.parent == store / "detector" / "dev-1"
    with np.load(npz, allow_pickle=False) as data:  # no pickle needed to read it
        np.testing.assert_array_equal(data["input/image"], feed["image"])
        np.testing.assert_array_equal(data["output/scores"], pred.outputs["scores"])
    assert agent.build_report().captured == 0, "counts are per window"


def test_a_confident_request_is_not_captured(capture_agent, v100, store):
    agent = capture_agent(capturing(v100, low_confidence_below=0.01, min_seconds_between=0))  # 3 classes: top-1 >= 1/3
    for feed in images(5):
        agent.predict(feed)
    assert agent.build_report().captured == 0 and not store.exists()


def test_shadow_disagreements_are_captured_and_agreements_are_not(capture_agent, v100, v110, store):
    desired = capturing(dataclasses.replace(v110, shadow=v100), on_shadow_disagreement=True, min_seconds_between=0)
    agent = capture_agent(desired)
    for feed in images(16):
        agent.predict(feed)
        agent.shadow_runner.drain()
    report = agent.build_report()
    shadow = Shadow.from_json(report.shadow)
    assert shadow.compared == 16 and 0 < shadow.agree < 16, "the fixture models disagree on some of these inputs"
    assert report.captured == shadow.compared - shadow.agree
    recs = samples(store)
    assert len(recs) == report.captured
    assert all(r.reason == "shadow-disagreement" and r.version == "1.1.0" and r.candidate_version == "1.0.0" for r in recs)
    assert all(r.top1 != r.candidate_top1 for r in recs)


# -- limits -----------------------------------------------------------------------------------------------------------
def test_the_rate_limit_allows_one_capture_per_interval(capture_agent, v100, store, clock):
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=30))
    feeds = images(4)
    agent.predict(feeds[0])
    clock.now += 10
    agent.predict(feeds[1])  # 10 s later: too soon
    clock.now += 20
    agent.predict(feeds[2])  # 30 s after the first
    agent.predict(feeds[3])
    assert agent.build_report().captured == 2
    assert len(samples(store)) == 2


def test_the_daily_cap_holds_and_resets_the_next_utc_day(capture_agent, v100, store, clock):
    clock.now = 20 * DAY + 3600  # 01:00 UTC
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=0, max_per_device_per_day=3))
    feed = images(1)[0]
    for _ in range(10):
        agent.predict(feed)
        clock.now += 1
    assert agent.build_report().captured == 3
    clock.now = 21 * DAY + 5  # the next UTC day
    for _ in range(5):
        agent.predict(feed)
        clock.now += 1
    assert agent.build_report().captured == 3
    days = sorted(p.name for p in (store / "detector" / "dev-1").iterdir())
    assert len(days) == 2 and len(samples(store)) == 6


def test_a_restart_keeps_the_days_count(capture_agent, make_agent, v100, store, clock, tmp_path):
    """Attack: a device that restarts (or is restarted) to reset its cap. Refused: the count lives in the state dir."""
    spec = capturing(v100, low_confidence_below=1.0, min_seconds_between=0, max_per_device_per_day=2)
    agent = capture_agent(spec)
    feed = images(1)[0]
    agent.predict(feed)
    agent.predict(feed)
    assert agent.build_report().captured == 2
    agent.close()
    again = capture_agent(spec)
    for _ in range(5):
        again.predict(feed)
    assert again.build_report().captured == 0, "the cap is spent for today, restart or not"
    assert again.capture.today[1] == 2
    assert len(samples(store)) == 2


def test_an_unreadable_count_is_taken_as_a_spent_cap(capture_agent, v100, store, tmp_path):
    state = tmp_path / "state" / "detector" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=0))
    agent.predict(images(1)[0])
    assert agent.build_report().captured == 0


def test_inputs_over_the_size_bound_are_not_captured(capture_agent, v100, store):
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=0, max_sample_bytes=1024))
    agent.predict(images(1)[0])  # 602 KB of pixels
    window = agent.capture.take()
    assert (window.captured, window.skipped) == (0, 1)
    assert not store.exists()


def test_a_failing_store_never_fails_the_request_and_is_counted(make_agent, transport, v100, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's directory should be")
    agent = make_agent(capture_sink=LocalCaptureSink(blocked, "detector", "dev-1"))
    transport.desired_model = capturing(v100, low_confidence_below=1.0, min_seconds_between=0)
    agent.sync()
    for feed in images(3):
        assert agent.predict(feed).version == "1.0.0"
    report = agent.build_report()
    assert (report.inferences, report.captured, report.capture_failed, report.status) == (3, 0, 3, "ok")
    assert json.loads(report.to_json())["capture_failed"] == 3


def test_an_unreadable_capture_setting_turns_capture_off_and_says_so(capture_agent, v100, store):
    agent = capture_agent(dataclasses.replace(v100, capture={"max_per_device_per_day": 5}))  # no criterion
    agent.predict(images(1)[0])
    report = agent.build_report()
    assert report.status == "ok" and report.captured == 0
    assert "capture setting refused" in (report.error or "")


def test_removing_capture_from_the_desired_state_stops_it(capture_agent, transport, v100, store):
    agent = capture_agent(capturing(v100, low_confidence_below=1.0, min_seconds_between=0))
    agent.predict(images(1)[0])
    transport.desired_model = v100
    agent.sync()
    agent.predict(images(1)[0])
    assert agent.build_report().captured == 1


# -- the device's own prefix ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device_id", ["../dev-2", "dev-1/../../dev-2", "..", ".hidden", "/etc", "dev 1", "a/b", ""])
def test_a_crafted_device_id_cannot_leave_the_devices_prefix(tmp_path, device_id):
    """Attack: a device id carrying path syntax, to write under another device's (or any) path. Refused at construction."""
    with pytest.raises(CaptureSinkError, match="plain path segment"):
        LocalCaptureSink(tmp_path / "captures", "detector", device_id)


def test_a_crafted_model_name_cannot_leave_the_store(tmp_path):
    with pytest.raises(CaptureSinkError):
        LocalCaptureSink(tmp_path / "captures", "../store", "dev-1")


def _record(device="dev-1", model="detector", id_="0001", t=1_000_000.0) -> CaptureRecord:
    return CaptureRecord(id=id_, device=device, model=model, version="1.0.0", sha256="0" * 64, time=t, reason="low-confidence")


def test_a_record_naming_another_device_or_a_path_is_refused(tmp_path):
    """Attack: a sink for dev-1 handed a record of dev-2, or an id that is a path. Refused; nothing is written."""
    root = tmp_path / "captures"
    sink = LocalCaptureSink(root, "detector", "dev-1")
    arrays = {"input/image": np.zeros(3, np.float32)}
    with pytest.raises(CaptureSinkError, match="cannot be written"):
        sink.write(_record(device="dev-2"), arrays)
    with pytest.raises(CaptureSinkError, match="plain file name"):
        sink.write(_record(id_="../../dev-2/x"), arrays)
    assert not (root / "detector" / "dev-2").exists()
    sink.write(_record(), arrays)
    assert [p.relative_to(root).parts[:2] for p in root.rglob("*.npz")] == [("detector", "dev-1")]


def test_a_symlink_planted_as_the_devices_prefix_is_refused(tmp_path):
    """Attack: dev-1's prefix replaced by a symlink to dev-2's (or outside the store). Refused; dev-2's prefix untouched."""
    root = tmp_path / "captures"
    (root / "detector" / "dev-2").mkdir(parents=True)
    os.symlink(root / "detector" / "dev-2", root / "detector" / "dev-1")
    sink = LocalCaptureSink(root, "detector", "dev-1")
    with pytest.raises(CaptureSinkError, match="symbolic link"):
        sink.write(_record(), {"input/image": np.zeros(3, np.float32)})
    assert not any((root / "detector" / "dev-2").iterdir())


def test_object_arrays_are_never_written_as_pickles(tmp_path):
    sink = LocalCaptureSink(tmp_path / "captures", "detector", "dev-1")
    with pytest.raises(CaptureSinkError, match="pickled"):
        sink.write(_record(), {"input/x": np.array([object()], dtype=object)})


def test_concurrent_requests_never_wait_for_a_capture(tmp_path):
    """A request that finds a capture being written skips it (counted) instead of waiting."""
    spec = CaptureSpec(low_confidence_below=1.0, min_seconds_between=0)
    cap = Capturer("dev-1", "detector", tmp_path / "state", LocalCaptureSink(tmp_path / "c", "detector", "dev-1"), lambda: 1_000_000.0)
    cap.configure(spec)
    feed = {"image": np.zeros(3, np.float32)}
    args = ("1.0.0", "0" * 64, feed, ["scores"], [np.zeros((1, 3), np.float32)], [0], [0.4])
    cap._lock.acquire()  # a capture in progress on another thread
    try:
        assert cap.consider_request(*args) is False
    finally:
        cap._lock.release()
    assert cap.consider_request(*args) is True
    window = cap.take()
    assert (window.captured, window.skipped) == (1, 1)
