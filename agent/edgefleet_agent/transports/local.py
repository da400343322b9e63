"""The local platform's transport: the agent reads and writes the fleet's SQLite hub file directly."""

from __future__ import annotations

import os
from pathlib import Path

from edgefleet_agent.contract.localhub import AgentHub
from edgefleet_agent.contract.state import DesiredModel, DeviceReport


class LocalHubTransport:
    """The local platform: the agent reads and writes the fleet's SQLite hub directly."""

    def __init__(self, hub_path: str | os.PathLike[str]) -> None:
        path = Path(hub_path)
        if not path.is_file():
            # LocalHub would create an empty hub here, and the agent would idle forever without saying why.
            raise FileNotFoundError(f"{path}: no local hub database here; pass the hub the fleet writes (edgefleet up --stack local)")
        self.hub = AgentHub(path)

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self.hub.device_desired(device_id, model)

    def report(self, report: DeviceReport) -> None:
        self.hub.put_report(report)

    def close(self) -> None:
        self.hub.close()
