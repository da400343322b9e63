"""A ring's download cap on IoT Edge: the module twin's `maxDownloadBytesPerSecond` (built by the platform's own
manifest code) becomes the desired state's cap, the agent's download keeps to it against a localhost HTTP store, a
bad value is ignored rather than failing the install, and a cap the next layer dropped does not linger in the
agent's copy of the twin."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import pytest
from agent_testkit import MODEL, artifact_bytes, spy_rates
from test_agent_iotedge import SAS, connected, module_twin_desired, ring_desired

from components.azure.manifest import AGENT_MODULE, check_manifest
from edgefleet_agent.contract.iotedge import CAP_KEY, agent_desired, desired_from_agent, model_key
from edgefleet_agent.core import DeviceAgent

RATE = 2000  # bytes a second: the sample model (~2.4 kB) takes about a second


@pytest.fixture
def make(tmp_path, keys):
    made: list[DeviceAgent] = []

    def agent(transport, name: str) -> DeviceAgent:
        a = DeviceAgent(name, MODEL, tmp_path / name, keys.pem, transport)
        made.append(a)
        return a

    yield agent
    for a in made:
        a.close()


def test_the_twin_carries_the_cap_only_when_set_and_reads_it_back(keys, v110, http_store):
    want = ring_desired(v110, http_store)
    assert CAP_KEY not in agent_desired(want, "detector.canary"), "an uncapped ring's entry is what it always was"
    capped = dataclasses.replace(want, max_download_bytes_per_second=125_000)
    entry = agent_desired(capped, "detector.canary")
    assert entry[CAP_KEY] == 125_000
    assert desired_from_agent(entry) == capped
    for cap, ok in ((125_000, True), (0, False), ("fast", False)):
        twin = module_twin_desired(dataclasses.replace(capped, uri="https://store.example/models/detector/x.onnx"), keys.pem)
        twin["models"][model_key(MODEL)][CAP_KEY] = cap
        problems = check_manifest({AGENT_MODULE: {"properties.desired": twin}})
        assert (problems == []) is ok, problems  # the agent twin contract: a positive integer


def test_the_iotedge_agent_keeps_to_the_twins_cap_on_a_download_over_http(keys, v110, http_store, make, monkeypatch):
    data = artifact_bytes(v110)
    want = dataclasses.replace(ring_desired(v110, http_store), max_download_bytes_per_second=RATE)
    client, transport = connected(module_twin_desired(want, keys.pem))
    assert transport.desired("cam-1", MODEL).max_download_bytes_per_second == RATE
    rates = spy_rates(monkeypatch)
    agent = make(transport, "cam-1")
    started = time.monotonic()
    assert agent.sync() is True
    took = time.monotonic() - started
    assert agent.current_version == "1.1.0" and agent.status == "ok", agent.build_report().error
    assert rates == [RATE]
    burst = RATE / 10  # the token bucket's first tenth of a second comes at once
    assert 0.9 * (len(data) - burst) / RATE <= took < 2.0, f"{len(data)} bytes at {RATE} B/s took {took:.2f}s"


def test_a_bad_cap_on_the_device_is_ignored_and_logged_once(keys, v110, http_store, make, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="edgefleet.agent.iotedge")
    twin = module_twin_desired(ring_desired(v110, http_store), keys.pem)
    for bad in (0, -5, "fast", True, 1.5):
        twin["models"][model_key(MODEL)][CAP_KEY] = bad
        _, transport = connected(twin)
        assert transport.desired("cam-1", MODEL).max_download_bytes_per_second is None, bad
        transport.desired("cam-1", MODEL)
    assert len([r for r in caplog.records if CAP_KEY in r.getMessage()]) == 5  # once per transport, not per read
    rates = spy_rates(monkeypatch)
    agent = make(transport, "cam-1")
    assert agent.sync() is True and agent.current_version == "1.1.0"
    assert rates == [None], "installed, uncapped"


def test_a_cap_the_next_layer_drops_does_not_linger_in_the_agents_copy(keys, v100, v110, http_store):
    """IoT Hub recomputes the agent twin from the layers, and a notification carrying the whole new desired properties
    does not null the keys it dropped: the agent replaces the model entry a layer set whole."""
    one = dataclasses.replace(ring_desired(v100, http_store), max_download_bytes_per_second=RATE)
    client, transport = connected(module_twin_desired(one, keys.pem))
    assert transport.desired("cam-1", MODEL).max_download_bytes_per_second == RATE
    two = ring_desired(v110, http_store)  # the cap removed from the stack
    client.desired = {**module_twin_desired(two, keys.pem), "$version": client.desired["$version"] + 1}
    client.on_twin_desired_properties_patch_received(copy.deepcopy(client.desired))
    assert CAP_KEY not in transport.models()[model_key(MODEL)]
    assert transport.desired("cam-1", MODEL) == dataclasses.replace(two, uri=f"{two.uri}?{SAS}")
    # a service-side patch of the one property merges, and null removes it
    client.service_update({"models": {model_key(MODEL): {CAP_KEY: 500}}})
    assert transport.desired("cam-1", MODEL).max_download_bytes_per_second == 500
    client.service_update({"models": {model_key(MODEL): {CAP_KEY: None}}})
    assert transport.desired("cam-1", MODEL).max_download_bytes_per_second is None
