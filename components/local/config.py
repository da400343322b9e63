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


class LocalTraffic(Strict):
    """What the applications on every simulated device send one model: the frames of a pinned labelled set, the true
    label on a share of them (applications rarely know it). Without it, devices send the manifest's seeded random
    inputs, and gates judge noise."""

    dataset: str = Field(description="the set's descriptor, relative to the project (format: models/datasets/README.md)")
    labelled_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.25, description="the share of requests that carry the true label (live accuracy); 0: none do"
    )


class LocalConfig(Strict):
    hub: str = ".edgefleet/local/hub.sqlite"
    store: str = ".edgefleet/local/store"
    devices: list[LocalDevices] = Field(min_length=1)
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    report_seconds: Annotated[float, Field(gt=0, le=300)] = 0.5
    traffic: dict[Name, LocalTraffic] = Field(default_factory=dict, description="per model name: what its applications send")
    simulated_requests_per_sweep: int = Field(
        default=2000,
        ge=1,
        description="at most this many of the simulated devices send their application's request in one sweep (in turn, "
        "so each device's share is even); every device still syncs each sweep, and reports on its turn and whenever "
        "what it serves changes. Two cores cannot run 10,000 devices' traffic at once: past this many devices a device "
        "sends a request and reports every few sweeps",
    )
