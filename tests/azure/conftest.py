"""Fixtures for the Azure platform tests: the vendor schemas, a local IoT Hub, a local Key Vault, the graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]
VENDORED = HERE / "schemas"
REFERENCE = REPO / ".." / "shared" / "reference" / "azure-iot-edge"

sys.path.insert(0, str(HERE))          # azure_testkit, wherever pytest is started from


def schema_dir() -> Path | None:
    """The vendored copy first (a clean clone has it), then ../shared/reference beside the repository."""
    for d in (VENDORED, REFERENCE):
        if (d / "azure-iot-edgeagent-deployment-1.1.json").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def edge_schemas() -> dict[tuple[str, str], dict]:
    d = schema_dir()
    if d is None:
        pytest.skip(f"IoT Edge deployment schemas not found in {VENDORED} or {REFERENCE.resolve()}")
    out = {}
    for path in d.glob("azure-iot-edge*-deployment-*.json"):
        kind = "$edgeAgent" if "edgeagent" in path.name else "$edgeHub"
        out[(kind, path.stem.rsplit("-", 1)[1])] = json.loads(path.read_text())
    return out


@pytest.fixture
def hub():
    from azure_testkit import FakeIotHub

    fake = FakeIotHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def no_sleep(monkeypatch):
    """Records the waits the clients ask for instead of sleeping them."""
    from components.azure import configurations

    waits: list[float] = []
    monkeypatch.setattr(configurations, "_sleep", waits.append)
    return waits


@pytest.fixture(scope="session")
def azure_dev_graph() -> dict:
    from edgefleet.synth import synth

    return synth(REPO, "azure-dev")
