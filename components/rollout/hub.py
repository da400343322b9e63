"""The interface the engine drives. Local (SQLite), AWS (Greengrass + IoT jobs + CloudWatch) and Azure
(IoT Hub configurations) each implement it; the engine never sees which one it talks to."""

from __future__ import annotations

from typing import Any, Protocol

from components.rollout.quality import Summary
from components.rollout.types import RingObservation, RingTarget
from edgefleet_agent.contract.state import DesiredModel


class FleetHub(Protocol):
    def desired(self, target: RingTarget) -> DesiredModel | None:
        """The version the ring is currently set to run (None: nothing set)."""
        ...

    def set_desired(self, target: RingTarget, desired: DesiredModel | None) -> None:
        """Points every device of the ring at `desired`. Must be idempotent."""
        ...

    def observe(self, target: RingTarget, desired: DesiredModel | None, since: float) -> RingObservation:
        """Counts the ring's devices by how they stand towards `desired`, counting reports made after `since`."""
        ...

    def summarize(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> Summary:
        """The telemetry of the devices of `targets` that serve `desired`, from reports made after `since`: the control
        group a ring's quality is compared with (devices still on the previous version, over the same window)."""
        ...

    # Optional: a hub that sees which build (variant) each device serves also offers
    #   summarize_variants(targets, desired, since) -> dict[str, Summary]
    # the same control group per build, so that each build's devices are compared with their own (gate.evaluate).

    def load_progress(self, rollout_id: str) -> dict[str, Any] | None: ...

    def save_progress(self, rollout_id: str, progress: dict[str, Any]) -> None:
        """Durably records the rollout's progress; the engine resumes from the last saved record."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    def now(self) -> float:
        import time

        return time.time()

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)
