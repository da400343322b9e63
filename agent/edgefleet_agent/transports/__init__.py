"""How an agent talks to its fleet: it reads desired state and writes reports through a `Transport`, so the
local hub, Greengrass or an IoT Edge module twin can sit behind it without the agent knowing which.

local.py       the local fleet's SQLite hub
greengrass.py  AWS IoT Greengrass v2: the component's environment in, CloudWatch out
iotedge.py     Azure IoT Edge: the module twin's desired properties in, its reported properties out
"""

from __future__ import annotations

from typing import Protocol

from edgefleet_agent.contract.state import DesiredModel, DeviceReport


class Transport(Protocol):
    def desired(self, device_id: str, model: str) -> DesiredModel | None: ...

    def report(self, report: DeviceReport) -> None: ...
