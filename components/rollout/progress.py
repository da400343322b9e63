"""A rollout's progress record: the engine saves it before every action and resumes from it after a kill.

Stored as JSON in the hub (the local SQLite file, S3, a blob), so it stays a plain mapping; these TypedDicts and
enums are its schema, checked by mypy wherever the engine reads or writes it. StrEnum members are their own JSON
values, so records written before the enums existed read the same.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Iterable, NotRequired, TypedDict

from components.rollout.types import Measured
from edgefleet_agent.contract.state import DesiredModel


class RolloutStatus(StrEnum):
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    SUPERSEDED = "superseded"


class RingState(StrEnum):
    PENDING = "pending"  # not deployed yet
    DEPLOYING = "deploying"  # intent recorded; the ring's desired state is being set
    WAITING = "waiting"  # deployed, waiting for adoption (or after a soak reset)
    SOAKING = "soaking"  # adoption met, soaking
    PASSED = "passed"
    FAILED = "failed"


TERMINAL = frozenset({RolloutStatus.SUCCEEDED, RolloutStatus.ROLLED_BACK, RolloutStatus.ROLLBACK_INCOMPLETE, RolloutStatus.SUPERSEDED})
FAILED = frozenset({RolloutStatus.ROLLED_BACK, RolloutStatus.ROLLBACK_INCOMPLETE})


class RingPhase(StrEnum):
    """What a ring's desired state is in its current phase. A ring whose gate shadows first (shadow_soak_seconds) runs
    the version it ran before with the candidate beside it (SHADOW), then, once the shadow gate holds, serves it (SERVE).
    Records written before phases existed have none: their rings served."""

    SHADOW = "shadow"
    SERVE = "serve"


class RingRecord(TypedDict):
    name: str
    index: int
    state: RingState
    deployed_at: float | None  # when this phase's desired state was set: reports count from then
    soak_started: float | None
    finished_at: float | None
    verdict: dict[str, Any] | None  # {"outcome": "pass"|"fail"|"aborted", "reasons", "measured", …}
    measured: Measured | None  # gate.measure() of the latest observation
    observed_at: float | None
    unobserved: float  # seconds nobody watched: they move the ring's deadline out
    phase: NotRequired[RingPhase]  # absent: serve (records before phases)
    started_at: NotRequired[float]  # the ring's first deployment (its shadow phase): its deadline counts from then
    shadow_verdict: NotRequired[dict[str, Any]]  # the shadow phase's passing verdict
    window_paused: NotRequired[float]  # seconds its window was closed while its devices were still to swap: deadline moves out
    paused_until: NotRequired[float | None]  # its deadline paused for a closed window: when that opens again (said once)
    window_opens_at: NotRequired[float | None]  # waiting for its group's maintenance window: when it opens (None: not within a year)


class RollbackRecord(TypedDict):
    started_at: float
    rings: list[str]  # every ring touched, in order
    to_version: str | None
    reason: str
    desired: str | None  # the signed rollback desired state (DesiredModel JSON)
    set: list[str]  # rings whose desired state is set back
    confirmed: dict[str, bool]  # ring -> devices confirmed back (False: timed out)
    observed_at: NotRequired[float]
    unobserved: NotRequired[float]
    silent: NotRequired[dict[str, int]]
    unconfirmed: NotRequired[dict[str, Any]]
    shadow_rings: NotRequired[list[str]]  # rings that only shadowed the version: set back to `shadow_desired`, no order
    shadow_desired: NotRequired[str | None]  # what they ran before (DesiredModel JSON), without the candidate


class Progress(TypedDict):
    rollout_id: str
    rollout: str
    model: str
    version: str
    sha256: str
    previous_version: str | None
    status: RolloutStatus
    started_at: float
    finished_at: float | None
    desired: str  # DesiredModel JSON: the exact signed desired state the rings get
    rings: list[RingRecord]
    rollback: RollbackRecord | None
    report: dict[str, Any] | None  # the outcome, and on failure the gate, values, devices (report.py renders it)
    events: list[dict[str, Any]]
    samples: list[dict[str, Any]]


def rollout_id(rollout: str, desired: DesiredModel) -> str:
    """Names one rollout of one artifact: the key of its progress record, carried by deployments and echoed by agents."""
    return f"{rollout}@{desired.version}+{desired.sha256[:12]}"


def ring_record(name: str, index: int) -> RingRecord:
    return {
        "name": name,
        "index": index,
        "state": RingState.PENDING,
        "deployed_at": None,
        "soak_started": None,
        "finished_at": None,
        "verdict": None,
        "measured": None,
        "observed_at": None,
        "unobserved": 0.0,
    }


def as_progress(raw: dict[str, Any]) -> Progress:
    """A stored record with its states as the engine's enums (JSON gives plain strings)."""
    raw["status"] = RolloutStatus(raw["status"])
    for ring in raw["rings"]:
        ring["state"] = RingState(ring["state"])
        ring.setdefault("unobserved", 0.0)
        if "phase" in ring:
            ring["phase"] = RingPhase(ring["phase"])
    return raw  # type: ignore[return-value]


def phase_of(ring: RingRecord | dict[str, Any]) -> RingPhase:
    return RingPhase(ring.get("phase") or RingPhase.SERVE)


def served(progress: Progress | dict[str, Any]) -> bool:
    """Whether any ring of this rollout was ever set to serve its version. A rollout that stopped while its rings only
    shadowed the version never served it: undoing it needed no rollback order, and the version is not burned."""
    return any(r["state"] != RingState.PENDING and phase_of(r) == RingPhase.SERVE for r in progress["rings"])


def last_good(records: Iterable[Progress | dict[str, Any]], before: str | None = None) -> DesiredModel | None:
    """The rollback target: the desired model of the latest succeeded rollout among `records` (oldest first)."""
    good = [p for p in records if p.get("status") == RolloutStatus.SUCCEEDED and p.get("rollout_id") != before]
    return DesiredModel.from_json(good[-1]["desired"]) if good else None
