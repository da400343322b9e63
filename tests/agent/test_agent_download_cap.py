"""A desired state's download cap (its ring's or group's `max_download_bytes_per_second`): the agent's sync keeps to
it against a localhost HTTP store, an unset cap leaves downloads unpaced, and a reader that does not know the field
(the contract adds it without a format) ignores it."""

from __future__ import annotations

import dataclasses
import json
import time

from agent_testkit import artifact_bytes

import edgefleet_agent.core
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
    rates: list[object] = []
    real = edgefleet_agent.core.download

    def spy(*args, **kwargs):
        rates.append(kwargs.get("max_bytes_per_second"))
        return real(*args, **kwargs)

    monkeypatch.setattr(edgefleet_agent.core, "download", spy)
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
