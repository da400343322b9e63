"""Maintenance windows: when a device group may swap models, in the devices' own time zone.

A window opens at each time its cron expression names (five fields: minute hour day-of-month month day-of-week, on the
devices' wall clock) and stays open `minutes`. Cron is read on the naive local wall clock and each start converted with
the IANA zone, so a window follows the devices' clocks across daylight-saving changes (a start that falls in the
spring-forward gap opens when the clocks have jumped); croniter's own time-zone arithmetic is not used, as it names
spurious starts around those changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

HORIZON_DAYS = 366  # a window that does not open within a year is refused: it would hold its ring forever


class MaintenanceWindow(BaseModel):
    """One recurring window, e.g. `{cron: "0 2 * * 1-5", minutes: 120}`: weekdays from 02:00 to 04:00, local time."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)  # as spec.Strict, which imports this module

    cron: str = Field(description="when the window opens: a five-field cron expression on the devices' local clock")
    minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = Field(description="how long it stays open")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron expression (minute hour day-of-month month day-of-week)")
        return value


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone name such as Europe/Berlin or UTC") from None
    return name


@dataclass(frozen=True)
class Windows:
    """A group's windows in its time zone. Times in and out are Unix timestamps."""

    timezone: str
    windows: tuple[MaintenanceWindow, ...]

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _local(self, at: float) -> datetime:
        """`at` on the devices' wall clock, floored to the second: cron names whole minutes, and a timestamp a hair
        before one (x.9999998) would otherwise round onto it, and the window opening then be skipped."""
        return datetime.fromtimestamp(math.floor(at), self._zone()).replace(tzinfo=None)

    def _stamp(self, local: datetime) -> float:
        return local.replace(tzinfo=self._zone()).timestamp()

    def open_until(self, at: float) -> float | None:
        """When the window open at `at` closes (the latest close of those open), or None when none is open."""
        closes = []
        for w in self.windows:
            try:
                start = croniter(w.cron, self._local(at) + timedelta(seconds=1)).get_prev(datetime)
            except CroniterBadDateError:
                continue
            end = self._stamp(start) + w.minutes * 60
            if self._stamp(start) <= at < end:
                closes.append(end)
        return max(closes) if closes else None

    def next_open(self, at: float) -> float | None:
        """`at` if a window is open then, else when the next one opens; None if none opens within HORIZON_DAYS."""
        if self.open_until(at) is not None:
            return at
        starts = []
        for w in self.windows:
            try:
                start = self._stamp(croniter(w.cron, self._local(at)).get_next(datetime))
            except CroniterBadDateError:
                continue
            if start - at <= HORIZON_DAYS * 86400:
                starts.append(start)
        return min(starts) if starts else None

    def open_seconds(self, start: float, end: float) -> float:
        """How many seconds of [start, end) some window is open."""
        total, t = 0.0, start
        while t < end:
            closes = self.open_until(t)
            if closes is None:
                opens = self.next_open(t)
                if opens is None or opens >= end:
                    break
                t = opens
                continue
            total += min(closes, end) - t
            t = closes
        return total

    def after_open(self, at: float, seconds: float) -> float | None:
        """The earliest time by which `seconds` of open window have passed from `at` (the first opening at or after
        `at` when `seconds` is 0); None when a window it needs does not open within HORIZON_DAYS."""
        t, left = at, seconds
        while True:
            opened = self.next_open(t)
            if opened is None:
                return None
            closes = self.open_until(opened)
            assert closes is not None, "next_open names an instant inside a window"
            if closes - opened >= left:
                return opened + left
            left -= closes - opened
            t = closes

    def describe(self) -> str:
        return "; ".join(f"{w.cron} for {w.minutes} min" for w in self.windows) + f" ({self.timezone})"


def never_opens(windows: list[MaintenanceWindow], timezone: str, at: float) -> bool:
    return bool(windows) and Windows(timezone, tuple(windows)).next_open(at) is None


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
        adopted = ring.window.after_open(begin, ring.adoption_seconds) if ring.window is not None else begin + ring.adoption_seconds
        if adopted is None:
            return RingSchedule(first, None)
        t = adopted + soak
    return RingSchedule(first, t)
