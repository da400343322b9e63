"""One log line per cause: a device that cannot reach its hub, or whose desired version keeps being refused, would
otherwise write the same warning every sync or report period (twice a second on the local fleet, every minute on a
cloud), burying the line that says what changed and filling a small device's disk.

`RepeatFilter` lets the first record of a cause through, holds back identical ones (same logger, level, message,
arguments and exception) for `every` seconds, then lets the next one through with how many it held back. `summary()`
names the causes still held back when the agent stops, so a repeat is never silently lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

DEFAULT_EVERY_SECONDS = 300.0
MAX_CAUSES = 256  # causes remembered; the oldest is forgotten first (and logged again if it recurs)


def _cause(record: logging.LogRecord) -> tuple[str, int, str, str]:
    exc = record.exc_info[1] if record.exc_info else None
    return (record.name, record.levelno, record.getMessage(), f"{type(exc).__name__}: {exc}" if exc else "")


class RepeatFilter(logging.Filter):
    def __init__(self, every: float = DEFAULT_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str, str], list[float]] = {}  # cause -> [last let through, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # state changes (serving, stopping) are rare and each one matters
        key, now = _cause(record), self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                if len(self._seen) >= MAX_CAUSES:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[key] = [now, 0]
                return True
            if now - seen[0] < self.every:
                seen[1] += 1
                return False
            held, seen[0], seen[1] = int(seen[1]), now, 0
        if held:
            record.msg = f"{record.msg} [the same {held} more time(s) in the last {self.every:.0f}s]"
        return True

    def summary(self) -> list[str]:
        """The causes held back since they were last logged, one line each."""
        with self._lock:
            held = [(key, int(n)) for key, (_, n) in self._seen.items() if n]
        return [
            f"{logging.getLevelName(level)} {name}: {text}{f' ({exc})' if exc else ''}: {n} more time(s) not logged"
            for (name, level, text, exc), n in held
        ]


def install(every: float = DEFAULT_EVERY_SECONDS) -> RepeatFilter:
    """Adds one RepeatFilter to every handler of the root logger (call after logging.basicConfig)."""
    f = RepeatFilter(every)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    return f
