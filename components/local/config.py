"""The `edgefleet:local` stack section: the embedded fleet's hub, store and simulated devices."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from components.rollout.spec import Name, Strict


class LocalDevices(Strict):
    """A batch of simulated devices. `processes` of them run as real agent processes, the rest in one simulator."""

    count: int = Field(ge=1, le=100_000)
    prefix: Name = "dev"
    labels: dict[str, str] = Field(default_factory=dict)
    arch: Literal["amd64", "arm64", "armv7"] = "amd64"
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    processes: int = Field(default=0, ge=0)
    offline: int = Field(default=0, ge=0)
    reconnect_after_seconds: Annotated[float, Field(ge=0)] | None = None  # offline devices come back after this (None: never)

    @model_validator(mode="after")
    def _fits(self) -> "LocalDevices":
        if self.processes + self.offline > self.count:
            raise ValueError(f"processes ({self.processes}) + offline ({self.offline}) exceed count ({self.count})")
        return self


class LocalConfig(Strict):
    hub: str = ".edgefleet/local/hub.sqlite"
    store: str = ".edgefleet/local/store"
    devices: list[LocalDevices] = Field(min_length=1)
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    report_seconds: Annotated[float, Field(gt=0, le=300)] = 0.5
