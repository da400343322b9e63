"""Shadow mode: a candidate version runs on the same live requests as the served one, on a thread of its own, and
its answers are compared, never returned.

The request path only appends a job to a bounded queue (`ShadowRunner.offer`, a lock and a deque append): the
application's response never waits for the candidate. When the candidate falls behind (the queue holds
SHADOW_QUEUE jobs or SHADOW_QUEUE_BYTES of inputs), new jobs are dropped and counted (`Shadow.dropped`), so a slow
candidate costs the device at most one extra inference at a time and a bounded amount of memory.

Agreement, per compared request: for a classifier on both sides (telemetry.Watch), every row's top-1 class is the same;
otherwise every output the two versions share by name has the same shape and np.allclose(served, candidate,
rtol=AGREE_RTOL, atol=AGREE_ATOL) holds (NaN never agrees).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import Callable

import numpy as np

from edgefleet_agent.contract.telemetry import Latency, Shadow
from edgefleet_agent.serving import LoadedModel
from edgefleet_agent.telemetry import Said, Window, read_output

log = logging.getLogger("edgefleet.agent.shadow")

# Called on the candidate's thread for each compared request on which it disagreed: (token, feed, served output names,
# served outputs, served Said, candidate Said). Sample capture uses it; its exceptions are logged, never raised.
OnDisagree = Callable[[object, dict[str, np.ndarray], list[str], list[np.ndarray], "Said | None", "Said | None"], None]

SHADOW_QUEUE = 4  # jobs waiting for the candidate at most
SHADOW_QUEUE_BYTES = 64 << 20  # … and their inputs' bytes at most (one larger job is still taken when the queue is empty)
AGREE_RTOL = 1e-3
AGREE_ATOL = 1e-5


def _kept(array: np.ndarray) -> np.ndarray:
    """An input as the candidate reads it later: a writable view (a shared-memory region, which the application
    reuses for its next request) is copied; the request's own bytes are not."""
    return array.copy() if array.base is not None and array.flags.writeable else array


@dataclass(frozen=True, eq=False)
class _Job:
    token: object  # the served version the request ran on
    feed: dict[str, np.ndarray]
    served_names: list[str]
    served: list[np.ndarray]
    served_said: Said | None
    served_ms: float
    nbytes: int


class _Tally:
    """One report window of the comparison (the contract's Shadow, plus the candidate's own prediction counters)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.compared = self.agree = self.errors = self.invalid = self.dropped = 0
        self.latency = Latency()
        self.served_latency = Latency()
        self.said = Window(loaded.watch)


class ShadowRunner:
    """Runs `loaded` (the candidate `version`) beside the served model. Thread-safe; `close()` stops its thread."""

    def __init__(
        self,
        label: str,
        version: str,
        sha256: str,
        loaded: LoadedModel,
        capacity: int = SHADOW_QUEUE,
        max_bytes: int = SHADOW_QUEUE_BYTES,
        on_disagree: OnDisagree | None = None,
        timer: Callable[[], float] = perf_counter,
    ) -> None:
        self.label = label
        self.timer = timer
        self.on_disagree = on_disagree
        self.version = version
        self.sha256 = sha256
        self.loaded = loaded
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Job] = deque()
        self._queued_bytes = 0
        self._closed = False
        self._token: object = None
        self._tally = _Tally(loaded)
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"shadow-{label}-{version}", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------------------------------
    def offer(
        self,
        token: object,
        feed: dict[str, np.ndarray],
        served_names: list[str],
        served: list[np.ndarray],
        served_said: Said | None,
        served_ms: float,
    ) -> bool:
        """Queues one request for the candidate, or drops it (counted) when the candidate is behind. Never blocks
        beyond a short lock; False when dropped."""
        nbytes = 0
        shared = False
        for a in feed.values():
            nbytes += a.nbytes
            shared = shared or (a.base is not None and a.flags.writeable)
        if shared:
            feed = {k: _kept(v) for k, v in feed.items()}
        with self._cond:
            if self._closed or token is not self._token:
                return False
            if len(self._queue) >= self.capacity or (self._queue and self._queued_bytes + nbytes > self.max_bytes):
                self._tally.dropped += 1
                return False
            self._queue.append(_Job(token, feed, served_names, served, served_said, served_ms, nbytes))
            self._queued_bytes += nbytes
            self._cond.notify_all()  # the candidate's thread (and drain(), if waiting)
        return True

    def retarget(self, token: object) -> None:
        """The served version changed (or was first set): compare against it from now on, in a new window."""
        with self._cond:
            self._token = token
            self._queue.clear()
            self._queued_bytes = 0
            self._tally = _Tally(self.loaded)

    # -- the candidate's thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        loaded = self.loaded
        while True:
            with self._cond:
                if not self._queue and self._busy:
                    self._busy = False
                    self._cond.notify_all()  # drain() waits for this
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._busy = False
                    self._cond.notify_all()
                    return
                job = self._queue.popleft()
                self._queued_bytes -= job.nbytes
                self._busy = True
            start = self.timer()
            try:
                values = loaded.session.run(loaded.output_names, job.feed)
            except Exception as exc:  # noqa: BLE001 - any failure of the candidate is its error, never the application's
                log.debug("%s: shadow %s failed: %s", self.label, self.version, exc)
                with self._cond:
                    if job.token is self._token:
                        self._tally.errors += 1
                    self._cond.notify_all()
                continue
            ms = (self.timer() - start) * 1000.0
            invalid = loaded.has_invalid(values)
            said = read_output(loaded.watch, values)
            agree = self._agrees(job, values, said)
            current = True
            with self._cond:
                current = job.token is self._token
                if current:
                    t = self._tally
                    t.compared += 1
                    t.agree += agree
                    t.invalid += invalid
                    t.latency.add(ms)
                    t.served_latency.add(job.served_ms)
                    if said is not None:
                        t.said.add_said(said)
                self._cond.notify_all()
            if not agree and current and self.on_disagree is not None:
                try:
                    self.on_disagree(job.token, job.feed, job.served_names, job.served, job.served_said, said)
                except Exception as exc:  # noqa: BLE001 - a capture problem never stops the comparison
                    log.warning("%s: shadow %s: disagreement hook failed: %s", self.label, self.version, exc)

    def _agrees(self, job: _Job, values: list[np.ndarray], said: Said | None) -> bool:
        served_top1 = job.served_said.top1 if job.served_said is not None else None
        mine = self.loaded.watch
        if served_top1 is not None and mine is not None and mine.kind == "classes":
            return said is not None and said.top1 == served_top1
        by_name = dict(zip(self.loaded.output_names, values, strict=True))
        shared = [(a, by_name[n]) for n, a in zip(job.served_names, job.served, strict=True) if n in by_name]
        if not shared:
            return False
        for a, b in shared:
            if a.shape != b.shape:
                return False
            if a.dtype.kind in "fc" or b.dtype.kind in "fc":
                if not np.allclose(a, b, rtol=AGREE_RTOL, atol=AGREE_ATOL):
                    return False
            elif not np.array_equal(a, b):
                return False
        return True

    # -- reports ------------------------------------------------------------------------------------------------------
    def take(self) -> Shadow:
        """The window's summary (the contract's Shadow); starts a new window."""
        with self._cond:
            t, self._tally = self._tally, _Tally(self.loaded)
        return Shadow(
            version=self.version,
            sha256=self.sha256,
            compared=t.compared,
            agree=t.agree,
            errors=t.errors,
            invalid=t.invalid,
            latency=t.latency,
            served_latency=t.served_latency,
            predictions=t.said.predictions(),
            dropped=t.dropped,
        )

    def drain(self, timeout: float = 10.0) -> bool:
        """Waits until every queued job has run (tests and benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(30)
