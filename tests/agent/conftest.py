"""Fixtures for the device agent tests; the helpers they build on live in agent_testkit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "azure"))  # azure_testkit's IoT Hub query evaluator

from agent_testkit import MODEL, Clock, FakeTransport, HttpStore, Keys, Publisher

from components.local.signer import LocalKeySigner, create_key_file, public_key_path
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.core import DeviceAgent
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    trusted, other = create_key_file(root / "stack.pem"), create_key_file(root / "attacker.pem")
    return Keys(LocalKeySigner(trusted), public_key_path(trusted).read_bytes(), public_key_path(trusted), LocalKeySigner(other))


@pytest.fixture(scope="session")
def publisher(tmp_path_factory, keys) -> Publisher:
    return Publisher(tmp_path_factory.mktemp("store"), keys)


@pytest.fixture(scope="session")
def v100(publisher) -> DesiredModel:
    return publisher.publish("1.0.0", "detector-1.0.0.onnx")


@pytest.fixture(scope="session")
def v110(publisher) -> DesiredModel:
    return publisher.publish("1.1.0", "detector-1.1.0.onnx")


@pytest.fixture(scope="session")
def v120_nan(publisher) -> DesiredModel:
    return publisher.publish("1.2.0", "detector-1.2.0-nan.onnx")


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_agent(tmp_path, keys, transport, clock):
    """DeviceAgent factory; every agent is closed at the end so its state directory is released."""
    made: list[DeviceAgent] = []

    def make(state_dir: Path | None = None, **kwargs) -> DeviceAgent:
        kwargs.setdefault("transport", transport)
        kwargs.setdefault("clock", clock)
        agent = DeviceAgent("dev-1", MODEL, state_dir or tmp_path / "state", keys.pem, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


@pytest.fixture
def loads(monkeypatch) -> list[Path]:
    """Every model file onnxruntime is asked to open, so a test can prove a bad file never was."""
    import edgefleet_agent.serving

    opened: list[Path] = []
    real = edgefleet_agent.serving.open_session

    def spy(path, providers):
        opened.append(Path(path))
        return real(path, providers)

    monkeypatch.setattr(edgefleet_agent.serving, "open_session", spy)
    return opened


@pytest.fixture(scope="session")
def http_store():
    store = HttpStore()
    yield store
    store.close()


@pytest.fixture
def served(make_agent, transport, v110):
    """The detector 1.1.0 served by an endpoint on a free port of 127.0.0.1: (agent, endpoint)."""
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    registry = ModelRegistry()
    registry.add(agent_)
    endpoint = InferenceEndpoint(registry, port=0, max_body_bytes=4 << 20).start()
    yield agent_, endpoint
    endpoint.close()
