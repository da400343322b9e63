"""The earliest schedule of a rollout's rings under maintenance windows (windows.earliest_schedule): a ring starts
after the previous one completes and inside its window, its swaps take open-window time, its soaks wall time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.windows import (
    MaintenanceWindow,
    RingTiming,
    Windows,
    after_open,
    earliest_schedule,
    longest_hold,
    open_seconds,
)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


NIGHTLY_UTC = Windows("UTC", (MaintenanceWindow(cron="0 2 * * *", minutes=60),))  # 02:00-03:00 UTC


def test_a_soak_runs_past_the_close_but_a_swap_waits_for_the_next_opening():
    """At 00:00 the canary (no window) soaks an hour; the broad ring opens at 02:00, its devices take 90 min of open
    window to swap: 60 tonight, 30 tomorrow from 02:00, then its 2 h soak runs past tomorrow's close to 04:30."""
    canary = RingTiming(None, soak_seconds=3600)
    broad = RingTiming(NIGHTLY_UTC, soak_seconds=7200, adoption_seconds=90 * 60)
    a, b = earliest_schedule([canary, broad], utc(2026, 12, 7, 0, 0))
    assert (a.start, a.complete) == (utc(2026, 12, 7, 0, 0), utc(2026, 12, 7, 1, 0))
    assert (b.start, b.complete) == (utc(2026, 12, 7, 2, 0), utc(2026, 12, 8, 4, 30))


def test_a_ring_that_shadows_orders_its_serve_swap_in_the_next_window():
    """The shadow soak (2 h from 02:00) ends at 04:00, after the close: serving waits for 02:00 the next night."""
    ring = RingTiming(NIGHTLY_UTC, soak_seconds=600, shadow_soak_seconds=7200)
    (s,) = earliest_schedule([ring], utc(2026, 12, 7, 0, 0))
    assert (s.start, s.complete) == (utc(2026, 12, 7, 2, 0), utc(2026, 12, 8, 2, 10))


def test_a_ring_whose_window_never_opens_leaves_it_and_every_later_ring_without_a_time():
    never = Windows("UTC", (MaintenanceWindow(cron="0 0 30 2 *", minutes=60),))
    out = earliest_schedule([RingTiming(None, 60), RingTiming(never, 60), RingTiming(None, 60)], utc(2026, 12, 7))
    assert out[0].complete == utc(2026, 12, 7, 0, 1)
    assert [(s.start, s.complete) for s in out[1:]] == [(None, None), (None, None)]


windows = st.one_of(
    st.none(),
    st.builds(
        lambda cron, minutes, zone: Windows(zone, (MaintenanceWindow(cron=cron, minutes=minutes),)),
        st.sampled_from(["0 2 * * *", "30 22 * * 1-5", "*/20 * * * *", "0 0 * * 0", "15 3,15 * * *"]),
        st.integers(min_value=1, max_value=240),
        st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    ),
)
timings = st.builds(
    RingTiming,
    windows,
    st.floats(min_value=0, max_value=3 * 86400),
    st.one_of(st.none(), st.floats(min_value=0, max_value=86400)),
    st.one_of(st.just(0.0), st.floats(min_value=0, max_value=3 * 3600)),
)


def _soaks(r: RingTiming) -> float:
    return r.soak_seconds + (r.shadow_soak_seconds or 0.0)


def _swaps(r: RingTiming) -> int:
    return 2 if r.shadow_soak_seconds is not None else 1


@settings(max_examples=80, deadline=None)
@given(st.lists(timings, min_size=1, max_size=4), st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 12, 31)))
def test_rings_start_in_a_window_after_the_previous_completes_and_take_at_least_their_soaks(rings, start):
    out = earliest_schedule(rings, start)
    assert len(out) == len(rings)
    ready = start
    for ring, s in zip(rings, out, strict=True):
        assert s.start is not None and s.complete is not None, "every sampled window opens within a year"
        assert s.start >= ready, "a ring started before the previous ring completed"
        assert s.complete >= s.start + _soaks(ring) + _swaps(ring) * ring.adoption_seconds - 1e-6
        if ring.window is not None:
            assert ring.window.open_until(s.start) is not None, "a ring started outside its window"
        else:
            assert s.start == ready
        ready = s.complete


@settings(max_examples=80, deadline=None)
@given(
    st.lists(timings.map(lambda r: RingTiming(None, r.soak_seconds, r.shadow_soak_seconds, r.adoption_seconds)), max_size=5),
    st.floats(min_value=0, max_value=utc(2027, 12, 31)),
)
def test_without_windows_the_schedule_is_the_plain_sums(rings, start):
    t = start
    for ring, s in zip(rings, earliest_schedule(rings, start), strict=True):
        assert s.start == pytest.approx(t)
        t += _soaks(ring) + _swaps(ring) * ring.adoption_seconds
        assert s.complete == pytest.approx(t)


@settings(max_examples=60, deadline=None)
@given(
    windows.filter(lambda w: w is not None),
    st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 12, 31)),
    st.floats(min_value=0, max_value=4 * 3600),
)
def test_a_swap_takes_exactly_its_open_window_time(window, at, seconds):
    done = after_open(window, at, seconds)
    assert done is not None and done >= at
    opened = window.next_open(at)
    assert opened is not None and open_seconds(window, at, opened) == 0
    assert open_seconds(window, opened, done) == pytest.approx(seconds, abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(timings, min_size=2, max_size=4),
    st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 12, 31)),
    st.floats(min_value=0, max_value=86400),
)
def test_a_later_start_never_completes_earlier(rings, start, later):
    early, late = earliest_schedule(rings, start), earliest_schedule(rings, start + later)
    for a, b in zip(early, late, strict=True):
        assert a.complete is not None and b.complete is not None and b.complete >= a.complete - 1e-6


WEEKLY_HOUR = Windows("UTC", (MaintenanceWindow(cron="0 2 * * 1", minutes=60),))  # Mondays 02:00-03:00 UTC


def test_a_deadline_is_held_longest_from_the_moment_its_window_closes():
    """Open one hour a week: a ring waits up to 167 h for the opening, and an hour of deadline then takes the whole
    hour; two hours of deadline pause a second week. Nightly 02:00-03:00: 90 min run to 04:30 the night after next's
    02:00 minus one window's close (03:00), 47.5 h."""
    at = utc(2026, 12, 9, 12, 0)
    assert longest_hold(WEEKLY_HOUR, 0, at) == 167 * 3600
    assert longest_hold(WEEKLY_HOUR, 3600, at) == 168 * 3600
    assert longest_hold(WEEKLY_HOUR, 7200, at) == 336 * 3600
    assert longest_hold(NIGHTLY_UTC, 5400, at) == 47.5 * 3600
    assert longest_hold(None, 5400, at) == 5400


@settings(max_examples=25, deadline=None)
@given(
    start=st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 1, 1)),
    seconds=st.floats(min_value=0, max_value=3 * 3600),
)
def test_no_start_takes_longer_than_the_longest_hold(start, seconds):
    """after_open, the engine's own accounting, never needs more wall time from any start than longest_hold names."""
    done = after_open(NIGHTLY_UTC, start, seconds)
    assert done is not None and done - start <= longest_hold(NIGHTLY_UTC, seconds, start) + 1e-6
