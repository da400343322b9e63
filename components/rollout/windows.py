"""Maintenance windows: the device agent's contract holds the one implementation (edgefleet_agent/contract/windows.py),
so the controller's engine and the devices read a group's cron the same way. Re-exported here for the engine, the
spec and the plan, with what only the controller needs: open-window time over a span (the engine's deadline pause),
the earliest schedule of a rollout's rings (the plan) and the longest a deadline can be held (the gates' timeouts)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Sequence

from edgefleet_agent.contract.windows import HORIZON_DAYS, MaintenanceWindow, Windows, check_timezone, never_opens

__all__ = [
    "HORIZON_DAYS",
    "MaintenanceWindow",
    "RingSchedule",
    "RingTiming",
    "Windows",
    "after_open",
    "check_timezone",
    "earliest_schedule",
    "longest_hold",
    "never_opens",
    "open_seconds",
]


def open_seconds(windows: Windows, start: float, end: float) -> float:
    """How many seconds of [start, end) some window is open."""
    total, t = 0.0, start
    while t < end:
        closes = windows.open_until(t)
        if closes is None:
            opens = windows.next_open(t)
            if opens is None or opens >= end:
                break
            t = opens
            continue
        total += min(closes, end) - t
        t = closes
    return total


def after_open(windows: Windows, at: float, seconds: float) -> float | None:
    """The earliest time by which `seconds` of open window have passed from `at` (the first opening at or after `at`
    when `seconds` is 0); None when a window it needs does not open within HORIZON_DAYS."""
    t, left = at, seconds
    while True:
        opened = windows.next_open(t)
        if opened is None:
            return None
        closes = windows.open_until(opened)
        assert closes is not None, "next_open names an instant inside a window"
        if closes - opened >= left:
            return opened + left
        left -= closes - opened
        t = closes


HOLD_OPENINGS = 500  # longest_hold scans HORIZON_DAYS or this many openings (an hourly window: 3 weeks), whichever is first


def longest_hold(windows: Windows | None, seconds: float, at: float) -> float:
    """The longest wall-clock time `seconds` of open-window time can take, starting at any instant from `at` on: how long
    a ring's deadline can stretch, as the engine waits for the window to open and pauses the deadline while it is closed,
    so a gate's timeout outlasts a ring legitimately waiting days for its window. `seconds` itself without windows; the
    worst start is the moment a window closes. Windows that stop opening make it a year (never_opens refused those)."""
    if windows is None:
        return seconds
    opened: list[tuple[float, float]] = []
    t = at
    for _ in range(HOLD_OPENINGS):
        opens = windows.next_open(t)
        if opens is None or opens >= at + HORIZON_DAYS * 86400:
            break
        closes = windows.open_until(opens)
        assert closes is not None, "next_open names an instant inside a window"
        if opened and opens <= opened[-1][1]:
            opened[-1] = (opened[-1][0], closes)
        else:
            opened.append((opens, closes))
        t = closes
    if not opened:
        return HORIZON_DAYS * 86400 + seconds
    total = [0.0]  # total[k]: open seconds in opened[:k]
    for opens, closes in opened:
        total.append(total[-1] + closes - opens)
    longest = 0.0
    for i, start in enumerate([min(at, opened[0][0]), *(closes for _, closes in opened)]):
        # from `start`, the window opened[i] opens next; the deadline ends inside opened[k]
        k = bisect_left(total, total[i] + seconds, lo=i + 1) - 1
        if k < len(opened):
            longest = max(longest, opened[k][0] + seconds - (total[k] - total[i]) - start)
    return longest


@dataclass(frozen=True)
class RingTiming:
    """What the earliest schedule of one ring depends on. `adoption_seconds` is the open-window time its devices take to
    swap, once per swap (a ring that shadows swaps twice: the candidate in beside the served model, then serving it);
    0 is the earliest possible, every device swapping the moment it is asked."""

    window: Windows | None
    soak_seconds: float
    shadow_soak_seconds: float | None = None  # set only when the ring shadows the candidate first
    adoption_seconds: float = 0.0


@dataclass(frozen=True)
class RingSchedule:
    start: float | None  # the ring's first deployment; None: a window it needs does not open within HORIZON_DAYS
    complete: float | None  # its gate can pass at the earliest; None as above, or an earlier ring never completes


def earliest_schedule(rings: Sequence[RingTiming], start: float) -> list[RingSchedule]:
    """Each ring's earliest start and completion, in order, for a rollout that begins at `start` (Unix timestamps).

    The model, the same the engine runs by (engine.py):
    - a ring starts once the previous ring has completed, at the first instant one of its windows is open then;
    - each swap (the shadow phase's, then the serve phase's) is ordered only inside a window, and its devices swap only
      while one is open: the swap takes `adoption_seconds` of open-window time, so devices still to swap when a window
      closes wait for the next opening;
    - a soak (shadow soak, then soak) is wall-clock time from the end of its swap: a window restricts swaps, not
      serving, so devices already swapped keep serving and a soak runs on past the window's close;
    - a ring that shadows orders its serve swap at the first open instant after its shadow soak (perhaps tomorrow night).
    So a ring without windows takes adoption + soak (twice over when it shadows), and a rollout without windows the plain
    sum. A ring whose needed window opens within no HORIZON_DAYS gets None, and so does every ring after it.
    """
    out: list[RingSchedule] = []
    ready: float | None = start
    for ring in rings:
        out.append(_ring_schedule(ring, ready) if ready is not None else RingSchedule(None, None))
        ready = out[-1].complete
    return out


def _ring_schedule(ring: RingTiming, ready: float) -> RingSchedule:
    first: float | None = None
    t = ready
    for soak in ([ring.shadow_soak_seconds] if ring.shadow_soak_seconds is not None else []) + [ring.soak_seconds]:
        begin = ring.window.next_open(t) if ring.window is not None else t
        if begin is None:
            return RingSchedule(first, None)
        first = begin if first is None else first
        adopted = after_open(ring.window, begin, ring.adoption_seconds) if ring.window is not None else begin + ring.adoption_seconds
        if adopted is None:
            return RingSchedule(first, None)
        t = adopted + soak
    return RingSchedule(first, t)
