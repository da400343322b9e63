"""Sample capture (opt-in): which requests a device keeps for labelling and retraining, and how many.

The controller sends a ring's `CaptureSpec` inside the desired state (`DesiredModel.capture`, desired-state format 2);
without it a device captures nothing. The spec says *what* to keep; *where* it goes is the device's capture sink, set
up by the platform with credentials that reach only the device's own prefix (docs/capture.md). A capture is
one request: its input tensors (npz, no pickle), the served model's outputs, and `CaptureRecord` metadata.

Standard library only, like the rest of the contract.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

from edgefleet_agent.contract.errors import FormatError

CaptureReason = Literal["low-confidence", "shadow-disagreement"]
REASONS: tuple[CaptureReason, ...] = ("low-confidence", "shadow-disagreement")
MAX_PER_DAY_LIMIT = 10_000  # what a spec may ask for at most, per device and day
DEFAULT_MAX_SAMPLE_BYTES = 4 << 20  # inputs larger than this are not captured (counted as skipped)
MAX_SAMPLE_BYTES_LIMIT = 64 << 20
# What a capture sink accepts as a device id or model name in a path segment: no separators, no "..", no leading dot.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_safe_segment(value: str) -> bool:
    """A single path segment a sink may use as a prefix: letters, digits, `_`, `-`, `.`, not `..`, no separator."""
    return bool(SEGMENT_RE.match(value)) and ".." not in value


@dataclass(frozen=True)
class CaptureSpec:
    """What a ring's devices capture. At least one criterion is set; both caps always apply."""

    low_confidence_below: float | None = None  # a request whose top-1 confidence (any row) is below this
    on_shadow_disagreement: bool = False  # a request on which the shadowed candidate disagreed with the served model
    max_per_device_per_day: int = 100  # UTC days; the count survives restarts (kept in the state directory)
    min_seconds_between: float = 60.0  # rate limit: at most one capture per this many seconds
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES  # larger inputs are skipped

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        lcb = self.low_confidence_below
        if lcb is not None and (isinstance(lcb, bool) or not isinstance(lcb, (int, float)) or not 0 < lcb <= 1):
            out.append(f"low_confidence_below must be in (0, 1], not {lcb!r}")
        disagree: object = self.on_shadow_disagreement  # JSON may carry anything
        if not isinstance(disagree, bool):
            out.append("on_shadow_disagreement must be true or false")
        if lcb is None and self.on_shadow_disagreement is False:
            out.append("no criterion: set low_confidence_below or on_shadow_disagreement")
        cap = self.max_per_device_per_day
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_PER_DAY_LIMIT:
            out.append(f"max_per_device_per_day must be an integer in [1, {MAX_PER_DAY_LIMIT}], not {cap!r}")
        gap = self.min_seconds_between
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap < 0:
            out.append(f"min_seconds_between must be a finite number >= 0, not {gap!r}")
        size = self.max_sample_bytes
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SAMPLE_BYTES_LIMIT:
            out.append(f"max_sample_bytes must be an integer in [1, {MAX_SAMPLE_BYTES_LIMIT}], not {size!r}")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> CaptureSpec | None:
        """None for None; FormatError for a body that is not a valid spec. Unknown keys are ignored (a newer
        controller may add settings within the desired state's format)."""
        if body is None:
            return None
        if not isinstance(body, Mapping):
            raise FormatError("desired state's capture", "is not a JSON object")
        names = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in body.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise FormatError("desired state's capture", str(exc)) from None


@dataclass(frozen=True)
class CaptureRecord:
    """The metadata written beside a capture's tensors (`<id>.json` next to `<id>.npz`); the sample is complete once
    this file exists."""

    id: str
    device: str
    model: str
    version: str
    sha256: str
    time: float  # seconds since the epoch, the device's clock
    reason: CaptureReason
    rollout: str = ""
    inputs: tuple[str, ...] = ()  # names in the npz: "input/<name>"
    outputs: tuple[str, ...] = ()  # "output/<name>": the served model's answer
    top1: tuple[int, ...] | None = None  # per row, for a classifier
    confidence: tuple[float, ...] | None = None
    candidate_version: str | None = None  # shadow disagreement: the candidate it disagreed with
    candidate_top1: tuple[int, ...] | None = None
    format: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaptureRecord:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise FormatError("capture record", "is not a JSON object")
        if body.get("format", 1) != 1:
            raise FormatError("capture record", f"is in format {body.get('format')!r}; this reader knows 1")
        names = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in body.items() if k in names}
        for key in ("inputs", "outputs", "top1", "confidence", "candidate_top1"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        return cls(**fields)
