"""Maintenance windows: a ring deploys only while its group's window is open (in the devices' time zone), its deadline
counts from then, a window that never opens is refused in the stack file, and a rollback never waits for a window."""

from __future__ import annotations

from datetime import datetime, timezone

import pydantic
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from components.rollout.engine import RingPlan, RolloutEngine, RolloutPlan
from components.rollout.spec import DeviceGroupConfig, GateConfig
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
@example(at=1830211199.9999998, cron="*/20 * * * *", minutes=4, zone="UTC")  # a hair before an opening: not skipped
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


NIGHTLY_TEN_MINUTES = Windows("UTC", (MaintenanceWindow(cron="0 0 * * *", minutes=10),))  # 00:00-00:10 UTC
LONG = GATE.model_copy(update={"deadline_seconds": 900})
POLL = 240.0  # coarse: a day of polls keeps every sample, and each save copies them all


def one_ring(devices: list[str], window: Windows = NIGHTLY_TEN_MINUTES, gate: GateConfig = LONG) -> RolloutPlan:
    return RolloutPlan("detector", V2, V1, (RingPlan(RingTarget("detector", "canary", 0, tuple(devices)), gate, window=window),))


def test_a_ring_still_adopting_when_its_window_closes_is_not_failed_by_the_closed_hours():
    """Two of eight devices are offline through the first night's window and swap the next night. The ring's 900 s
    deadline counts only open-window time while devices are still to swap: 600 s tonight, 240 s tomorrow, then a
    wall-clock soak, and the ring passes; without the pause it would have failed at 00:17 on the first night."""
    clock = FakeClock(utc(2026, 12, 7, 0, 0))
    devices = {f"d{i:02d}": Behaviour(adopt_after=1.0) for i in range(8)}
    devices["d06"] = devices["d07"] = Behaviour(adopt_after=1.0, online_at=utc(2026, 12, 8, 0, 0, 5))
    hub = FakeHub(clock, devices, running=V1)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=POLL).run(one_ring(sorted(devices)))
    assert progress["status"] == "succeeded", progress["rings"][0]["verdict"]
    (ring,) = progress["rings"]
    assert utc(2026, 12, 8, 0, 0) < ring["finished_at"] <= utc(2026, 12, 8, 0, 10)
    assert ring["window_paused"] == pytest.approx(86400 - 600), "the pause is the closed hours while devices were to swap"
    paused = [e for e in progress["events"] if e["event"] == "deadline-paused"]
    assert [(e["opens_at"], e["adopted"], e["devices"]) for e in paused] == [(utc(2026, 12, 8, 0, 0), 6, 8)], "said once a closure"
    closed = [x for x in progress["samples"] if utc(2026, 12, 7, 0, 10) < x["t"] < utc(2026, 12, 8, 0, 0)]
    assert 0 < len(closed) <= (86400 - 600) / 300 + 1, "a paused ring is sampled every 5 minutes, not every poll"


def test_a_closed_window_pauses_the_deadline_but_never_stops_it():
    """A device that never comes online: the ring fails once 900 s of open window have passed (600 s tonight, the rest
    tomorrow), not at tonight's close and not never."""
    clock = FakeClock(utc(2026, 12, 7, 0, 0))
    devices = {f"d{i:02d}": Behaviour(adopt_after=1.0) for i in range(8)}
    devices["d07"] = Behaviour(online_at=utc(2027, 1, 1))
    hub = FakeHub(clock, devices, running=V1)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=POLL).run(one_ring(sorted(devices)))
    assert progress["status"] == "rolled_back"
    failed = next(e for e in progress["events"] if e["event"] == "gate-failed")
    assert utc(2026, 12, 8, 0, 5) < failed["t"] < utc(2026, 12, 8, 0, 10), "the deadline ran in the closed hours, or not at all"
    assert "deadline 900s passed" in failed["reasons"][0]


def test_a_ring_that_shadows_orders_its_serve_swap_only_in_a_window_and_the_wait_does_not_burn_its_deadline():
    """A device offline until 00:05 keeps the shadow phase adopting past a one-minute window (the deadline pauses), and
    the 120 s shadow soak ends later still: the serve swap waits for the next night, and the ring passes with its 900 s
    deadline (the closed hours waiting to swap do not count). Each wait is said."""
    clock = FakeClock(utc(2026, 12, 7, 0, 0))
    brief = Windows("UTC", (MaintenanceWindow(cron="0 0 * * *", minutes=1),))
    devices = {f"d{i:02d}": Behaviour(adopt_after=1.0) for i in range(4)}
    devices["d03"] = Behaviour(adopt_after=1.0, online_at=utc(2026, 12, 7, 0, 5))
    hub = FakeHub(clock, devices, running=V1)
    gate = LONG.model_copy(update={"shadow_soak_seconds": 120.0})
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=30.0).run(one_ring(sorted(devices), brief, gate))
    assert progress["status"] == "succeeded", progress["rings"][0]["verdict"]
    sets = [(c[2], c[4]) for c in hub.calls if c[0] == "set_desired"]
    assert [v for v, _ in sets] == ["1.0.0", "1.1.0"], "shadow (previous version, candidate beside it), then serve"
    assert all(brief.open_until(t) is not None for _, t in sets), f"a swap was ordered outside the window: {sets}"
    assert sets[1][1] == utc(2026, 12, 8, 0, 0)
    waits = [(e["event"], e["opens_at"]) for e in progress["events"] if e["event"] in ("window-wait", "deadline-paused")]
    assert waits == [("deadline-paused", utc(2026, 12, 8, 0, 0)), ("window-wait", utc(2026, 12, 8, 0, 0))]
