"""A ring's capture setting rides in that ring's desired state only; a rollback target carries none."""

from __future__ import annotations

from dataclasses import replace

from components.rollout.engine import RolloutEngine, RolloutPlan
from edgefleet_agent.contract.capture import CaptureSpec
from tests.rollout.fakes import Behaviour, FakeClock, FakeHub
from tests.rollout.test_engine import V1, V2, fleet, rings, unsigned_rollback

SPEC = CaptureSpec(low_confidence_below=0.5, max_per_device_per_day=10)


def run_with_capture_on_canary(behaviours):
    clock = FakeClock()
    hub = FakeHub(clock, behaviours, running=V1)
    canary, *rest = rings(sorted(behaviours))
    plan = RolloutPlan("detector", V2, V1, (replace(canary, capture=SPEC), *rest))
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    return progress, hub


def test_only_the_capturing_rings_desired_state_carries_capture():
    progress, hub = run_with_capture_on_canary(fleet())
    assert progress["status"] == "succeeded"
    canary = hub.ring_desired[("detector", "canary")]
    assert canary.capture == SPEC.to_json() and canary.format == 2 and canary.version == "1.1.0"
    assert hub.ring_desired[("detector", "early")].capture is None
    assert hub.ring_desired[("detector", "broad")].capture is None


def test_a_rolled_back_ring_stops_capturing():
    devices = sorted(fleet())
    bad = {d: Behaviour(errors={"1.1.0": 0.5}) for d in devices[:2]}
    progress, hub = run_with_capture_on_canary(fleet(**bad))
    assert progress["status"] == "rolled_back"
    after = hub.ring_desired[("detector", "canary")]
    assert after.version == "1.0.0" and after.is_rollback and after.capture is None
