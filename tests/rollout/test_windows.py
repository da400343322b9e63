"""Maintenance windows: a ring deploys only while its group's window is open (in the devices' time zone), its deadline
counts from then, a window that never opens is refused in the stack file, and a rollback never waits for a window."""

from __future__ import annotations

from datetime import datetime, timezone

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.engine import RingPlan, RolloutEngine, RolloutPlan
from components.rollout.spec import DeviceGroupConfig
from components.rollout.types import RingTarget
from components.rollout.windows import MaintenanceWindow, Windows
from tests.rollout.fakes import Behaviour, FakeClock, FakeHub
from tests.rollout.test_engine import GATE, V1, V2, unsigned_rollback


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


NIGHTLY_BERLIN = Windows("Europe/Berlin", (MaintenanceWindow(cron="0 2 * * *", minutes=60),))  # 02:00-03:00 local


def test_a_window_follows_the_devices_clock_across_daylight_saving():
    """02:00 Berlin is 01:00 UTC in winter and 00:00 UTC in summer; on the night the clocks jump past 02:00 the window
    opens when they have (03:00 local), and no spurious start appears the day after."""
    assert NIGHTLY_BERLIN.next_open(utc(2026, 12, 7, 0, 0)) == utc(2026, 12, 7, 1, 0)
    assert NIGHTLY_BERLIN.next_open(utc(2026, 7, 7, 22, 0)) == utc(2026, 7, 8, 0, 0)
    assert NIGHTLY_BERLIN.next_open(utc(2026, 3, 28, 23, 30)) == utc(2026, 3, 29, 1, 0)  # the gap: 03:00 CEST
    assert NIGHTLY_BERLIN.next_open(utc(2026, 3, 29, 2, 0)) == utc(2026, 3, 30, 0, 0)
    assert NIGHTLY_BERLIN.open_until(utc(2026, 12, 7, 1, 30)) == utc(2026, 12, 7, 2, 0)
    assert NIGHTLY_BERLIN.open_until(utc(2026, 12, 7, 2, 0)) is None, "a window is open for its minutes, not one more"


@settings(max_examples=60, deadline=None)
@given(
    st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 12, 31)),
    st.sampled_from(["0 2 * * *", "30 22 * * 1-5", "*/20 * * * *", "0 0 1 * *"]),
    st.integers(min_value=1, max_value=600),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_the_next_opening_is_open_and_nothing_before_it_is(at, cron, minutes, zone):
    windows = Windows(zone, (MaintenanceWindow(cron=cron, minutes=minutes),))
    opens = windows.next_open(at)
    assert opens is not None and opens >= at
    assert windows.open_until(opens) is not None, "the time next_open names is not inside a window"
    if opens > at:
        for k in range(1, 6):  # sampled instants strictly before it: all closed
            t = at + (opens - at) * k / 6
            if t < opens:  # (a float a few hundred nanoseconds before it may round to it)
                assert windows.open_until(t) is None


GROUP = {
    "name": "cameras",
    "hardware": {"name": "x86", "arch": "amd64", "execution_providers": ["CPUExecutionProvider"], "memory_mb": 512, "storage_mb": 1024},
    "labels": {"site": "a"},
}


@pytest.mark.parametrize(
    "bad, where, says",
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "not an IANA time zone name"),
        ({"maintenance_windows": [{"cron": "0 0 30 2 *", "minutes": 60}]}, "", "opens within a year"),
        ({"maintenance_windows": [{"cron": "every night", "minutes": 60}]}, "maintenance_windows.0.cron", "five-field cron"),
        ({"maintenance_windows": [{"cron": "0 2 * * *", "minutes": 0}]}, "maintenance_windows.0.minutes", "greater than or equal to 1"),
    ],
)
def test_a_group_whose_window_never_opens_or_is_malformed_is_refused(bad, where, says):
    with pytest.raises(pydantic.ValidationError) as info:
        DeviceGroupConfig.model_validate({**GROUP, **bad}, strict=False)
    assert says in str(info.value) and where in str(info.value)


def test_a_group_without_windows_serializes_as_before():
    assert set(DeviceGroupConfig.model_validate(GROUP, strict=False).model_dump()) == {"name", "platform", "hardware", "labels", "devices"}


def plan(devices: list[str], windows: list[Windows | None]) -> RolloutPlan:
    cut = [0, 2, len(devices)]
    rings = tuple(
        RingPlan(RingTarget("detector", name, i, tuple(devices[cut[i] : cut[i + 1]])), GATE, window=windows[i])
        for i, name in enumerate(["canary", "broad"])
    )
    return RolloutPlan("detector", V2, V1, rings)


def test_a_ring_deploys_only_once_its_window_opens_and_its_deadline_counts_from_then():
    """The canary (no window) goes at once at 00:00 UTC; the broad ring waits for 02:00 Berlin (01:00 UTC) with its
    devices untouched, then deploys and passes: an hour of waiting did not burn its 120 s deadline."""
    clock = FakeClock(utc(2026, 12, 7, 0, 0))
    devices = {f"d{i:02d}": Behaviour() for i in range(8)}
    hub = FakeHub(clock, devices, running=V1)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=30.0).run(plan(sorted(devices), [None, NIGHTLY_BERLIN]))
    assert progress["status"] == "succeeded"
    canary, broad = progress["rings"]
    assert canary["deployed_at"] < utc(2026, 12, 7, 0, 5)
    assert utc(2026, 12, 7, 1, 0) <= broad["deployed_at"] < utc(2026, 12, 7, 1, 1), "deployed outside its window"
    waits = [e for e in progress["events"] if e["event"] == "window-wait"]
    assert [(e["ring"], e["opens_at"]) for e in waits] == [("broad", utc(2026, 12, 7, 1, 0))], "said more than once"


def test_a_rollback_does_not_wait_for_a_window():
    """The canary deploys inside a one-minute window; its devices take 90 s to adopt and one refuses the version, so the
    gate fails after the window closed. The rollback goes at once anyway: a bad version never waits for tonight."""
    clock = FakeClock(utc(2026, 12, 7, 0, 0))
    brief = Windows("UTC", (MaintenanceWindow(cron="0 0 * * *", minutes=1),))
    devices = {f"d{i:02d}": Behaviour(adopt_after=90.0) for i in range(8)}
    devices["d00"] = Behaviour(adopt_after=90.0, refuse={"1.1.0": "signature does not verify"})
    hub = FakeHub(clock, devices, running=V1)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=5.0).run(plan(sorted(devices), [brief, brief]))
    assert progress["status"] == "rolled_back"
    assert progress["rollback"]["started_at"] > utc(2026, 12, 7, 0, 1), "the test did not fail outside the window"
    assert progress["finished_at"] - progress["rollback"]["started_at"] < 300, "the rollback waited for a window"
    assert all(hub.running(d)[0].version == "1.0.0" for d in devices)
