"""A desired state's download cap (its ring's or group's `max_download_bytes_per_second`): the agent's sync keeps to
it against a localhost HTTP store, an unset cap leaves downloads unpaced, and a reader that does not know the field
(the contract adds it without a format) ignores it."""

from __future__ import annotations

import dataclasses
import json
import time

from agent_testkit import artifact_bytes, spy_rates

from edgefleet_agent.contract.state import DESIRED_FORMAT, DesiredModel


def test_sync_keeps_to_the_desired_states_cap_over_http(make_agent, transport, v100, http_store):
    data = artifact_bytes(v100)
    rate = 2000  # bytes a second: the sample model (~2.4 kB) takes about a second
    transport.desired_model = dataclasses.replace(v100, uri=http_store.url("capped/model.onnx", data), max_download_bytes_per_second=rate)
    agent = make_agent()
    started = time.monotonic()
    assert agent.sync() is True
    took = time.monotonic() - started
    assert agent.current_version == "1.0.0" and agent.status == "ok", agent.build_report().error
    burst = rate / 10  # the token bucket's first tenth of a second comes at once
    assert took >= 0.9 * (len(data) - burst) / rate, f"{len(data)} bytes at {rate} B/s took only {took:.2f}s"
    agent.report()
    assert transport.reports[-1].update == {"path": "full", "bytes": len(data), "fallback": None}


def test_without_a_cap_the_download_is_not_paced(make_agent, transport, v100, http_store, monkeypatch):
    rates = spy_rates(monkeypatch)
    transport.desired_model = dataclasses.replace(v100, uri=http_store.url("uncapped/model.onnx", artifact_bytes(v100)))
    agent = make_agent()
    assert agent.sync() is True and agent.current_version == "1.0.0"
    assert rates == [None]


def test_a_cap_no_controller_writes_is_ignored_rather_than_failing_the_install(v100):
    for bad in (0, -5, "fast", True, 1.5):
        assert dataclasses.replace(v100, max_download_bytes_per_second=bad).download_rate is None  # type: ignore[arg-type]
    assert dataclasses.replace(v100, max_download_bytes_per_second=125_000).download_rate == 125_000


def test_the_cap_needs_no_new_format_and_is_unwritten_when_unset(v100):
    body = json.loads(v100.to_json())
    assert "max_download_bytes_per_second" not in body, "a desired state without a cap is byte for byte what it was"
    capped = dataclasses.replace(v100, max_download_bytes_per_second=1_000_000)
    text = capped.to_json()
    assert json.loads(text)["max_download_bytes_per_second"] == 1_000_000
    assert json.loads(text).get("format", 1) == json.loads(v100.to_json()).get("format", 1) <= DESIRED_FORMAT
    assert DesiredModel.from_json(text) == capped


def test_a_reader_that_does_not_know_a_field_drops_it(v100):
    """What an agent from before the cap does with it: the same parsing, a field it has not got (here a made-up one
    standing for the cap) is dropped, so it installs the version uncapped instead of refusing the desired state."""
    body = {**json.loads(v100.to_json()), "some_future_setting": 7}
    assert DesiredModel.from_json(json.dumps(body)) == v100


def test_a_rings_cap_reaches_the_device_through_the_local_hub_and_holds_across_a_dropped_connection(
    make_agent, v100, tmp_path, monkeypatch
):
    """End to end on the local platform: the stack's group cap and a ring's override -> the ring plans -> each ring's
    desired state in the hub -> the agent's transport -> a download from a store that hangs up mid-transfer (resumed
    with Range) and still keeps to the device's ring's cap, not its group's."""
    from test_download_resume import Obj, Store, Version

    from components.local.hub import LocalHub
    from components.local.plan import ring_plans
    from components.rollout.engine import RolloutPlan
    from components.rollout.spec import DeviceGroupConfig, RolloutConfig
    from edgefleet_agent.transports.local import LocalHubTransport

    ring_cap, group_cap = 3000, 50_000_000
    group = DeviceGroupConfig.model_validate(
        {
            "name": "cameras",
            "hardware": {
                "name": "x86",
                "arch": "amd64",
                "execution_providers": ["CPUExecutionProvider"],
                "memory_mb": 256,
                "storage_mb": 64,
            },
            "labels": {"site": "a"},
            "max_download_bytes_per_second": group_cap,
        },
        strict=False,
    )
    rollout = RolloutConfig.model_validate(
        {
            "name": "detector",
            "model": "detector",
            "rings": [
                {"name": "canary", "group": "cameras", "labels": {"ring": "canary"}, "max_download_bytes_per_second": ring_cap},
                {"name": "broad", "group": "cameras"},
            ],
        },
        strict=False,
    )
    hub = LocalHub(tmp_path / "hub.db")
    hub.register_devices(
        [
            ("dev-1", {"site": "a", "ring": "canary"}, "amd64", ["CPUExecutionProvider"], "process"),
            ("dev-2", {"site": "a"}, "amd64", ["CPUExecutionProvider"], "process"),
        ]
    )
    data = artifact_bytes(v100)
    store = Store()
    try:
        served = dataclasses.replace(v100, uri=store.put("detector.onnx", Obj([Version(data)], cuts=[len(data) // 2, None])))
        plans = ring_plans(hub, rollout, {"cameras": group})
        assert [(r.name, r.target.selector) for r in plans] == [("canary", ("dev-1",)), ("broad", ("dev-2",))]
        plan = RolloutPlan("detector", served, None, tuple(plans))
        for ring in plans:
            hub.set_desired(ring.target, plan.ring_desired(ring, None))
        transport = LocalHubTransport(tmp_path / "hub.db")
        assert transport.desired("dev-2", "detector").max_download_bytes_per_second == group_cap
        assert transport.desired("dev-1", "detector").max_download_bytes_per_second == ring_cap
        rates = spy_rates(monkeypatch)
        agent = make_agent(transport=transport)
        started = time.monotonic()
        assert agent.sync() is True
        took = time.monotonic() - started
        assert agent.current_version == "1.0.0" and agent.status == "ok", agent.build_report().error
        assert rates == [ring_cap], "the device's ring's cap, not its group's"
        assert [r.status for r in store.requests] == [200, 206], "the cut was resumed, not started over"
        assert took >= 0.9 * (len(data) - ring_cap / 10) / ring_cap, f"{len(data)} bytes at {ring_cap} B/s took only {took:.2f}s"
    finally:
        store.close()
        hub.close()
