"""What the agent records of each request to a served version, in fixed-size counters, and how it turns them into
the contract's bounded summaries (contract/telemetry.py) at each report.

Per request: one latency bucket, an error or NaN/Inf flag, and what the model said about the watched output:

- a classifier (`Watch.kind == "classes"`): the first float output whose shape is [batch, C] or [batch, C, 1, …, 1]
  with a fixed C >= 2. Each row's top-1 class is counted, and its confidence binned: the top-1 value itself when the
  output is a probability distribution, otherwise the top-1 softmax probability. Which of the two is decided once per
  version from its warm-up output: probabilities when every value is in [0, 1] and every row sums to 1 within 1e-3.
- otherwise the first float output (`"values"`): the mean of its values per request, binned (VALUE_BOUNDS).
- models with no float output: no prediction summary.

A request may carry the true class (`label`): for a classifier, each row counts towards Labelled, correct when its
top-1 class is the label.

Memory per window is fixed by the model, not the traffic: 79 latency buckets, C class counters (C is the output's
fixed size), 10 confidence bins, 14 value bins and a few integers. Windows are swapped, never grown.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import numpy as np

from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.contract.telemetry import CONFIDENCE_BINS, LATENCY_BOUNDS_MS, VALUE_BOUNDS, Labelled, Latency, Predictions

FLOAT_TYPES = ("float16", "float32", "float64")
PROBABILITY_TOLERANCE = 1e-3
MAX_CLASSES = 1 << 16  # a wider "classifier" is summarised by its values instead: counters stay small
SMALL_ROW = 32  # rows up to this many classes are read in plain Python


@dataclass(frozen=True)
class Watch:
    """The output a version's prediction telemetry summarises, decided once when the version loads."""

    kind: Literal["classes", "values"]
    index: int  # position among the manifest's outputs
    name: str
    classes: int = 0  # C, for a classifier
    probabilities: bool = False  # a classifier whose outputs are already probabilities (no softmax)


def _class_count(shape: Sequence[int | str]) -> int | None:
    """C when `shape` is [batch, C] or [batch, C, 1, …, 1] with a fixed C >= 2."""
    if len(shape) < 2:
        return None
    c, rest = shape[1], shape[2:]
    if not isinstance(c, int) or c < 2 or c > MAX_CLASSES or any(d != 1 for d in rest):
        return None
    return c


def is_distribution(rows: np.ndarray) -> bool:
    """Every value in [0, 1] and every row summing to 1 (within PROBABILITY_TOLERANCE)."""
    if rows.size == 0 or not np.isfinite(rows).all():
        return False
    return bool(rows.min() >= 0.0 and rows.max() <= 1.0 and np.abs(rows.sum(axis=1) - 1.0).max() <= PROBABILITY_TOLERANCE)


def watched_output(manifest: ModelManifest, warmup: Sequence[np.ndarray] | None = None) -> Watch | None:
    """The classifier output, else the first float output, else None (see the module's docstring)."""
    for i, spec in enumerate(manifest.outputs):
        if spec.element_type in FLOAT_TYPES:
            c = _class_count(spec.shape)
            if c is not None:
                probabilities = False
                if warmup is not None and i < len(warmup):
                    value = np.asarray(warmup[i])
                    if value.ndim >= 2 and value.size and value.size % c == 0:
                        probabilities = is_distribution(value.reshape(-1, c).astype(np.float64, copy=False))
                return Watch("classes", i, spec.name, c, probabilities)
    for i, spec in enumerate(manifest.outputs):
        if spec.element_type in FLOAT_TYPES:
            return Watch("values", i, spec.name)
    return None


class Said(NamedTuple):
    """What one request's watched output said: top-1 class and confidence per row (classifier), or its mean."""

    top1: list[int] | None = None
    confidence: list[float] | None = None
    mean: float | None = None


def read_output(watch: Watch | None, values: Sequence[np.ndarray]) -> Said | None:
    """The watched output of one request, summarised; None when it cannot be read (wrong size, not finite)."""
    if watch is None:
        return None
    out = values[watch.index]
    if watch.kind == "values":
        if out.size == 0:
            return None
        mean = float(out.mean(dtype=np.float64))
        return Said(mean=mean) if math.isfinite(mean) else None
    c = watch.classes
    size = out.size
    if size == 0 or size % c:
        return None
    if size == c and c <= SMALL_ROW:  # one row of a few classes, the common case: plain Python beats numpy's calls
        row = out.ravel().tolist()
        if not all(map(math.isfinite, row)):
            return None
        peak = max(row)
        top = row.index(peak)
        if watch.probabilities:
            conf = peak
        else:
            exp = math.exp
            conf = 1.0 / sum(exp(v - peak) for v in row)
        return Said([top], [conf]) if math.isfinite(conf) else None
    rows = out.reshape(-1, c)
    if rows.shape[0] == 1:  # one row of many classes
        row1 = rows[0]
        top = int(row1.argmax())
        peak = float(row1[top])
        if watch.probabilities:
            conf = peak
        else:
            conf = 1.0 / float(np.exp(row1.astype(np.float64) - peak).sum())
        return Said([top], [conf]) if math.isfinite(conf) else None
    tops = rows.argmax(axis=1)
    peaks = rows[np.arange(rows.shape[0]), tops].astype(np.float64)
    if watch.probabilities:
        confs = peaks
    else:
        confs = 1.0 / np.exp(rows.astype(np.float64) - peaks[:, None]).sum(axis=1)
    if not np.isfinite(confs).all():
        return None
    return Said(top1=tops.tolist(), confidence=confs.tolist())


class Window:
    """One report window of one served version. Not thread-safe: the agent records under its metrics lock."""

    __slots__ = ("requests", "errors", "invalid", "latency", "watch", "classes", "confidence", "values", "said", "labelled", "correct")

    def __init__(self, watch: Watch | None = None) -> None:
        self.requests = 0
        self.errors = 0
        self.invalid = 0
        self.latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.watch = watch
        self.classes = [0] * watch.classes if watch is not None and watch.kind == "classes" else []
        self.confidence = [0] * CONFIDENCE_BINS
        self.values = [0] * (len(VALUE_BOUNDS) + 1)
        self.said = 0  # requests (classes: rows) whose watched output was summarised
        self.labelled = 0
        self.correct = 0

    def record(self, ms: float, failed: bool, invalid: bool, said: Said | None, label: int | None) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
            return
        self.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
        if invalid:
            self.invalid += 1
        if said is not None:
            self.add_said(said, label)

    def add_said(self, said: Said, label: int | None = None) -> None:
        if said.top1 is not None and said.confidence is not None:
            classes, confidence = self.classes, self.confidence
            for top, conf in zip(said.top1, said.confidence, strict=True):
                if top < len(classes):
                    classes[top] += 1
                confidence[min(CONFIDENCE_BINS - 1, max(0, int(conf * CONFIDENCE_BINS)))] += 1
                self.said += 1
                if label is not None:
                    self.labelled += 1
                    self.correct += top == label
        elif said.mean is not None:
            self.values[bisect.bisect_left(VALUE_BOUNDS, said.mean)] += 1
            self.said += 1

    # -- the contract's summaries ---------------------------------------------------------------------------------
    def latency_summary(self) -> Latency:
        return Latency(list(self.latency))

    def predictions(self) -> Predictions | None:
        """The contract's Predictions (top classes bounded to TOP_K plus "other"), None when nothing was summarised."""
        watch = self.watch
        if watch is None or not self.said:
            return None
        if watch.kind == "classes":
            classes = {str(i): n for i, n in enumerate(self.classes) if n}
            return Predictions("classes", watch.name, self.said, classes, list(self.confidence), []).bounded()
        return Predictions("values", watch.name, self.said, {}, [], list(self.values))

    def labelled_summary(self) -> Labelled | None:
        return Labelled(self.labelled, self.correct) if self.labelled else None


class Totals:
    """Triton's statistics extension for one served version: cumulative counts and durations since it began serving
    in this process (`GET /v2/models/{name}/stats`, read by tritonclient's get_inference_statistics; perf_analyzer
    reads it too but looks for integer versions only, docs/agent.md). The endpoint times what surrounds the model: compute_input (reading the request's tensors),
    compute_output (encoding the answer) and success (the request from its body to the answer sent); in-process
    callers have the model's time only. Each request is one execution: the agent does not batch requests together.
    Not thread-safe: the agent records under its metrics lock."""

    __slots__ = ("success", "success_ns", "fail", "fail_ns", "input_ns", "infer_ns", "output_ns", "last_ms")

    def __init__(self) -> None:
        self.success = self.success_ns = self.fail = self.fail_ns = 0
        self.input_ns = self.infer_ns = self.output_ns = self.last_ms = 0

    def succeeded(self, at_ms: int, infer_ns: int, input_ns: int = 0, output_ns: int = 0, total_ns: int = 0) -> None:
        self.success += 1
        self.success_ns += max(total_ns, input_ns + infer_ns + output_ns)
        self.input_ns += input_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.last_ms = at_ms

    def failed(self, at_ms: int, ns: int) -> None:
        self.fail += 1
        self.fail_ns += ns
        self.last_ms = at_ms

    def document(self, name: str, version: str) -> dict[str, object]:
        """$model_stat."""

        def stat(count: int, ns: int) -> dict[str, int]:
            return {"count": count, "ns": ns}

        n = self.success
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_ms,
            "inference_count": n,
            "execution_count": n,
            "inference_stats": {
                "success": stat(n, self.success_ns),
                "fail": stat(self.fail, self.fail_ns),
                "queue": stat(n, 0),  # no queue: a request runs on its connection's thread
                "compute_input": stat(n, self.input_ns),
                "compute_infer": stat(n, self.infer_ns),
                "compute_output": stat(n, self.output_ns),
                "cache_hit": stat(0, 0),
                "cache_miss": stat(0, 0),
            },
            "batch_stats": [],
        }
