"""Turning a verified model file into something that can serve: an onnxruntime session, warmed up, with the
checks a request's inputs must pass, the output its telemetry watches, and the synthetic inputs its manifest
describes (warm-up, and `DeviceAgent.infer()`).

`SessionCache` lets a thousand simulated devices in one process share one session per model digest
and provider list, so a fleet simulation measures the rollout, not a thousand copies of one model.

A request to a served model (`DeviceAgent.predict`) either returns a `Prediction` or raises a `RequestError`, whose
`status` is the HTTP status the inference endpoint answers with.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Protocol

import numpy as np
import onnxruntime as ort

from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelManifest, TensorSpec
from edgefleet_agent.protocol import DATATYPE_OF_ELEMENT, datatype_of, shape_text
from edgefleet_agent.telemetry import Watch, watched_output
from edgefleet_agent.tensors import NUMPY_TYPES, non_finite_outputs, synthetic_inputs

CPU = "CPUExecutionProvider"
FEED_POOL = 4  # distinct synthetic inputs cycled through, so the stream is not one repeated tensor
WARMUP_RUNS = 2  # the first run allocates; the second is what a served request costs
SMALL_OUTPUT = 64  # outputs up to this many elements are checked in plain Python


class Session(Protocol):
    """What the agent uses of onnxruntime.InferenceSession, which ships no types. Manifests describe tensor
    outputs only, so a run returns arrays."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray], /) -> list[np.ndarray]: ...

    def get_providers(self) -> list[str]: ...


class LoadError(Exception):
    """onnxruntime refused the model, or its warm-up inference failed: it must not be served."""


# -- requests -------------------------------------------------------------------------------------------------------
class RequestError(Exception):
    """A request the served model did not answer; `status` is the HTTP status the endpoint sends with the message."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RequestError):
    """Inputs that do not match the served version's signature (names, element types, shapes)."""


class ModelNotFound(RequestError):
    status = 404


class VersionNotServed(RequestError):
    """A request for a version other than the one served: only the current verified version answers."""

    status = 404


class NotReady(RequestError):
    """Nothing verified is served for this model right now (idle, or every version refused)."""

    status = 503


class InferenceFailed(RequestError):
    """onnxruntime failed on inputs that matched the signature: counted as the version's error."""

    status = 500


RequestTiming = tuple[int, int, int]  # ns the endpoint spent around the model: reading the tensors, encoding, the request


class Prediction(NamedTuple):
    """What the served version answered. `outputs` holds every output of the model, by name. (A named tuple: made on
    every request, it costs a tenth of a frozen dataclass.)"""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    latency_ms: float
    invalid: bool  # a float output holds NaN or infinity


@dataclass(frozen=True)
class InputCheck:
    """One input as the manifest declares it, precomputed so checking a request costs a few comparisons."""

    name: str
    dtype: np.dtype[Any] | None  # None: strings, or a type numpy lacks (bfloat16)
    shape: tuple[int | str, ...]
    datatype: str
    fixed: tuple[tuple[int, int], ...] = ()  # (axis, size) of the fixed dimensions
    symbolic: tuple[tuple[int, str], ...] = ()  # (axis, name) of the variable ones

    @classmethod
    def of(cls, spec: TensorSpec) -> InputCheck:
        t = spec.element_type
        return cls(
            spec.name,
            np.dtype(NUMPY_TYPES[t]) if t in NUMPY_TYPES else None,
            tuple(spec.shape),
            DATATYPE_OF_ELEMENT[t],
            tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)),
            tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, str)),
        )


def check_inputs(label: str, checks: tuple[InputCheck, ...], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed for onnxruntime if `inputs` match the signature, else InvalidInput saying what differs. On the request
    path: the common case is a handful of comparisons."""
    if len(inputs) != len(checks):
        _names_differ(label, checks, inputs)
    feed: dict[str, np.ndarray] = {}
    for c in checks:
        value = inputs.get(c.name)
        if value is None:
            _names_differ(label, checks, inputs)
        if type(value) is not np.ndarray and not isinstance(value, np.ndarray):
            raise InvalidInput(f"{label}: input {c.name!r} is a {type(value).__name__}, not a numpy array")
        if c.dtype is None:
            if c.datatype != "BYTES":
                raise InvalidInput(f"{label}: input {c.name!r} is {c.datatype}, which this agent cannot feed (numpy has no such type)")
            if value.dtype.kind not in "OSU":
                raise InvalidInput(f"{label}: input {c.name!r} is {_datatype(value)}; the model expects BYTES (strings)")
            value = _as_strings(value)
        elif value.dtype != c.dtype:
            raise InvalidInput(f"{label}: input {c.name!r} is {_datatype(value)}; the model expects {c.datatype}")
        shape = value.shape
        if len(shape) != len(c.shape):
            raise InvalidInput(f"{label}: input {c.name!r} has shape {shape_text(shape)}; the model expects {shape_text(c.shape)}")
        for axis, size in c.fixed:
            if shape[axis] != size:
                raise InvalidInput(f"{label}: input {c.name!r} has shape {shape_text(shape)}; the model expects {shape_text(c.shape)}")
        feed[c.name] = value
    if len(checks) > 1:
        _same_symbols(label, checks, feed)
    return feed


def _names_differ(label: str, checks: tuple[InputCheck, ...], inputs: Mapping[str, np.ndarray]) -> None:
    names = ", ".join(repr(c.name) for c in checks)
    missing = [c.name for c in checks if c.name not in inputs]
    unknown = [n for n in inputs if all(c.name != n for c in checks)]
    parts = []
    if missing:
        parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
    if unknown:
        parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
    raise InvalidInput(f"{label}: {'; '.join(parts)}; its inputs are {names}")


def _same_symbols(label: str, checks: tuple[InputCheck, ...], feed: dict[str, np.ndarray]) -> None:
    """A variable dimension named alike in several inputs (batch) must have one size."""
    seen: dict[str, tuple[int, str]] = {}
    for c in checks:
        shape = feed[c.name].shape
        for axis, symbol in c.symbolic:
            first = seen.setdefault(symbol, (shape[axis], c.name))
            if first[0] != shape[axis]:
                raise InvalidInput(
                    f"{label}: dimension {symbol!r} is {first[0]} in input {first[1]!r} but {shape[axis]} in input {c.name!r}; "
                    "it must be the same"
                )


def _datatype(value: np.ndarray) -> str:
    try:
        return datatype_of(value)
    except ValueError:
        return f"numpy {value.dtype}"


def _as_strings(value: np.ndarray) -> np.ndarray:
    """onnxruntime takes string tensors as arrays of str: BYTES elements are decoded as UTF-8."""
    if value.dtype.kind == "U":
        return value
    out = np.empty(value.shape, dtype=object)
    flat, src = out.reshape(-1), value.reshape(-1)
    for i, x in enumerate(src):
        if isinstance(x, bytes):
            try:
                flat[i] = x.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"element {i} of a string input is not UTF-8") from None
        else:
            flat[i] = str(x)
    return out


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
    inputs: tuple[InputCheck, ...] = ()
    watch: Watch | None = None  # the output its telemetry summarises

    def has_invalid(self, values: list[np.ndarray]) -> bool:
        for i in self.float_outputs:
            value = values[i]
            if value.size <= SMALL_OUTPUT:  # a few numbers: plain Python beats two numpy calls
                if not all(map(math.isfinite, value.ravel().tolist())):
                    return True
            elif not np.isfinite(value).all():
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
        inputs=tuple(InputCheck.of(s) for s in manifest.inputs),
        watch=watched_output(manifest, values),
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
