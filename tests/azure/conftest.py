"""Fixtures for the Azure platform tests: the vendor schemas, a local IoT Hub, a local Key Vault, the graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "components" / "azure" / "schemas"  # package data: what the product validates with

sys.path.insert(0, str(HERE))  # azure_testkit, wherever pytest is started from


@pytest.fixture(scope="session")
def edge_schemas() -> dict[tuple[str, str], dict]:
    """The schemas the package ships, read as files so the tests do not lean on the product's loader."""
    out = {}
    for path in SHIPPED.glob("azure-iot-edge*-deployment-*.json"):
        kind = "$edgeAgent" if "edgeagent" in path.name else "$edgeHub"
        out[(kind, path.stem.rsplit("-", 1)[1])] = json.loads(path.read_text())
    assert len(out) == 5, f"expected the five vendored schemas in {SHIPPED}"
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


@pytest.fixture
def rbac_waits(monkeypatch):
    """The RBAC propagation wait on a fake clock that each requested sleep advances: records the sleeps, takes no time."""
    from components.azure import rbac

    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(rbac, "_sleep", sleep)
    monkeypatch.setattr(rbac, "_clock", lambda: now[0])
    monkeypatch.delenv(rbac.ENV, raising=False)
    return waits


@pytest.fixture(scope="session")
def azure_dev_graph() -> dict:
    from edgefleet.synth import synth

    return synth(REPO, "azure-dev")
