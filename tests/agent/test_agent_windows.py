"""Maintenance windows enforced on the device (IoT Edge, and any desired state that carries them): the cloud platforms
deploy a ring whatever the hour, so the agent is what keeps a forward swap inside the group's window.

Guarantees: outside a window a forward swap waits, the device keeps serving the old version and reports the swap
pending with the reason (status ok, not failed: the gate counts it as not yet adopted); inside one it swaps; a signed
rollback swaps whatever the hour (a bad version must go); windows the agent cannot read are refused, never read as
"always open"; an application's deferral stays bounded inside a window.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from agent_testkit import MODEL, artifact_bytes
from test_agent_iotedge import AGENT, SPEC

from components.azure.manifest import (
    AGENT_MODULE,
    RingDeploymentSpec,
    base_manifest,
    desired_from_configuration,
    effective_manifest,
    ring_configuration,
)
from components.rollout import windows as controller_windows
from edgefleet_agent.contract import windows as agent_windows
from edgefleet_agent.contract.signing import key_id_of, load_public_key
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.windows import MaintenanceWindow, Windows
from edgefleet_agent.core import MAX_DEFER_SECONDS, window_wait
from edgefleet_agent.transports.iotedge import IoTEdgeTransport

# 02:00-04:00 on the devices' clock in Berlin (UTC+1 in December): 01:00-03:00 UTC
NIGHTLY = Windows("Europe/Berlin", (MaintenanceWindow(cron="0 2 * * *", minutes=120),))
CLOSED = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc).timestamp()  # 11:00 in Berlin
OPENS = datetime(2026, 12, 5, 1, 0, tzinfo=timezone.utc).timestamp()
OPEN = OPENS + 30 * 60


def windowed(v: DesiredModel, windows: Windows | None = NIGHTLY) -> DesiredModel:
    return dataclasses.replace(v, windows=windows.to_document() if windows else None)


@pytest.fixture
def serving_v100(make_agent, transport, clock, v100):
    clock.now = CLOSED
    agent = make_agent()
    transport.desired_model = windowed(v100)
    assert agent.sync() and agent.current_version == "1.0.0", "a device serving nothing installs whatever the hour"
    return agent


def test_one_implementation_the_controller_reexports_the_agents():
    assert controller_windows.Windows is agent_windows.Windows
    assert controller_windows.MaintenanceWindow is agent_windows.MaintenanceWindow


def test_the_windows_document_round_trips_and_refuses_what_it_cannot_read():
    text = NIGHTLY.to_document()
    assert text == '{"timezone":"Europe/Berlin","windows":[{"cron":"0 2 * * *","minutes":120}]}'
    assert Windows.from_document(text) == NIGHTLY
    assert Windows.from_document(None) is None and Windows.from_document('{"timezone":"UTC","windows":[]}') is None
    for bad in (
        "not json",
        '{"windows": "0 2 * * *"}',
        '{"timezone":"Mars/Olympus","windows":[]}',
        '{"timezone":"UTC","windows":[{"cron":"61 * * * *","minutes":5}]}',
        '{"timezone":"UTC","windows":[{"cron":"0 2 * * *","minutes":0}]}',
    ):
        with pytest.raises(ValueError):
            Windows.from_document(bad)


def test_a_desired_state_with_windows_is_format_4_and_survives_json(v110):
    d = windowed(v110)
    assert d.format == 4
    assert DesiredModel.from_json(d.to_json()) == d
    assert "windows" not in v110.to_json(), "a desired state without windows is written as before"


def test_outside_the_window_a_forward_swap_waits_and_is_reported_pending_with_the_reason(serving_v100, transport, clock, v110):
    agent = serving_v100
    transport.desired_model = windowed(v110)
    for _ in range(3):
        assert agent.sync() is False and agent.current_version == "1.0.0"
        clock.now += 3600
    report = agent.build_report()
    assert report.version == "1.0.0" and report.status == "ok" and report.failed_version is None
    assert (
        "swap to 1.1.0 waits for the maintenance window (0 2 * * * for 120 min (Europe/Berlin)): the next opens 2026-12-05 01:00 UTC"
        in (report.error or "")
    )
    assert report.deferred == "outside the maintenance window (0 2 * * * for 120 min (Europe/Berlin))", "the same on every device"
    assert agent.outcome(transport.desired_model)[0] == "pending"


def test_inside_the_window_it_swaps(serving_v100, transport, clock, v110):
    agent = serving_v100
    transport.desired_model = windowed(v110)
    assert agent.sync() is False
    clock.now = OPEN
    assert agent.sync() is True and agent.current_version == "1.1.0"
    report = agent.build_report()
    assert "maintenance window" not in (report.error or "") and report.deferred is None


def test_the_window_closes_at_its_end(serving_v100, transport, clock, v110):
    clock.now = OPENS + 120 * 60  # 04:00 in Berlin: closed again
    transport.desired_model = windowed(v110)
    assert serving_v100.sync() is False and serving_v100.current_version == "1.0.0"
    clock.now -= 1
    assert serving_v100.sync() is True and serving_v100.current_version == "1.1.0"


def test_a_rollback_swaps_outside_the_window(serving_v100, transport, clock, publisher, v100, v110):
    """Attack: a bad version that reached the device in a window must not stay until the next one."""
    agent = serving_v100
    clock.now = OPEN
    transport.desired_model = windowed(v110)
    assert agent.sync() and agent.current_version == "1.1.0"
    clock.now = CLOSED + 86400
    assert window_wait(windowed(v110), clock.now) is not None
    transport.desired_model = windowed(publisher.rollback(v100, v110))
    assert window_wait(transport.desired_model, clock.now) is None
    assert agent.sync() is True and agent.current_version == "1.0.0"


def test_windows_the_agent_cannot_read_refuse_a_forward_swap_but_never_a_rollback(serving_v100, transport, clock, publisher, v100, v110):
    agent = serving_v100
    transport.desired_model = dataclasses.replace(v110, windows='{"timezone":"UTC","windows":[{"cron":"every night","minutes":60}]}')
    agent.sync()
    report = agent.build_report()
    assert agent.current_version == "1.0.0" and report.status == "failed" and report.failed_version == "1.1.0"
    assert "maintenance windows refused" in (report.error or "")
    clock.now = OPEN
    transport.desired_model = windowed(v110)
    assert agent.sync() and agent.current_version == "1.1.0"
    transport.desired_model = dataclasses.replace(publisher.rollback(v100, v110), windows="garbage")
    assert agent.sync() and agent.current_version == "1.0.0"


def test_an_application_deferral_stays_bounded_inside_a_window(serving_v100, transport, clock, v110):
    agent = serving_v100
    clock.now = OPEN
    first = clock.now
    transport.desired_model = windowed(v110)
    while agent.current_version != "1.1.0":
        agent.defer(86400)
        agent.sync()
        clock.now += 60
        assert clock.now - first <= MAX_DEFER_SECONDS + 60
    assert clock.now - first <= MAX_DEFER_SECONDS + 60


# -- Azure IoT Edge: the ring layer carries the group's windows to the agent module twin -----------------------------


def spec(windows: Windows | None) -> RingDeploymentSpec:
    return dataclasses.replace(SPEC, windows=windows.to_document() if windows else "")


def twin(keys, desired: DesiredModel, s: RingDeploymentSpec) -> dict:
    trust = {"keyId": key_id_of(load_public_key(keys.pem, "test")), "publicKeyPem": keys.pem.decode()}
    base = base_manifest(agent=AGENT, runtime="1.5", agent_schema="1.1", hub_schema="1.2", trust=trust)
    layer = ring_configuration(s, desired)["content"]["modulesContent"]
    return effective_manifest(base, layer)[AGENT_MODULE]["properties.desired"]


class Twin:
    def __init__(self, desired: dict) -> None:
        self.desired = {**desired, "$version": 1}
        self.on_twin_desired_properties_patch_received = None
        self.on_connection_state_change = None

    def get_twin(self) -> dict:
        return {"desired": self.desired, "reported": {}}

    def patch_twin_reported_properties(self, patch: dict) -> None:
        self.reported = patch

    def shutdown(self) -> None:
        pass


def test_the_ring_layer_carries_the_groups_windows_and_the_engine_reads_its_desired_state_back_without_them(v110):
    cfg = ring_configuration(spec(NIGHTLY), v110)
    entry = cfg["content"]["modulesContent"][AGENT_MODULE]["properties.desired.models.detector"]
    assert entry["maintenanceWindows"] == NIGHTLY.to_document()
    assert desired_from_configuration(cfg, MODEL) == v110, "the engine compares desired states whole"
    assert (
        "maintenanceWindows"
        not in ring_configuration(spec(None), v110)["content"]["modulesContent"][AGENT_MODULE]["properties.desired.models.detector"]
    )
    assert "windows" not in spec(None).to_json() and RingDeploymentSpec.from_json(spec(NIGHTLY).to_json()) == spec(NIGHTLY)


def test_on_iot_edge_the_module_waits_for_the_window_and_a_rollback_does_not(make_agent, keys, clock, http_store, publisher, v100, v110):
    def hosted(v: DesiredModel) -> DesiredModel:
        path = f"/models/{MODEL}/{v.sha256}.onnx"
        http_store.files[path] = (artifact_bytes(v), None)
        return dataclasses.replace(v, uri=f"http://127.0.0.1:{http_store.server.server_address[1]}{path}")

    clock.now = CLOSED
    client = Twin(twin(keys, hosted(v100), spec(NIGHTLY)))
    transport = IoTEdgeTransport(client)
    transport.connect()
    agent = make_agent(transport=transport)
    assert agent.sync() and agent.current_version == "1.0.0"
    client.desired = {**twin(keys, hosted(v110), spec(NIGHTLY)), "$version": 2}
    transport.refresh(force=True)
    assert transport.desired("cam-1", MODEL).windows == NIGHTLY.to_document()
    assert agent.sync() is False and agent.current_version == "1.0.0"
    agent.report()
    assert "waits for the maintenance window" in client.reported["models"]["detector"]["error"]
    assert client.reported["models"]["detector"]["status"] == "ok"
    assert client.reported["models"]["detector"]["deferred"] == "outside the maintenance window (0 2 * * * for 120 min (Europe/Berlin))"
    clock.now = OPEN
    assert agent.sync() is True and agent.current_version == "1.1.0"
    agent.report()
    assert client.reported["models"]["detector"]["deferred"] is None, "sent as null: IoT Hub drops it from the twin"
    clock.now = CLOSED + 86400
    client.desired = {**twin(keys, hosted(publisher.rollback(v100, v110)), spec(NIGHTLY)), "$version": 3}
    transport.refresh(force=True)
    assert agent.sync() is True and agent.current_version == "1.0.0"


def test_around_a_start_neither_an_overlapping_window_nor_the_next_opening_is_missed():
    """Regressions: the window open before a start a fraction of a second away was read as closed (an always-open
    schedule of overlapping days blinked shut at each midnight), and a start less than a microsecond after `at` was
    skipped (the device's local time is rounded to the microsecond), naming the opening after it."""
    always = Windows("Europe/Berlin", (MaintenanceWindow(cron="0 0 * * *", minutes=2880),))
    for day in (28, 29, 30):  # across the spring-forward night
        midnight = datetime(2026, 3, day, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
        for d in (-1.0, -0.5, -1e-6, 0.0, 1e-6, 0.5):
            assert always.open_until(midnight + d) is not None
    twenty = Windows("UTC", (MaintenanceWindow(cron="*/20 * * * *", minutes=4),))
    start = datetime(2027, 12, 30, 0, 0, tzinfo=timezone.utc).timestamp()
    assert twenty.open_until(start - 2e-7) is None and twenty.next_open(start - 2e-7) == start
