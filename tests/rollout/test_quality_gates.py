"""Quality gates in the engine, against a scripted fleet whose reports carry telemetry (tests/rollout/fakes.py):
shadow phases (the candidate beside the served model), control comparisons (devices still on the previous version),
live accuracy, and never passing on silence."""

from __future__ import annotations

from dataclasses import replace

from components.rollout.decide import decide
from components.rollout.engine import RingPlan, RolloutEngine, RolloutPlan
from components.rollout.progress import RingPhase, as_progress, served
from components.rollout.report import failure_summary
from components.rollout.spec import GateConfig
from components.rollout.types import RingTarget
from tests.rollout.fakes import Behaviour, FakeClock, FakeHub, desired

V1, V2 = desired("1.0.0"), desired("1.1.0")
HEALTH = dict(
    soak_seconds=10,
    deadline_seconds=300,
    min_reporting_share=1.0,
    success_share=1.0,
    max_failure_share=0.0,
    max_invalid_output_share=0.0,
    max_error_rate=0.01,
)
PLAIN = GateConfig(**HEALTH)
SHADOW = GateConfig(**HEALTH, shadow_soak_seconds=10, min_agreement=0.8, max_latency_ratio=2.0, min_quality_samples=200)
COMPARE = GateConfig(**HEALTH, max_distribution_shift=0.15, max_confidence_drop=0.1, max_latency_ratio=1.5, min_quality_samples=200)


def fleet(n: int = 30, **overrides: Behaviour) -> dict[str, Behaviour]:
    devices = {f"d{i:02d}": Behaviour() for i in range(n)}
    devices.update(overrides)
    return devices


def plans(devices: list[str], gates: tuple[GateConfig, ...], sizes=(4, 12)) -> tuple[RingPlan, ...]:
    """canary, early, broad; each ring's control group is the rings after it (broad has none)."""
    cuts = [0, *sizes, len(devices)]
    names = ["canary", "early", "broad"]
    targets = [RingTarget("detector", names[i], i, tuple(devices[cuts[i] : cuts[i + 1]])) for i in range(3)]
    return tuple(RingPlan(targets[i], gates[i], control=tuple(targets[i + 1 :])) for i in range(3))


def unsigned_rollback(previous, failed, reason):
    return replace(previous, rollback_order=f'{{"version": "{previous.version}"}}', rollback_signature="test-signature")


def run(behaviours, gates=(SHADOW, COMPARE, PLAIN), previous=V1, new=V2):
    clock = FakeClock()
    hub = FakeHub(clock, behaviours, running=previous)
    plan = RolloutPlan("detector", new, previous, plans(sorted(behaviours), gates))
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    return progress, hub, plan


def events(progress, name=None):
    return [e for e in progress["events"] if name is None or e["event"] == name]


def sets(hub):
    """(ring, served version, shadowed version, rollback?) of every set_desired, in order."""
    return [(c[1], c[2], c[3]) for c in hub.calls if c[0] == "set_desired"]


def good(d):
    """The succeeded record of an earlier rollout of `d` (what the rings ran before)."""
    return {
        "rollout_id": f"detector@{d.version}",
        "status": "succeeded",
        "version": d.version,
        "sha256": d.sha256,
        "desired": d.to_json(),
        "rings": [],
    }


def ever_served(hub, version):
    return sorted({dev for dev, hist in hub.history.items() for _, d in hist if d is not None and d.version == version})


# -- shadow phases -----------------------------------------------------------------------------------------------
def test_a_shadow_ring_shadows_the_candidate_for_its_soak_then_serves_it_and_the_phases_are_recorded():
    progress, hub, plan = run(fleet())
    assert progress["status"] == "succeeded"
    canary = plan.rings[0].target
    history = [d for t, d in hub.history[canary.selector[0]] if t > -1e8]
    assert [(d.version, d.shadow.version if d.shadow else None) for d in history] == [("1.0.0", "1.1.0"), ("1.1.0", None)]
    assert history[0].rollback_order is None and history[0].rollout == plan.rollout_id and history[0].format == 2
    ring = progress["rings"][0]
    assert ring["phase"] == RingPhase.SERVE and ring["shadow_verdict"]["outcome"] == "pass"
    q = ring["shadow_verdict"]["measured"]["quality"]
    assert q["agreement"] == 0.9 and q["latency_ratio"] == 1.0
    passed = events(progress, "shadow-passed")[0]
    deployed = [e for e in events(progress, "deployed") if e["ring"] == "canary"]
    assert deployed[0]["shadow"] == "1.1.0" and deployed[1]["t"] >= passed["t"]
    soak = events(progress, "soak-started")
    assert soak[0]["phase"] == "shadow" and soak[1]["phase"] == "serve"
    assert passed["t"] - soak[0]["t"] >= SHADOW.shadow_soak_seconds
    assert ring["finished_at"] - ring["soak_started"] >= SHADOW.soak_seconds, "the serve phase soaks in full after the shadow phase"


def test_a_candidate_that_disagrees_stops_in_shadow_never_served_no_rollback_order_and_not_burned():
    progress, hub, plan = run(fleet(**{f"d{i:02d}": Behaviour(agree={"1.1.0": 0.33}) for i in range(30)}))
    assert progress["status"] == "rolled_back"
    report = progress["report"]
    assert report["failed_ring"] == "canary" and report["served"] is False and report["shadow_rings"] == ["canary"]
    assert "shadow agreement 33.0% < min 80.0%" in report["reasons"][0]
    assert report["never_deployed"] == ["early", "broad"]
    assert ever_served(hub, "1.1.0") == [], "a version that only ran in shadow was never served"
    last = hub.ring_desired[("detector", "canary")]
    assert (last.version, last.shadow, last.is_rollback) == ("1.0.0", None, False), "back to what it ran, without the candidate"
    assert progress["rollback"]["desired"] is None, "no rollback order was signed"
    assert not served(progress)
    offenders = report["offenders"]
    assert offenders and {o["metric"] for o in offenders} == {"agreement"} and offenders[0]["value"] == 0.33
    text = failure_summary(progress)
    assert "never served" in text and "not burned" in text and "shadow agreement 33.0% (min 80.0%)" in text
    # the decision does not treat it as previously rolled back: applying 1.1.0 again runs a new attempt
    d = decide("detector", plan.rings, [good(V1), progress], {r.name: hub.desired(r.target) for r in plan.rings}, V2)
    assert d.action == "run" and d.rollout_id.endswith("#2") and d.previous == V1


def test_a_served_version_that_fails_in_a_later_rings_shadow_is_burned_and_only_served_rings_get_the_order():
    bad = {f"d{i:02d}": Behaviour(agree={"1.1.0": 0.2}) for i in range(4, 12)}  # early's devices disagree
    progress, hub, plan = run(fleet(**bad), gates=(PLAIN, SHADOW, PLAIN))
    assert progress["status"] == "rolled_back" and progress["report"]["failed_ring"] == "early"
    assert progress["report"]["served"] is True and progress["report"]["shadow_rings"] == ["early"]
    canary, early = hub.ring_desired[("detector", "canary")], hub.ring_desired[("detector", "early")]
    assert canary.version == "1.0.0" and canary.is_rollback, "the canary served 1.1.0: it goes back under a signed order"
    assert early.version == "1.0.0" and not early.is_rollback and early.shadow is None
    assert served(progress)
    d = decide("detector", plan.rings, [good(V1), progress], {r.name: hub.desired(r.target) for r in plan.rings}, V2)
    assert d.action == "refused" and d.status == "previously-rolled-back"


def test_revocation_follows_the_burn_a_version_only_ever_shadowed_stays_a_signed_target_a_served_one_leaves(tmp_path):
    """The signed targets agree with decide: a candidate rejected in the canary's shadow (devices loaded it, none served
    it) is not burned, so neither the gate driver nor `edgefleet up` revokes it and a device accepts it in the next
    attempt; one rejected after a ring served it is burned and revoked, and a device refuses it."""
    import pytest

    from components.local.signer import LocalKeySigner, create_key_file
    from components.local.trust import revoke_rejected as up_revokes
    from components.rollout.driver import revoke_rejected as gate_revokes
    from components.trust.repository import TrustRepository
    from components.trust.storage import DirectoryStorage
    from edgefleet_agent.contract.tuf import NOT_A_TARGET, MetadataRefused, TargetIdentity, manifest_digest
    from edgefleet_agent.trust import TrustedMetadata

    def ident(d):
        return TargetIdentity(d.model, d.version, d.sha256, d.size, manifest_digest(d.manifest.encode()))

    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    repo = TrustRepository(DirectoryStorage(tmp_path / "store"), online)
    root = repo.init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [ident(V1), ident(V2)])
    device = TrustedMetadata(root.to_bytes(), (tmp_path / "store" / "tuf" / "metadata").as_uri(), tmp_path / "device")

    def device_accepts(d) -> None:
        device.check(d.model, d.version, d.sha256, d.size, d.manifest.encode())

    shadowed, _, _ = run(fleet(**{f"d{i:02d}": Behaviour(agree={"1.1.0": 0.33}) for i in range(30)}))
    assert shadowed["status"] == "rolled_back" and shadowed["report"]["served"] is False
    assert not gate_revokes(repo, shadowed) and not up_revokes(repo, shadowed)
    assert repo.revoked() == {}
    device_accepts(V2)  # the next attempt of 1.1.0 can install

    bad = {f"d{i:02d}": Behaviour(agree={"1.1.0": 0.2}) for i in range(4, 12)}
    burned_run, _, _ = run(fleet(**bad), gates=(PLAIN, SHADOW, PLAIN))
    assert burned_run["report"]["served"] is True
    assert gate_revokes(repo, burned_run), "served in the canary, then rejected: revoked"
    assert [r["version"] for r in repo.revoked().values()] == ["1.1.0"]
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device_accepts(V2)
    device_accepts(V1)


def test_a_candidate_with_nan_outputs_in_shadow_fails_on_the_gates_invalid_output_bound_naming_devices():
    nan = {f"d{i:02d}": Behaviour(shadow_invalid={"1.1.0": 0.5}) for i in (1, 2)}
    progress, hub, _ = run(fleet(**nan))
    assert progress["report"]["failed_ring"] == "canary" and progress["report"]["served"] is False
    assert "shadowed candidate's invalid (NaN/Inf) outputs" in progress["report"]["reasons"][0]
    assert sorted(o["device"] for o in progress["report"]["offenders"]) == ["d01", "d02"]
    assert ever_served(hub, "1.1.0") == []


def test_a_ten_times_slower_candidate_fails_the_shadow_latency_ratio():
    slow = {f"d{i:02d}": Behaviour(p50={"1.1.0": 20.0}) for i in range(30)}
    progress, hub, _ = run(fleet(**slow))
    assert progress["report"]["failed_ring"] == "canary"
    assert "x the served model's" in progress["report"]["reasons"][0]
    assert progress["report"]["measured"]["quality"]["latency_ratio"] > 5, "10x within the histogram's bucket width"


def test_a_device_that_cannot_load_the_candidate_beside_its_model_fails_the_shadow_ring():
    progress, _, _ = run(fleet(d01=Behaviour(refuse={"1.1.0": "bad signature"})))
    assert progress["report"]["failed_ring"] == "canary" and progress["report"]["served"] is False
    assert progress["report"]["failures"] == [["d01", "bad signature"]]


def test_a_shadow_ring_without_traffic_fails_closed_at_its_deadline_naming_what_was_missing():
    quiet = {f"d{i:02d}": Behaviour(traffic=False) for i in range(30)}
    progress, _, _ = run(quiet)
    assert progress["report"]["failed_ring"] == "canary"
    why = progress["report"]["reasons"][0]
    assert "never passes on silence" in why and "shadow agreement: compared requests has 0 (needs 200)" in why


def test_a_first_rollout_skips_the_shadow_phase_and_comparisons_and_says_so():
    progress, hub, _ = run(fleet(), previous=None)
    assert progress["status"] == "succeeded"
    assert [e["ring"] for e in events(progress, "shadow-skipped")] == ["canary"]
    assert all(d is None or d.shadow is None for _, d in hub.ring_desired.items())
    early = progress["rings"][1]
    assert any("not judged: a first rollout" in r for r in early["verdict"]["reasons"])


def test_a_kill_during_the_shadow_phase_resumes_in_it():
    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    plan = RolloutPlan("detector", V2, V1, plans(sorted(hub.behaviours), (SHADOW, COMPARE, PLAIN)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    progress = engine.start(plan)
    while progress["rings"][0].get("soak_started") is None:
        if not engine.step(plan, progress):
            clock.sleep(1.0)
    assert progress["rings"][0]["phase"] == RingPhase.SHADOW
    clock.sleep(3)
    again = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    resumed = again.start(plan)
    assert resumed["rings"][0]["phase"] == "shadow" and resumed["rings"][0]["state"] == "waiting"
    assert again.run(plan)["status"] == "succeeded"
    assert [c[2] for c in hub.calls if c[0] == "set_desired" and c[1] == "canary"] == ["1.0.0", "1.1.0"], "nothing deployed twice"


# -- control comparisons ---------------------------------------------------------------------------------------------
def test_a_model_that_swaps_two_classes_fails_the_control_comparison_with_the_control_values_and_devices():
    swapped = {f"d{i:02d}": Behaviour(classes={"1.1.0": {"0": 10, "1": 10, "2": 80}}) for i in range(30)}
    progress, hub, _ = run(swapped, gates=(PLAIN, COMPARE, PLAIN))
    r = progress["report"]
    assert r["failed_ring"] == "early" and r["served"] if "served" in r else True
    why = r["reasons"][0]
    assert why.startswith("prediction shift: total variation") and "chi-square" in why and "vs control {" in why
    q = r["measured"]["quality"]
    assert q["control"]["devices"] == 18 and q["control"]["classes"] == {"0": 0.34, "1": 0.33, "2": 0.33}
    assert q["ring"]["classes"]["2"] == 0.8 and q["distribution_shift"] > 0.4 and q["chi2_p"] < 1e-10
    named = [o for o in r["offenders"] if o["metric"] == "distribution_shift"]
    assert len(named) == 8 and named[0]["classes"] == {"0": 0.1, "1": 0.1, "2": 0.8}
    assert "prediction shift 0.470 (max 0.150) classes {0: 10%, 1: 10%, 2: 80%}" in failure_summary(progress)


def test_a_drop_in_confidence_against_the_control_fails_the_ring():
    unsure = {f"d{i:02d}": Behaviour(confidence={"1.1.0": 0.55}) for i in range(30)}
    progress, _, _ = run(unsure, gates=(PLAIN, COMPARE, PLAIN))
    assert progress["report"]["failed_ring"] == "early"
    assert "below the control group's" in progress["report"]["reasons"][0]
    assert progress["report"]["measured"]["quality"]["confidence_drop"] == 0.3


def test_a_slower_model_fails_the_latency_ratio_against_the_control():
    slow = {f"d{i:02d}": Behaviour(p50={"1.1.0": 5.0}) for i in range(30)}
    progress, _, _ = run(slow, gates=(PLAIN, COMPARE, PLAIN))
    assert progress["report"]["failed_ring"] == "early"
    assert "x the control group's" in progress["report"]["reasons"][0]


def test_a_good_model_passes_every_comparison_and_the_verdict_names_the_values():
    progress, _, _ = run(fleet(), gates=(SHADOW, COMPARE, PLAIN))
    assert progress["status"] == "succeeded"
    reasons = progress["rings"][1]["verdict"]["reasons"][0]
    assert "prediction shift 0.000" in reasons and "latency ratio 1.00x" in reasons


def test_a_ring_without_a_control_group_fails_closed_instead_of_passing():
    progress, _, _ = run(fleet(), gates=(PLAIN, PLAIN, COMPARE))  # broad is last: nothing left on 1.0.0
    assert progress["report"]["failed_ring"] == "broad"
    assert "control group: the ring has none" in progress["report"]["reasons"][0]


def test_live_accuracy_below_its_bound_fails_the_ring():
    wrong = {f"d{i:02d}": Behaviour(accuracy={"1.1.0": 0.5}) for i in range(30)}
    gate = GateConfig(**HEALTH, min_live_accuracy=0.9, min_quality_samples=100)
    progress, _, _ = run(wrong, gates=(gate, PLAIN, PLAIN))
    assert progress["report"]["failed_ring"] == "canary"
    assert progress["report"]["reasons"][0].startswith("live accuracy 50.0% < min 90.0%")
    assert len(progress["report"]["offenders"]) == 4


# -- records ----------------------------------------------------------------------------------------------------------
def test_records_written_before_phases_read_as_served():
    record = {
        "rollout_id": "detector@1.1.0+x",
        "status": "rolled_back",
        "rings": [{"name": "canary", "index": 0, "state": "failed"}, {"name": "early", "index": 1, "state": "pending"}],
    }
    p = as_progress(record)
    assert "phase" not in p["rings"][0] and served(p)
