"""An application busy with something a swap must not interrupt asks the agent to hold the next swap back: bounded,
through the endpoint with the agent's own client, counted as pending by the gate (the device still serves the old
version), and never holding back a rollback."""

from __future__ import annotations

import pytest

from edgefleet_agent.client import InferenceClient, InferenceError
from edgefleet_agent.core import MAX_DEFER_SECONDS
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry


@pytest.fixture
def serving_v100(make_agent, transport, v100):
    agent = make_agent()
    transport.desired_model = v100
    agent.sync()
    assert agent.current_version == "1.0.0"
    return agent


def test_a_deferred_swap_waits_for_the_deferral_then_happens(serving_v100, transport, clock, v110):
    agent = serving_v100
    until = agent.defer(120)
    assert until == clock.now + 120
    transport.desired_model = v110
    assert agent.sync() is False and agent.current_version == "1.0.0"
    report = agent.build_report()
    assert report.version == "1.0.0" and report.status == "ok", "a deferred device is pending, not failed"
    assert "swap to 1.1.0 deferred by an application until" in (report.error or "")
    assert report.deferred == "deferred by an application", "no time in it: held devices group by it"
    clock.now += 121
    assert agent.sync() is True and agent.current_version == "1.1.0"
    report = agent.build_report()
    assert "deferred" not in (report.error or "") and report.deferred is None


def test_an_application_cannot_hold_a_swap_back_forever(serving_v100, transport, clock, v110):
    """Asking again and again, or for a day, holds one swap back at most max_defer_seconds from the first ask."""
    agent = serving_v100
    first = clock.now
    transport.desired_model = v110
    swapped_at = None
    for _ in range(30):
        agent.defer(86400)
        agent.sync()
        if agent.current_version == "1.1.0":
            swapped_at = clock.now
            break
        clock.now += 60
    assert swapped_at is not None and swapped_at - first <= MAX_DEFER_SECONDS


def test_a_rollback_is_never_held_back(serving_v100, make_agent, transport, clock, publisher, v100, v110):
    """Attack: a compromised or buggy application defers forever to keep a bad version serving. A signed rollback order
    goes through at once."""
    agent = serving_v100
    transport.desired_model = v110
    agent.sync()
    assert agent.current_version == "1.1.0"
    agent.defer(MAX_DEFER_SECONDS)
    transport.desired_model = publisher.rollback(v100, v110)
    assert agent.sync() is True and agent.current_version == "1.0.0"


def test_the_endpoint_defers_through_the_agents_client_and_refuses_bad_requests(serving_v100, transport, clock, v110):
    registry = ModelRegistry()
    registry.add(serving_v100)
    endpoint = InferenceEndpoint(registry, port=0).start()
    try:
        with InferenceClient(endpoint.url) as client:
            assert client.defer("detector", 30) == clock.now + 30
            transport.desired_model = v110
            serving_v100.sync()
            assert serving_v100.current_version == "1.0.0"
            with pytest.raises(InferenceError) as unknown:
                client.defer("nope", 30)
            assert unknown.value.status == 404
            with pytest.raises(InferenceError) as bad:
                client.defer("detector", -5)
            assert bad.value.status == 400 and "seconds" in str(bad.value)
    finally:
        endpoint.close()
