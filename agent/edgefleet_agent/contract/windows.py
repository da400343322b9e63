"""Maintenance windows: when a device group may swap models, in the devices' own time zone.

A window opens at each time its cron expression names (five fields: minute hour day-of-month month day-of-week, on the
devices' wall clock) and stays open `minutes`. Cron is read on the naive local wall clock and each start converted with
the IANA zone, so a window follows the devices' clocks across daylight-saving changes (a start that falls in the
spring-forward gap opens when the clocks have jumped); croniter's own time-zone arithmetic is not used, as it names
spurious starts around those changes.

This is the one implementation: the controller (components/rollout/windows.py re-exports it, the local engine waits
for a window before deploying a ring) and the device agent (a forward swap on Greengrass and IoT Edge waits for the
group's window, carried in the desired state as WINDOWS_KEY's document) read the same cron the same way. Wire form
(`to_document` / `from_document`): {"timezone": "<IANA>", "windows": [{"cron": "...", "minutes": n}, ...]}, compact
JSON text wherever it travels (a twin string, a Greengrass configuration value), so a platform that merges objects
key by key never mixes two groups' windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
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
        return datetime.fromtimestamp(at, self._zone()).replace(tzinfo=None)

    def _stamp(self, local: datetime) -> float:
        return local.replace(tzinfo=self._zone()).timestamp()

    def open_until(self, at: float) -> float | None:
        """When the window open at `at` closes (the latest close of those open), or None when none is open."""
        closes = []
        for w in self.windows:
            try:
                starts = croniter(w.cron, self._local(at) + timedelta(seconds=1))
                start = self._stamp(starts.get_prev(datetime))
                if start > at:  # a start in the second after `at`: the one before it may still be open (overlapping windows)
                    start = self._stamp(starts.get_prev(datetime))
            except CroniterBadDateError:
                continue
            end = start + w.minutes * 60
            if start <= at < end:
                closes.append(end)
        return max(closes) if closes else None

    def next_open(self, at: float) -> float | None:
        """`at` if a window is open then, else when the next one opens; None if none opens within HORIZON_DAYS."""
        if self.open_until(at) is not None:
            return at
        starts = []
        for w in self.windows:
            try:
                # from a second before `at`: its local time is rounded to the microsecond, and a start a hair after `at`
                # must not be skipped; a start at or before `at` would be open (open_until said none is), so go on past it
                following = croniter(w.cron, self._local(at) - timedelta(seconds=1))
                start = self._stamp(following.get_next(datetime))
                while start <= at:
                    start = self._stamp(following.get_next(datetime))
            except CroniterBadDateError:
                continue
            if start - at <= HORIZON_DAYS * 86400:
                starts.append(start)
        return min(starts) if starts else None

    def describe(self) -> str:
        return "; ".join(f"{w.cron} for {w.minutes} min" for w in self.windows) + f" ({self.timezone})"

    def to_document(self) -> str:
        """The wire form: compact JSON text, keys sorted (the same windows always give the same bytes)."""
        body = {"timezone": self.timezone, "windows": [{"cron": w.cron, "minutes": w.minutes} for w in self.windows]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_document(cls, text: str | None) -> Windows | None:
        """The windows `to_document` wrote; None for no document (or no window: always open). Raises ValueError, naming
        the problem, for text that is not that document: a device never guesses at when it may swap."""
        if not text:
            return None
        try:
            body: Any = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"maintenance windows are not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("windows"), list):
            raise ValueError('maintenance windows are not {"timezone": ..., "windows": [...]}')
        try:
            timezone = check_timezone(body.get("timezone", "UTC"))
            windows = tuple(MaintenanceWindow.model_validate(w) for w in body["windows"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"maintenance windows refused: {str(exc).splitlines()[0]}") from None
        return cls(timezone, windows) if windows else None


def never_opens(windows: list[MaintenanceWindow], timezone: str, at: float) -> bool:
    return bool(windows) and Windows(timezone, tuple(windows)).next_open(at) is None
