"""A ring's download cap (its own `max_download_bytes_per_second`, else its group's) rides in every desired state the
ring is set to: the candidate it serves, the candidate it shadows, the version a failed gate rolls it back to. A ring
without a cap gets none, even when the version it goes back to was read from a capped ring."""

from __future__ import annotations

from dataclasses import replace

from components.rollout.engine import RolloutEngine, RolloutPlan
from components.rollout.progress import RingPhase
from components.rollout.spec import GateConfig
from tests.rollout.fakes import Behaviour, FakeClock, FakeHub
from tests.rollout.test_engine import GATE, V1, V2, fleet, rings, unsigned_rollback

CAP = 250_000


def run_with_capped_canary(behaviours, previous=V1):
    clock = FakeClock()
    hub = FakeHub(clock, behaviours, running=V1)
    canary, *rest = rings(sorted(behaviours))
    plan = RolloutPlan("detector", V2, previous, (replace(canary, download_cap=CAP), *rest))
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    return progress, hub


def test_only_the_capped_rings_desired_state_carries_the_cap():
    progress, hub = run_with_capped_canary(fleet())
    assert progress["status"] == "succeeded"
    canary = hub.ring_desired[("detector", "canary")]
    assert (canary.version, canary.max_download_bytes_per_second, canary.download_rate) == ("1.1.0", CAP, CAP)
    assert canary.format == V2.format, "the cap needs no newer format"
    assert hub.ring_desired[("detector", "early")].max_download_bytes_per_second is None
    assert hub.ring_desired[("detector", "broad")].max_download_bytes_per_second is None


def test_a_rolled_back_ring_keeps_its_cap_and_an_uncapped_one_gets_none():
    """The version a rollback returns to may have to be downloaded again (a slot that cannot be reused): the link is
    the same, so the cap holds. The previous version, here read with another ring's cap, is set without it elsewhere."""
    devices = sorted(fleet())
    bad = {d: Behaviour(errors={"1.1.0": 0.5}) for d in devices[2:4]}  # early's devices fail
    progress, hub = run_with_capped_canary(fleet(**bad), previous=replace(V1, max_download_bytes_per_second=999))
    assert progress["status"] == "rolled_back"
    canary, early = hub.ring_desired[("detector", "canary")], hub.ring_desired[("detector", "early")]
    assert canary.version == early.version == "1.0.0" and canary.is_rollback and early.is_rollback
    assert canary.max_download_bytes_per_second == CAP
    assert early.max_download_bytes_per_second is None


def test_a_shadowed_candidate_is_downloaded_under_the_rings_cap_too():
    canary, *rest = rings(sorted(fleet()), gate=GateConfig(**{**GATE.model_dump(), "shadow_soak_seconds": 5}))
    canary = replace(canary, download_cap=CAP)
    plan = RolloutPlan("detector", V2, V1, (canary, *rest))
    shadowing = plan.ring_phase_desired(canary, RingPhase.SHADOW)
    assert shadowing.version == "1.0.0" and shadowing.shadow is not None and shadowing.shadow.version == "1.1.0"
    assert shadowing.max_download_bytes_per_second == shadowing.shadow.max_download_bytes_per_second == CAP
    assert plan.ring_phase_desired(rest[0], RingPhase.SERVE) == V2, "an uncapped ring gets exactly the phase's desired state"
