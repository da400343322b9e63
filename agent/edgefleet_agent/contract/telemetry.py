"""What a device reports about the traffic its applications sent: bounded summaries, never payloads.

Each summary has a fixed size whatever the traffic (fixed histograms, top-K class counts plus "other"), adds up
across devices and windows by summing (`merged`), and is JSON on the wire, inside a DeviceReport, a module twin's
reported properties (which IoT Hub caps at 32 KB) or CloudWatch metrics. The gates judge a ring on these sums.

- Latency: counts in LATENCY_BOUNDS_MS buckets (log-spaced, 0.05 ms to 60 s); quantiles are read off the buckets,
  within a bucket's width (about 19% here).
- Predictions of a classifier: top-1 class counts (the TOP_K most frequent, the rest as "other") and a histogram of
  the top-1 confidence in CONFIDENCE_BINS bins. Of any other output: a histogram of its values' mean per request.
- Shadow: the candidate a ring shadows, run on the same requests: how often its top-1 class agreed with the served
  model's, and both latencies.
- Labelled: requests whose application sent the true class (a `label` parameter), and how many were right.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

TOP_K = 8
OTHER = "other"
CONFIDENCE_BINS = 10
VALUE_BOUNDS = (-1e6, -1e3, -100.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 100.0, 1e3, 1e6)  # value histogram edges
# 0.05 ms * 1.2^k up to 60 s: 78 buckets, a quantile within 20% of the truth
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 1.2**k, 6) for k in range(78))


def _add(a: list[int], b: list[int]) -> list[int]:
    if not a:
        return list(b)
    if not b:
        return list(a)
    if len(a) != len(b):
        raise ValueError(f"histograms of different sizes ({len(a)} and {len(b)}) cannot be merged")
    return [x + y for x, y in zip(a, b, strict=True)]


@dataclass
class Latency:
    """Request latencies in LATENCY_BOUNDS_MS buckets (the last counts everything beyond the last bound)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1

    @property
    def n(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (None without samples)."""
        n = self.n
        if not n:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 1.2
        return LATENCY_BOUNDS_MS[-1] * 1.2

    def merged(self, other: Latency) -> Latency:
        return Latency(_add(self.counts, other.counts))

    def to_json(self) -> list[int]:
        return list(self.counts)

    @classmethod
    def from_json(cls, data: Any) -> Latency:
        if not isinstance(data, list) or len(data) != len(LATENCY_BOUNDS_MS) + 1:
            return cls()
        return cls(list(map(int, data)))


@dataclass
class Predictions:
    """What a model said over a window. `kind` classes: top-1 counts by class index (as strings) and the top-1
    confidence histogram; `kind` values: a histogram of each request's mean output value (VALUE_BOUNDS)."""

    kind: Literal["classes", "values"]
    output: str
    n: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    confidence: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def add_class(self, cls: int, confidence: float) -> None:
        self.n += 1
        key = str(cls)
        self.classes[key] = self.classes.get(key, 0) + 1
        if not self.confidence:
            self.confidence = [0] * CONFIDENCE_BINS
        self.confidence[min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS)))] += 1

    def add_value(self, mean: float) -> None:
        self.n += 1
        if not self.values:
            self.values = [0] * (len(VALUE_BOUNDS) + 1)
        self.values[bisect.bisect_left(VALUE_BOUNDS, mean)] += 1

    def mean_confidence(self) -> float | None:
        total = sum(self.confidence)
        if not total:
            return None
        return sum((i + 0.5) / CONFIDENCE_BINS * c for i, c in enumerate(self.confidence)) / total

    def distribution(self) -> dict[str, float]:
        """Share of each class (or value bucket) in what the model said."""
        counts = self.classes if self.kind == "classes" else {str(i): c for i, c in enumerate(self.values) if c}
        total = sum(counts.values())
        return {k: v / total for k, v in counts.items()} if total else {}

    def bounded(self, top_k: int = TOP_K) -> Predictions:
        """At most `top_k` classes by count, the rest summed under "other": what fits a twin or a metric set."""
        if self.kind != "classes" or len(self.classes) <= top_k:
            return Predictions(self.kind, self.output, self.n, dict(self.classes), list(self.confidence), list(self.values))
        ranked = sorted(((k, v) for k, v in self.classes.items() if k != OTHER), key=lambda kv: (-kv[1], kv[0]))
        kept = dict(ranked[:top_k])
        kept[OTHER] = self.classes.get(OTHER, 0) + sum(v for _, v in ranked[top_k:])
        return Predictions(self.kind, self.output, self.n, kept, list(self.confidence), list(self.values))

    def merged(self, other: Predictions) -> Predictions:
        if (self.kind, self.output) != (other.kind, other.output):
            raise ValueError(f"cannot merge {self.kind} of {self.output!r} with {other.kind} of {other.output!r}")
        classes = dict(self.classes)
        for k, v in other.classes.items():
            classes[k] = classes.get(k, 0) + v
        return Predictions(
            self.kind, self.output, self.n + other.n, classes, _add(self.confidence, other.confidence), _add(self.values, other.values)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "output": self.output,
            "n": self.n,
            "classes": dict(self.classes),
            "confidence": list(self.confidence),
            "values": list(self.values),
        }

    @classmethod
    def from_json(cls, data: Any) -> Predictions | None:
        if not isinstance(data, dict) or data.get("kind") not in ("classes", "values"):
            return None
        return cls(
            kind=data["kind"],
            output=str(data.get("output", "")),
            n=int(data.get("n", 0)),
            classes={str(k): int(v) for k, v in (data.get("classes") or {}).items()},
            confidence=list(map(int, data.get("confidence") or [])),
            values=list(map(int, data.get("values") or [])),
        )


@dataclass
class Shadow:
    """The candidate a device shadows: run on the same requests as the served model, its answer never returned."""

    version: str
    sha256: str
    compared: int = 0  # requests both models answered
    agree: int = 0  # … with the same top-1 class (classifiers) or outputs within tolerance
    errors: int = 0  # requests the candidate failed on
    invalid: int = 0  # … or answered with NaN/Inf
    latency: Latency = field(default_factory=Latency)  # the candidate's
    served_latency: Latency = field(default_factory=Latency)  # the served model's, on the same requests
    predictions: Predictions | None = None  # what the candidate said
    dropped: int = 0  # requests not shadowed because the candidate was behind (its queue was full): not compared

    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    def latency_ratio(self) -> float | None:
        """The candidate's median latency over the served model's, on the same requests."""
        mine, theirs = self.latency.quantile(0.5), self.served_latency.quantile(0.5)
        return mine / theirs if mine is not None and theirs else None

    def merged(self, other: Shadow) -> Shadow:
        if (self.version, self.sha256) != (other.version, other.sha256):
            raise ValueError("shadow summaries of different candidates cannot be merged")
        preds = (
            other.predictions
            if self.predictions is None
            else (self.predictions if other.predictions is None else self.predictions.merged(other.predictions))
        )
        return Shadow(
            self.version,
            self.sha256,
            self.compared + other.compared,
            self.agree + other.agree,
            self.errors + other.errors,
            self.invalid + other.invalid,
            self.latency.merged(other.latency),
            self.served_latency.merged(other.served_latency),
            preds,
            self.dropped + other.dropped,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "compared": self.compared,
            "agree": self.agree,
            "errors": self.errors,
            "invalid": self.invalid,
            "latency": self.latency.to_json(),
            "served_latency": self.served_latency.to_json(),
            "predictions": self.predictions.to_json() if self.predictions else None,
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, data: Any) -> Shadow | None:
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            return None
        return cls(
            version=data["version"],
            sha256=str(data.get("sha256", "")),
            compared=int(data.get("compared", 0)),
            agree=int(data.get("agree", 0)),
            errors=int(data.get("errors", 0)),
            invalid=int(data.get("invalid", 0)),
            latency=Latency.from_json(data.get("latency")),
            served_latency=Latency.from_json(data.get("served_latency")),
            predictions=Predictions.from_json(data.get("predictions")),
            dropped=int(data.get("dropped", 0)),
        )


@dataclass
class Labelled:
    """Requests that carried the true class, and how many the served model got right: live accuracy."""

    n: int = 0
    correct: int = 0

    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def merged(self, other: Labelled) -> Labelled:
        return Labelled(self.n + other.n, self.correct + other.correct)

    def to_json(self) -> dict[str, int]:
        return {"n": self.n, "correct": self.correct}

    @classmethod
    def from_json(cls, data: Any) -> Labelled | None:
        if not isinstance(data, dict):
            return None
        return cls(int(data.get("n", 0)), int(data.get("correct", 0)))
