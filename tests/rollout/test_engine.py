"""The rollout engine against a scripted fleet: promotion order, gates, rollback, resume, offline devices."""

from __future__ import annotations

import pytest

from components.rollout.engine import RingPlan, RolloutEngine, RolloutPlan
from components.rollout.spec import GateConfig
from components.rollout.types import RingTarget
from tests.rollout.fakes import Behaviour, FakeClock, FakeHub, desired

V1, V2 = desired("1.0.0"), desired("1.1.0")
GATE = GateConfig(
    soak_seconds=10,
    deadline_seconds=120,
    min_reporting_share=1.0,
    success_share=1.0,
    max_failure_share=0.0,
    max_invalid_output_share=0.0,
    max_error_rate=0.01,
    max_p99_latency_ms=50,
)


def fleet(n: int = 20, **overrides: Behaviour) -> dict[str, Behaviour]:
    devices = {f"d{i:02d}": Behaviour() for i in range(n)}
    devices.update(overrides)
    return devices


def rings(devices: list[str], sizes=(2, 6), gate: GateConfig = GATE) -> tuple[RingPlan, ...]:
    cuts = [0, *sizes, len(devices)]
    names = ["canary", "early", "broad"]
    return tuple(RingPlan(RingTarget("detector", names[i], i, tuple(devices[cuts[i] : cuts[i + 1]])), gate) for i in range(3))


def unsigned_rollback(previous, failed, reason):
    from dataclasses import replace

    return replace(previous, rollback_order=f'{{"version": "{previous.version}"}}', rollback_signature="test-signature")


def run(behaviours, gate=GATE, previous=V1, new=V2, poll=1.0):
    clock = FakeClock()
    hub = FakeHub(clock, behaviours, running=previous)
    plan = RolloutPlan("detector", new, previous, rings(sorted(behaviours), gate=gate))
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=poll).run(plan)
    return progress, hub, plan


def events(progress, name=None):
    return [e for e in progress["events"] if name is None or e["event"] == name]


def started(devices=None):
    """A 1.0.0 -> 1.1.0 rollout over `devices` (the default fleet), just started: clock, hub, plan, engine, progress."""
    clock = FakeClock()
    hub = FakeHub(clock, devices or fleet(), running=V1)
    plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    return clock, hub, plan, engine, engine.start(plan)


def test_good_rollout_promotes_ring_by_ring_and_every_device_ends_on_the_new_version():
    progress, hub, plan = run(fleet())
    assert progress["status"] == "succeeded"
    sets = [c for c in hub.calls if c[0] == "set_desired"]
    assert [(c[1], c[2]) for c in sets] == [("canary", "1.1.0"), ("early", "1.1.0"), ("broad", "1.1.0")]
    passed = {e["ring"]: e["t"] for e in events(progress, "gate-passed")}
    assert sets[1][4] >= passed["canary"] and sets[2][4] >= passed["early"], "a ring was deployed before the previous gate passed"
    assert all(hub.running(d)[0].version == "1.1.0" for d in hub.behaviours)


def test_each_ring_soaks_for_the_full_soak_time_after_adoption():
    progress, _, _ = run(fleet())
    for ring in progress["rings"]:
        assert ring["state"] == "passed"
        assert ring["finished_at"] - ring["soak_started"] >= GATE.soak_seconds
        assert ring["soak_started"] >= ring["deployed_at"] + 1.0, "soak started before devices adopted"


@pytest.mark.parametrize(
    "behaviour, expected_reason",
    [
        (Behaviour(refuse={"1.1.0": "signature does not verify"}), "failure share"),
        (Behaviour(invalid={"1.1.0": 1.0}), "invalid (NaN/Inf) outputs"),
        (Behaviour(errors={"1.1.0": 0.5}), "error rate"),
        (Behaviour(p99={"1.1.0": 400.0}), "p99 latency"),
    ],
)
def test_a_bad_canary_fails_its_gate_rolls_back_and_later_rings_never_see_the_version(behaviour, expected_reason):
    devices = fleet()
    canary_device = sorted(devices)[0]
    devices[canary_device] = behaviour
    progress, hub, _ = run(devices)
    assert progress["status"] == "rolled_back"
    report = progress["report"]
    assert report["failed_ring"] == "canary"
    assert any(expected_reason in r for r in report["reasons"]), report["reasons"]
    assert report["never_deployed"] == ["early", "broad"]
    assert report["rolled_back_to"] == "1.0.0"
    new_version_sets = [c for c in hub.calls if c[0] == "set_desired" and c[2] == "1.1.0"]
    assert [c[1] for c in new_version_sets] == ["canary"]
    rollback_sets = [c for c in hub.calls if c[0] == "set_desired" and c[2] == "1.0.0"]
    assert [(c[1], c[3]) for c in rollback_sets] == [("canary", True)], "rollback must carry a rollback order"
    late = sorted(hub.behaviours)[2:]
    assert all(hub.running(d)[0].version == "1.0.0" for d in late)
    assert all(hub.running(d)[0].version == "1.0.0" for d in sorted(hub.behaviours)[:2]), "canary not restored"


def test_failure_in_a_later_ring_rolls_back_every_ring_it_touched():
    devices = fleet()
    early_device = sorted(devices)[4]
    devices[early_device] = Behaviour(invalid={"1.1.0": 0.2})
    progress, hub, _ = run(devices)
    assert progress["report"]["failed_ring"] == "early"
    assert progress["report"]["rolled_back_rings"] == ["canary", "early"]
    assert progress["report"]["never_deployed"] == ["broad"]
    assert all(hub.running(d)[0].version == "1.0.0" for d in hub.behaviours)


def test_a_failure_fails_the_gate_at_once_without_waiting_for_the_soak():
    devices = fleet()
    devices[sorted(devices)[0]] = Behaviour(refuse={"1.1.0": "sha256 mismatch"})
    progress, _, _ = run(devices)
    canary = progress["rings"][0]
    assert canary["state"] == "failed"
    assert canary["finished_at"] - canary["deployed_at"] < GATE.soak_seconds
    assert progress["report"]["failures"] == [[sorted(devices)[0], "sha256 mismatch"]]


def test_offline_devices_are_pending_not_failures_and_catch_up_when_they_reconnect():
    devices = fleet()
    offline = sorted(devices)[1]
    devices[offline] = Behaviour(online_at=1000.0 + 30)  # reconnects 30 s after the rollout starts
    progress, hub, _ = run(devices)
    assert progress["status"] == "succeeded"
    canary = progress["rings"][0]
    assert canary["soak_started"] >= 1030, "the canary cannot meet 100% adoption before the offline device is back"
    waits = [e for e in progress["events"] if e["event"] == "gate-failed"]
    assert waits == []
    assert hub.running(offline)[0].version == "1.1.0"


def test_a_device_that_never_reconnects_fails_the_ring_at_its_deadline_as_pending_not_failed():
    devices = fleet()
    devices[sorted(devices)[0]] = Behaviour(online_at=1e12)
    progress, _, _ = run(devices, gate=GATE.model_copy(update={"deadline_seconds": 40}))
    assert progress["status"] == "rolled_back"
    reasons = " ".join(progress["report"]["reasons"])
    assert "deadline 40s passed" in reasons and "1/2 adopted" in reasons
    assert progress["report"]["failures"] == []
    assert progress["report"]["measured"]["pending"] == 1


def test_partial_success_share_lets_a_ring_pass_with_stragglers():
    devices = fleet()
    devices[sorted(devices)[10]] = Behaviour(online_at=1e12)
    gate = GATE.model_copy(update={"success_share": 0.9, "min_reporting_share": 0.9})
    progress, _, _ = run(devices, gate=gate)
    assert progress["status"] == "succeeded"
    assert progress["rings"][2]["measured"]["pending"] == 1


def test_adoption_dropping_during_the_soak_restarts_the_soak():
    devices = fleet()
    d = sorted(devices)[0]
    # adopts 1.1.0, then drops offline mid-soak and comes back: the soak must start over
    devices[d] = Behaviour()
    clock = FakeClock()
    hub = FakeHub(clock, devices, running=V1)
    plan = RolloutPlan("detector", V2, V1, rings(sorted(devices)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    progress = engine.start(plan)
    while progress["rings"][0]["state"] != "soaking":
        engine.step(plan, progress) or clock.sleep(1.0)
    devices[d].online_at = clock.now() + 1e12  # goes dark mid-soak (reports go stale)
    hub.report = _stale_for(hub, d)
    for _ in range(5):
        engine.step(plan, progress) or clock.sleep(1.0)
    assert progress["rings"][0]["state"] == "waiting"
    assert any(e["event"] == "soak-reset" for e in progress["events"])


def _stale_for(hub, dev):
    original = hub.report

    def report(d):
        return None if d == dev else original(d)

    return report


def test_first_rollout_with_no_previous_version_rolls_back_to_no_model():
    devices = fleet()
    devices[sorted(devices)[0]] = Behaviour(invalid={"1.1.0": 1.0})
    progress, hub, _ = run(devices, previous=None)
    assert progress["status"] == "rolled_back"
    assert progress["report"]["rolled_back_to"] is None
    assert all(hub.running(d)[0] is None for d in sorted(devices)[:2])


def test_running_a_finished_rollout_again_is_a_no_op():
    progress, hub, plan = run(fleet())
    calls = len(hub.calls)
    again = RolloutEngine(hub, hub.clock, unsigned_rollback).run(plan)
    assert again["status"] == "succeeded"
    assert len(hub.calls) == calls


class Crash(Exception):
    pass


class CrashingHub:
    """Dies on the n-th mutating call, before or after performing it (a kill at that instant)."""

    def __init__(self, hub: FakeHub, crash_at: int, after: bool) -> None:
        self.hub, self.crash_at, self.after, self.count = hub, crash_at, after, 0

    def __getattr__(self, name):
        return getattr(self.hub, name)

    def _mutate(self, fn, *args):
        self.count += 1
        if self.count == self.crash_at and not self.after:
            raise Crash()
        fn(*args)
        if self.count == self.crash_at and self.after:
            raise Crash()

    def set_desired(self, target, d):
        self._mutate(self.hub.set_desired, target, d)

    def save_progress(self, rid, p):
        self._mutate(self.hub.save_progress, rid, p)


def _mutations(behaviours) -> int:
    _, hub, _ = run(behaviours)
    return len(hub.calls)


@pytest.mark.parametrize("bad", [False, True], ids=["good-rollout", "bad-canary"])
@pytest.mark.parametrize("after", [False, True], ids=["killed-before-write", "killed-after-write"])
def test_killed_at_every_step_the_engine_resumes_without_skipping_a_gate_or_deploying_twice(bad, after):
    def behaviours():
        devices = fleet()
        if bad:
            devices[sorted(devices)[0]] = Behaviour(invalid={"1.1.0": 1.0})
        return devices

    reference, _, _ = run(behaviours())
    total = _mutations(behaviours())
    for crash_at in range(1, total + 1):
        clock = FakeClock()
        hub = FakeHub(clock, behaviours(), running=V1)
        plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours)))
        try:
            RolloutEngine(CrashingHub(hub, crash_at, after), clock, unsigned_rollback, poll_seconds=1.0).run(plan)
        except Crash:
            pass
        clock.sleep(3.0)  # the process is down for a while
        final = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
        where = f"killed at mutation {crash_at} ({'after' if after else 'before'} it)"
        assert final["status"] == reference["status"], where
        sets = [(c[1], c[2], c[3]) for c in hub.calls if c[0] == "set_desired"]
        assert len(sets) == len(set(sets)), f"{where}: a ring was deployed twice: {sets}"
        assert ("early", "1.1.0", False) not in sets or not bad, f"{where}: a later ring saw the bad version"
        for ring in final["rings"]:
            if ring["state"] == "passed":
                assert ring["finished_at"] - ring["soak_started"] >= GATE.soak_seconds, f"{where}: soak cut short"
        assert all(hub.running(d)[0].version == ("1.0.0" if bad else "1.1.0") for d in hub.behaviours), where


# -- a ring appended after success ------------------------------------------------------------------------
def test_a_ring_appended_after_success_reopens_the_rollout_and_deploys_only_the_new_ring():
    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    three = rings(sorted(hub.behaviours))
    two = RolloutPlan("detector", V2, V1, three[:2])
    first = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(two)
    assert first["status"] == "succeeded" and len(first["rings"]) == 2
    before = {r["name"]: (r["deployed_at"], r["finished_at"]) for r in first["rings"]}
    calls = len(hub.calls)
    clock.sleep(60.0)
    plan = RolloutPlan("detector", V2, V1, three)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan, until_ring=None)
    assert progress["status"] == "succeeded"
    assert [r["state"] for r in progress["rings"]] == ["passed", "passed", "passed"]
    assert {r["name"]: (r["deployed_at"], r["finished_at"]) for r in progress["rings"][:2]} == before, "a passed ring was redone"
    assert [(c[1], c[2]) for c in hub.calls[calls:] if c[0] == "set_desired"] == [("broad", "1.1.0")]
    reopened = events(progress, "reopened")
    assert len(reopened) == 1 and reopened[0]["rings"] == ["broad"] and reopened[0]["passed"] == ["canary", "early"]
    broad = progress["rings"][2]
    assert broad["finished_at"] - broad["soak_started"] >= GATE.soak_seconds
    assert all(hub.running(d)[0].version == "1.1.0" for d in hub.behaviours)


def test_a_rolled_back_rollout_stays_final_when_a_ring_is_appended():
    devices = fleet()
    devices[sorted(devices)[0]] = Behaviour(invalid={"1.1.0": 1.0})
    clock = FakeClock()
    hub = FakeHub(clock, devices, running=V1)
    three = rings(sorted(devices))
    first = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(RolloutPlan("detector", V2, V1, three[:2]))
    assert first["status"] == "rolled_back"
    calls = len(hub.calls)
    again = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(RolloutPlan("detector", V2, V1, three))
    assert again["status"] == "rolled_back" and len(again["rings"]) == 2
    assert len(hub.calls) == calls


# -- the soak counts only watched time ----------------------------------------------------------------------
def _until_soaking(engine, plan, progress, clock):
    while progress["rings"][0]["state"] != "soaking":
        engine.step(plan, progress) or clock.sleep(1.0)


def test_a_long_kill_mid_soak_restarts_the_soak_instead_of_passing_on_the_first_look():
    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    _until_soaking(engine, plan, engine.start(plan), clock)  # killed right after soak-started was saved
    clock.sleep(1000.0)
    resumed_at = clock.now()
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    assert progress["status"] == "succeeded", "the downtime must not count against the deadline either"
    canary = progress["rings"][0]
    assert canary["finished_at"] >= resumed_at + GATE.soak_seconds, "passed without watching a full soak"
    assert canary["soak_started"] >= resumed_at
    reset = [e for e in events(progress, "soak-reset") if e["ring"] == "canary"]
    assert len(reset) == 1 and "the controller restarted mid-soak" in reset[0]["reasons"][0]
    gap = [e for e in events(progress, "observation-gap") if e["ring"] == "canary"]
    assert len(gap) == 1 and gap[0]["unobserved"] >= 1000 and "not observed for 1000" in gap[0]["reasons"][0]


def test_a_long_kill_while_waiting_for_adoption_moves_the_deadline_out_instead_of_failing():
    clock, hub, plan, engine, progress = started()
    while progress["rings"][0]["state"] != "waiting":
        engine.step(plan, progress)
    clock.sleep(500.0)  # deadline is 120 s
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    assert progress["status"] == "succeeded"
    assert [e["ring"] for e in events(progress, "observation-gap")] == ["canary"]


def test_a_controller_restarted_mid_soak_starts_the_soak_over_however_short_the_kill():
    """The local fleet stops with `edgefleet up`: a soak resumed from its saved start would pass on reports from
    before the kill, having watched nothing (it did, 9.4 s into an 8 s soak, before this)."""
    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    _until_soaking(engine, plan, engine.start(plan), clock)
    started = hub.load_progress(plan.rollout_id)["rings"][0]["soak_started"]
    clock.sleep(3.0)
    resumed_at = clock.now()
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    assert progress["status"] == "succeeded"
    assert progress["rings"][0]["soak_started"] >= resumed_at > started
    assert [e["ring"] for e in events(progress, "soak-reset")] == [plan.rings[0].name]


def test_changing_the_rings_of_a_rollout_in_flight_is_an_error_with_the_fix():
    from components.rollout.engine import RingsChanged, rings_changed

    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours)))
    engine = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0)
    _until_soaking(engine, plan, engine.start(plan), clock)
    reordered = RolloutPlan("detector", V2, V1, (plan.rings[1], plan.rings[0], *plan.rings[2:]))
    with pytest.raises(RingsChanged) as err:
        RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).start(reordered)
    assert "cannot be removed, renamed or reordered while a rollout is in flight" in err.value.problem
    assert err.value.fix.startswith(f"restore the rings {[r.name for r in plan.rings]}")
    # a Pulumi gate resource plans the rings up to its own: a prefix is not a removal there, but is for a whole plan
    prefix = RolloutPlan("detector", V2, V1, plan.rings[:1])
    assert RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).start(prefix)["status"] == "running"
    progress = hub.load_progress(plan.rollout_id)
    assert rings_changed(progress, prefix, whole=False) is None
    assert "cannot be removed" in rings_changed(progress, prefix).problem


def test_a_slow_platform_query_is_watched_time_and_does_not_reset_the_soak():
    """Azure's observe can wait minutes for IoT Hub metrics: time spent inside it is observation, not a gap."""
    clock = FakeClock()
    hub = FakeHub(clock, fleet(), running=V1)
    fast = hub.observe

    def slow(target, d, since):
        obs = fast(target, d, since)
        clock.sleep(60.0)
        return obs

    hub.observe = slow
    plan = RolloutPlan("detector", V2, V1, rings(sorted(hub.behaviours), gate=GATE.model_copy(update={"deadline_seconds": 1000})))
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    assert progress["status"] == "succeeded"
    assert events(progress, "soak-reset") == [] and events(progress, "observation-gap") == []


# -- the failure report names devices and values ----------------------------------------------------------
@pytest.mark.parametrize(
    "behaviour, metric, value, bound, text",
    [
        (Behaviour(invalid={"1.1.0": 1.0}), "invalid_output_share", 1.0, 0.0, "NaN/Inf outputs 100.00% (max 0.00%)"),
        (Behaviour(errors={"1.1.0": 0.5}), "error_rate", 0.5, 0.01, "error rate 50.00% (max 1.00%)"),
        (Behaviour(p99={"1.1.0": 400.0}), "p99_latency_ms", 400.0, 50.0, "p99 latency 400.00 ms (max 50.00 ms)"),
    ],
)
def test_a_metric_gate_failure_names_the_offending_devices_with_their_values(behaviour, metric, value, bound, text):
    from components.rollout.report import failure_summary

    devices = fleet()
    bad = sorted(devices)[1]
    devices[bad] = behaviour
    progress, _, _ = run(devices)
    expected = [{"device": bad, "metric": metric, "value": value, "max": bound}]
    assert progress["report"]["offenders"] == expected, "healthy devices are not offenders; the bad one is"
    assert progress["rings"][0]["verdict"]["offenders"] == expected
    assert f"Offending devices: {bad} {text}" in failure_summary(progress)


def test_failure_summary_keeps_old_records_and_long_lists_readable():
    from components.rollout.report import failure_summary

    old = {"rollout_id": "r@1", "status": "rolled_back", "report": {"failed_ring": "canary", "reasons": ["x"], "failures": []}}
    assert "Offending" not in failure_summary(old)
    many = [{"device": f"d{i}", "metric": "error_rate", "value": 0.5, "max": 0.01} for i in range(20)]
    text = failure_summary({**old, "report": {**old["report"], "offenders": many}})
    assert "d4 error rate" in text and "d5 " not in text and "(+15 more in the report)" in text


# -- the timeline sees what the gate saw ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [False, True], ids=["passes", "fails"])
def test_a_sample_is_recorded_at_every_gate_verdict(bad):
    devices = fleet()
    if bad:
        devices[sorted(devices)[0]] = Behaviour(invalid={"1.1.0": 1.0})
    progress, _, _ = run(devices, poll=0.2)
    decided = [r for r in progress["rings"] if r["verdict"]]
    assert decided
    for ring in decided:
        at = [s for s in progress["samples"] if s["ring"] == ring["name"] and s["t"] == ring["finished_at"]]
        assert len(at) == 1, f"no sample at the {ring['name']} verdict"
        assert at[0]["adopted"] == ring["verdict"]["measured"]["adopted"] > 0


def test_a_gate_resource_reports_only_a_ring_the_engine_passed():
    """A ring inserted in the middle of a finished rollout is not in its record: a gate must fail, not borrow
    another ring's pass (the AWS, Azure and local gate providers all answer through `passed_ring`)."""
    from components.rollout.engine import passed_ring

    progress = {
        "rollout_id": "detector@1.1.0+abc",
        "status": "succeeded",
        "rings": [
            {"name": "canary", "state": "passed", "measured": {"adopted": 5}},
            {"name": "broad", "state": "passed", "measured": {"adopted": 50}},
        ],
    }
    assert passed_ring(progress, "broad")["measured"] == {"adopted": 50}
    with pytest.raises(RuntimeError, match=r"did not pass ring 'early'.*declare a new model version"):
        passed_ring(progress, "early")
    progress["rings"][1]["state"] = "failed"
    with pytest.raises(RuntimeError, match="did not pass ring 'broad'"):
        passed_ring(progress, "broad")


def test_a_long_kill_during_a_rollback_moves_its_deadline_instead_of_timing_it_out():
    devices = fleet()
    devices[sorted(devices)[0]] = Behaviour(invalid={"1.1.0": 1.0})
    clock, hub, plan, engine, progress = started(devices)
    while progress["status"] != "rolling_back" or len(progress["rollback"]["set"]) < len(progress["rollback"]["rings"]):
        engine.step(plan, progress) or clock.sleep(1.0)
    clock.sleep(GATE.deadline_seconds * 5)  # killed with the rollback set, resumed much later
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).run(plan)
    assert progress["status"] == "rolled_back", progress["events"][-3:]
    gap = [e for e in events(progress, "observation-gap") if e["ring"] is None]
    assert len(gap) == 1 and gap[0]["unobserved"] >= GATE.deadline_seconds * 5


def test_an_operator_abort_rolls_every_touched_ring_back_under_a_signed_order():
    from edgefleet_agent.contract.errors import EdgefleetError

    clock, hub, plan, engine, progress = started()
    while progress["rings"][1]["state"] != "soaking":  # canary passed, early soaking: then the process dies
        engine.step(plan, progress) or clock.sleep(1.0)
    progress = RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).abort(plan, "found a bug in 1.1.0")
    assert progress["status"] == "rolled_back"
    report = progress["report"]
    assert (report["failed_ring"], report["rolled_back_rings"], report["never_deployed"]) == ("early", ["canary", "early"], ["broad"])
    assert report["reasons"] == ["aborted by the operator: found a bug in 1.1.0"]
    assert all(hub.running(d)[0].version == "1.0.0" for d in hub.behaviours)
    rollback_sets = [c for c in hub.calls if c[0] == "set_desired" and c[2] == "1.0.0"]
    assert sorted((c[1], c[3]) for c in rollback_sets) == [("canary", True), ("early", True)]
    with pytest.raises(EdgefleetError, match="is rolled_back: there is nothing in flight to abort"):
        RolloutEngine(hub, clock, unsigned_rollback, poll_seconds=1.0).abort(plan, "again")
