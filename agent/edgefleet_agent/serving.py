"""Turning a verified model file into something that can serve: an onnxruntime session, warmed up,
with the synthetic input stream its manifest describes.

`SessionCache` lets a thousand simulated devices in one process share one session per model digest
and provider list, so a fleet simulation measures the rollout, not a thousand copies of one model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Protocol

import numpy as np
import onnxruntime as ort

from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.tensors import non_finite_outputs, synthetic_inputs

CPU = "CPUExecutionProvider"
FEED_POOL = 4  # distinct synthetic inputs cycled through, so the stream is not one repeated tensor
WARMUP_RUNS = 2  # the first run allocates; the second is what a served request costs


class Session(Protocol):
    """What the agent uses of onnxruntime.InferenceSession, which ships no types. Manifests describe tensor
    outputs only, so a run returns arrays."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray], /) -> list[np.ndarray]: ...

    def get_providers(self) -> list[str]: ...


class LoadError(Exception):
    """onnxruntime refused the model, or its warm-up inference failed: it must not be served."""


def choose_providers(preference: list[str], available: list[str]) -> list[str]:
    """The first preferred provider this onnxruntime build offers, with CPU always last as the fallback."""
    chosen = next((p for p in preference if p in available), CPU)
    return [chosen] if chosen == CPU else [chosen, CPU]


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A session that has already run: swapping to it costs one reference assignment."""

    session: Session
    providers: tuple[str, ...]
    output_names: list[str]
    float_outputs: tuple[int, ...]
    feeds: tuple[dict[str, np.ndarray], ...]
    warmup_invalid: tuple[str, ...]

    def has_invalid(self, values: list[np.ndarray]) -> bool:
        for i in self.float_outputs:
            if not np.isfinite(values[i]).all():
                return True
        return False


def open_session(path: Path, providers: list[str]) -> Session:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session: Session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    return session


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def make_feeds(manifest: ModelManifest) -> tuple[dict[str, np.ndarray], ...]:
    try:
        return tuple(synthetic_inputs(manifest.inputs, seed=i) for i in range(FEED_POOL))
    except EdgefleetError as exc:
        raise LoadError(f"cannot generate inputs for {manifest.name} {manifest.version}: {exc.problem}") from None


def load_model(
    path: Path, manifest: ModelManifest, providers: list[str], feeds: tuple[dict[str, np.ndarray], ...] | None = None
) -> LoadedModel:
    """Opens and warms the session; raises LoadError with a sentence a fleet operator can act on."""
    label = f"{manifest.name} {manifest.version}"
    try:
        session = open_session(path, providers)
    except Exception as exc:  # onnxruntime raises several private exception types
        raise LoadError(f"onnxruntime could not load {label}: {_first_line(exc)}") from None
    if feeds is None:
        feeds = make_feeds(manifest)
    names = [o.name for o in manifest.outputs]
    values: list[np.ndarray] = []
    for i in range(WARMUP_RUNS):
        try:
            values = session.run(names, feeds[i % len(feeds)])
        except Exception as exc:
            raise LoadError(f"warm-up inference of {label} failed: {_first_line(exc)}") from None
    floats = tuple(i for i, o in enumerate(manifest.outputs) if o.element_type.startswith(("float", "bfloat")))
    return LoadedModel(
        session=session,
        providers=tuple(session.get_providers()),
        output_names=names,
        float_outputs=floats,
        feeds=feeds,
        warmup_invalid=tuple(non_finite_outputs(names, values)),
    )


class _Entry:
    __slots__ = ("lock", "value", "refs")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: LoadedModel | None = None
        self.refs = 0


class SessionCache:
    """Reference-counted sessions keyed by (sha256, providers). Thread-safe; one load per key at a time.

    Releasing the last reference drops the cache's hold; a request still running on that session keeps
    it alive until it finishes, which is what lets a swap never interrupt an inference.
    """

    FEED_SETS = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._feeds: dict[tuple[str, ...], tuple[dict[str, np.ndarray], ...]] = {}

    def feeds(self, manifest: ModelManifest) -> tuple[dict[str, np.ndarray], ...]:
        """Synthetic inputs per input signature: versions of one model share them, so a swap does not
        spend CPU regenerating megabytes of noise next to the inference it must not disturb."""
        key = tuple(spec.signature() for spec in manifest.inputs)
        with self._lock:
            found = self._feeds.get(key)
        if found is not None:
            return found
        made = make_feeds(manifest)
        with self._lock:
            while len(self._feeds) >= self.FEED_SETS:
                self._feeds.pop(next(iter(self._feeds)))
            return self._feeds.setdefault(key, made)

    def acquire(self, key: Hashable, load: Callable[[], LoadedModel]) -> LoadedModel:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.refs += 1
        try:
            with entry.lock:
                if entry.value is None:
                    entry.value = load()
                return entry.value
        except BaseException:
            self.release(key)
            raise

    def release(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs <= 0:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
