"""Sample capture (opt-in): keeps a few requests the model was unsure about, or on which a shadowed candidate
disagreed, with their predictions, for labelling and retraining (docs/capture.md).

Off unless the desired state carries a `CaptureSpec` (contract/capture.py) *and* the device has a capture sink (the
platform gives it one only where the stack declares where captured data may go). Then, per request:

- `low-confidence`: the served model is a classifier and some row's top-1 confidence is below `low_confidence_below`;
- `shadow-disagreement`: the shadowed candidate's answer differs from the served model's (reported by the shadow
  runner, on its own thread, after the application has its answer).

Limits, whatever the traffic: at most `max_per_device_per_day` captures per UTC day (the day's count is kept in
`<state-dir>/<model>/capture.json`, so a restart does not reset it), at most one per `min_seconds_between`, inputs of
at most `max_sample_bytes`, one capture at a time (a request that finds a capture in progress is not captured: no
request ever waits for one). Memory: one sample's arrays while it is written, nothing queued. Disk: the cap times the
sample size per day, in the sink. A failed write is counted (`DeviceReport.capture_failed`) and logged, never raised:
capture never fails or delays a request beyond its own write.

The sink writes only under the device's own prefix: `LocalCaptureSink` (the local platform) builds every path itself
from validated segments, `<root>/<model>/<device>/<day>/<id>.npz` and `<id>.json`, refuses a device id or model that
is not one plain path segment, and refuses a prefix that resolves elsewhere (a symlink planted in the store).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edgefleet_agent.contract.capture import CaptureReason, CaptureRecord, CaptureSpec, is_safe_segment
from edgefleet_agent.fsutil import atomic_write_bytes

log = logging.getLogger("edgefleet.agent.capture")

STATE_FILE = "capture.json"
STATE_FORMAT = "edgefleet-agent-capture/v1"


class CaptureSinkError(ValueError):
    """A sink asked to write outside its device's prefix, or built for an id that is not a plain path segment."""


class CaptureSink(Protocol):
    """Where one device's captures go. `write` raises OSError (or CaptureSinkError) on failure; the capturer counts it."""

    device_id: str
    model: str

    def write(self, record: CaptureRecord, arrays: dict[str, np.ndarray]) -> None: ...


def day_of(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc).strftime("%Y-%m-%d")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as an .npz (numpy's zip of .npy files). Object arrays are refused: reading them would need pickle."""
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise CaptureSinkError(f"array {name!r} has dtype object, which .npz can only hold pickled; not captured")
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


class LocalCaptureSink:
    """The local platform's capture store: `<root>/<model>/<device>/<YYYY-MM-DD>/<id>.npz` + `<id>.json` (written last:
    a sample is complete when its JSON exists). Every path is built here; nothing in a record names a file."""

    def __init__(self, root: Path, model: str, device_id: str, durable: bool = True) -> None:
        for what, value in (("model", model), ("device id", device_id)):
            if not is_safe_segment(value):
                raise CaptureSinkError(
                    f"{what} {value!r} is not a plain path segment; a capture sink writes only under <store>/<model>/<device>/"
                )
        self.root = Path(root)
        self.model = model
        self.device_id = device_id
        self.durable = durable
        self.prefix = self.root / model / device_id

    def _checked_dir(self, day: str) -> Path:
        if not is_safe_segment(day):
            raise CaptureSinkError(f"day {day!r} is not a plain path segment")
        self.prefix.mkdir(parents=True, exist_ok=True)
        expected = self.root.resolve() / self.model / self.device_id
        for p in (self.root / self.model, self.prefix):
            if p.is_symlink():
                raise CaptureSinkError(f"{p} is a symbolic link; captures of {self.device_id} are written only under its own prefix")
        if self.prefix.resolve() != expected:
            raise CaptureSinkError(f"{self.prefix} resolves to {self.prefix.resolve()}, outside this device's prefix {expected}")
        target = self.prefix / day
        target.mkdir(exist_ok=True)
        if target.is_symlink() or target.resolve().parent != expected:
            raise CaptureSinkError(f"{target} leaves this device's prefix {expected}")
        return target

    def write(self, record: CaptureRecord, arrays: dict[str, np.ndarray]) -> None:
        if (record.device, record.model) != (self.device_id, self.model):
            raise CaptureSinkError(
                f"a capture of {record.model}/{record.device} cannot be written under {self.model}/{self.device_id}'s prefix"
            )
        if not is_safe_segment(record.id):
            raise CaptureSinkError(f"capture id {record.id!r} is not a plain file name")
        target = self._checked_dir(day_of(record.time))
        data, meta = npz_bytes(arrays), record.to_json().encode("utf-8")
        if self.durable:
            atomic_write_bytes(target / f"{record.id}.npz", data)
            atomic_write_bytes(target / f"{record.id}.json", meta)
        else:
            for name, body in ((f"{record.id}.npz", data), (f"{record.id}.json", meta)):
                tmp = target / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
                tmp.write_bytes(body)
                os.replace(tmp, target / name)


@dataclass
class CaptureWindow:
    """One report window's counts."""

    captured: int = 0
    failed: int = 0  # writes that failed (the sink raised)
    skipped: int = 0  # matched a criterion but the cap, the rate limit, the size bound or a capture in progress said no


class Capturer:
    """Decides and writes captures for one model on one device. Thread-safe; never raises from `consider_*`."""

    def __init__(self, device_id: str, model: str, state_dir: Path, sink: CaptureSink | None, clock: Callable[[], float]) -> None:
        self.device_id = device_id
        self.model = model
        self.sink = sink
        self.clock = clock
        self.state_path = Path(state_dir) / STATE_FILE
        self._spec: CaptureSpec | None = None
        self._rollout = ""
        self._lock = threading.Lock()  # taken without blocking on the request path
        self._window_lock = threading.Lock()
        self._window = CaptureWindow()
        self._seq = 0
        self._day, self._count, self._last = self._load_state()

    # -- configuration ------------------------------------------------------------------------------------------------
    def configure(self, spec: CaptureSpec | None, rollout: str = "") -> None:
        """The desired state's setting (None: off). Without a sink, capture stays off whatever the spec says."""
        if spec is not None and self.sink is None and self._spec is None:
            log.warning(
                "%s: the desired state asks for sample capture of %s, but this device has no capture store; capturing nothing",
                self.device_id,
                self.model,
            )
        self._spec = spec if self.sink is not None else None
        self._rollout = rollout

    @property
    def spec(self) -> CaptureSpec | None:
        return self._spec

    @property
    def on(self) -> bool:
        return self._spec is not None

    def wants_disagreement(self) -> bool:
        spec = self._spec
        return spec is not None and spec.on_shadow_disagreement

    # -- the day's count, across restarts ---------------------------------------------------------------------------
    def _load_state(self) -> tuple[str, int, float | None]:
        try:
            body = json.loads(self.state_path.read_text())
            if body.get("format") == STATE_FORMAT and isinstance(body.get("count"), int) and isinstance(body.get("day"), str):
                last = body.get("last")
                return body["day"], body["count"], float(last) if isinstance(last, (int, float)) else None
            log.warning("%s: %s is not a capture state this agent reads; treating today's cap as spent", self.device_id, self.state_path)
        except FileNotFoundError:
            return "", 0, None
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: cannot read %s (%s); treating today's cap as spent", self.device_id, self.state_path, exc)
        # Unreadable state: assume the cap is spent today rather than risk exceeding it.
        return day_of(self.clock()), 1 << 30, None

    def _save_state(self) -> None:
        body = {"format": STATE_FORMAT, "day": self._day, "count": self._count, "last": self._last}
        atomic_write_bytes(self.state_path, json.dumps(body, sort_keys=True).encode("utf-8"))

    # -- the request path ---------------------------------------------------------------------------------------------
    def consider_request(
        self,
        version: str,
        sha256: str,
        feed: dict[str, np.ndarray],
        output_names: list[str],
        values: list[np.ndarray],
        top1: list[int] | None,
        confidence: list[float] | None,
    ) -> bool:
        """A served request: captured when its lowest top-1 confidence is under the spec's threshold (and the limits
        allow). True when captured."""
        spec = self._spec
        if spec is None or spec.low_confidence_below is None or not confidence:
            return False
        if min(confidence) >= spec.low_confidence_below:
            return False
        return self._capture(spec, "low-confidence", version, sha256, feed, output_names, values, top1, confidence)

    def consider_disagreement(
        self,
        version: str,
        sha256: str,
        feed: dict[str, np.ndarray],
        output_names: list[str],
        values: list[np.ndarray],
        top1: list[int] | None,
        confidence: list[float] | None,
        candidate_version: str,
        candidate_top1: list[int] | None,
    ) -> bool:
        """A request on which the shadowed candidate disagreed with the served model (called on the shadow's thread)."""
        spec = self._spec
        if spec is None or not spec.on_shadow_disagreement:
            return False
        return self._capture(
            spec, "shadow-disagreement", version, sha256, feed, output_names, values, top1, confidence, candidate_version, candidate_top1
        )

    def _capture(
        self,
        spec: CaptureSpec,
        reason: CaptureReason,
        version: str,
        sha256: str,
        feed: dict[str, np.ndarray],
        output_names: list[str],
        values: list[np.ndarray],
        top1: list[int] | None,
        confidence: list[float] | None,
        candidate_version: str | None = None,
        candidate_top1: list[int] | None = None,
    ) -> bool:
        sink = self.sink
        if sink is None:
            return False
        if not self._lock.acquire(blocking=False):  # a capture is being written: never make a request wait
            self._count_window(skipped=1)
            return False
        try:
            now = self.clock()
            today = day_of(now)
            if today != self._day:
                self._day, self._count = today, 0
            if self._count >= spec.max_per_device_per_day or (self._last is not None and abs(now - self._last) < spec.min_seconds_between):
                self._count_window(skipped=1)
                return False
            if sum(a.nbytes for a in feed.values()) > spec.max_sample_bytes:
                self._count_window(skipped=1)
                return False
            # Counted before the write: a crash or a failed write still spends one of the day's captures, so the cap
            # holds across restarts and a failing store is not retried on every request.
            self._count += 1
            self._last = now
            self._seq += 1
            try:
                self._save_state()
            except OSError as exc:
                log.warning("%s: cannot record the capture count in %s: %s", self.device_id, self.state_path, exc)
            record = CaptureRecord(
                id=f"{int(now * 1000):015d}-{os.getpid()}-{self._seq:06d}",
                device=self.device_id,
                model=self.model,
                version=version,
                sha256=sha256,
                time=now,
                reason=reason,
                rollout=self._rollout,
                inputs=tuple(feed),
                outputs=tuple(output_names),
                top1=tuple(top1) if top1 is not None else None,
                confidence=tuple(round(c, 6) for c in confidence) if confidence is not None else None,
                candidate_version=candidate_version,
                candidate_top1=tuple(candidate_top1) if candidate_top1 is not None else None,
            )
            arrays = {f"input/{k}": np.asarray(v) for k, v in feed.items()}
            arrays.update({f"output/{k}": np.asarray(v) for k, v in zip(output_names, values, strict=True)})
            try:
                sink.write(record, arrays)
            except Exception as exc:  # noqa: BLE001 - any failure of the store is counted, never the application's
                log.warning("%s: capture %s of %s not written: %s", self.device_id, record.id, self.model, exc)
                self._count_window(failed=1)
                return False
            self._count_window(captured=1)
            return True
        except Exception as exc:  # noqa: BLE001 - capture must never fail a request
            log.warning("%s: capture of %s failed: %s", self.device_id, self.model, exc)
            self._count_window(failed=1)
            return False
        finally:
            self._lock.release()

    # -- reports ------------------------------------------------------------------------------------------------------
    def _count_window(self, captured: int = 0, failed: int = 0, skipped: int = 0) -> None:
        with self._window_lock:
            w = self._window
            w.captured += captured
            w.failed += failed
            w.skipped += skipped

    def take(self) -> CaptureWindow:
        """This window's counts; starts a new window."""
        with self._window_lock:
            w, self._window = self._window, CaptureWindow()
        return w

    @property
    def today(self) -> tuple[str, int]:
        """The UTC day and how many captures it has spent (tests)."""
        return self._day, self._count
