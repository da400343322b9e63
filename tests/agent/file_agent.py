"""A device agent process whose transport is two JSON files, for crash tests that must not depend on the hub. Like
`edgefleet-agent run`, it serves an inference endpoint and names it in <state>/endpoint.json.

python tests/agent/file_agent.py STATE_DIR PUBLIC_KEY DESIRED_JSON REPORT_JSON
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgefleet_agent.__main__ import write_endpoint_file  # noqa: E402
from edgefleet_agent.contract.state import DesiredModel, DeviceReport  # noqa: E402
from edgefleet_agent.core import DeviceAgent  # noqa: E402
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry  # noqa: E402


class FileTransport:
    def __init__(self, desired: Path, reports: Path) -> None:
        self.desired_path, self.reports_path = desired, reports

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return DesiredModel.from_json(self.desired_path.read_text() if self.desired_path.exists() else None)

    def report(self, report: DeviceReport) -> None:
        tmp = self.reports_path.with_suffix(".tmp")
        tmp.write_text(report.to_json())
        os.replace(tmp, self.reports_path)


def main() -> int:
    state, key, desired, reports = (Path(a) for a in sys.argv[1:5])
    agent = DeviceAgent("dev-1", "detector", state, key.read_bytes(), FileTransport(desired, reports))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.start()
    registry = ModelRegistry()
    registry.add(agent)
    endpoint = InferenceEndpoint(registry, port=0).start()  # the applications' traffic comes in here
    write_endpoint_file(state, endpoint, ["detector"])
    agent.serve_forever(stop, sync_seconds=0.05, report_seconds=0.05)
    endpoint.close()
    agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
