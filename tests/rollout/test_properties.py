"""Property tests for the pure parts of the plan: ring membership and gate verdicts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.gate import evaluate
from components.rollout.membership import Device, ring_members
from components.rollout.spec import DeviceGroupConfig, GateConfig, RingConfig
from components.rollout.types import RingObservation
from edgefleet_agent.contract.manifest import HardwareProfile

HW = HardwareProfile(name="cam", arch="amd64", execution_providers=["CPUExecutionProvider"], memory_mb=512, storage_mb=512)
GROUPS = {"cams": DeviceGroupConfig(name="cams", hardware=HW, labels={"site": "a"})}

device_ids = st.lists(st.from_regex(r"[a-z]{2,6}-[0-9]{1,4}", fullmatch=True), min_size=0, max_size=200, unique=True)
percents = st.lists(st.floats(min_value=0.5, max_value=100), min_size=1, max_size=4, unique=True).map(sorted)


def rings_for(ps: list[float]) -> list[RingConfig]:
    return [RingConfig(name=f"r{i}", group="cams", percent=p) for i, p in enumerate(ps)]


def fleet(ids: list[str], other: int = 0) -> list[Device]:
    return [Device(i, {"site": "a"}) for i in ids] + [Device(f"elsewhere-{i}", {"site": "b"}) for i in range(other)]


@settings(max_examples=200, deadline=None)
@given(device_ids, percents)
def test_rings_are_disjoint_cover_their_cumulative_share_and_only_hold_group_members(ids, ps):
    members = ring_members("detector", rings_for(ps), GROUPS, fleet(ids, other=5))
    flat = [d for ring in members.values() for d in ring]
    assert len(flat) == len(set(flat)), "a device is in two rings"
    assert set(flat) <= set(ids), "a device outside the group was selected"
    import math

    total = 0
    for p, ring in zip(ps, members.values(), strict=True):
        total += len(ring)
        assert total == math.ceil(len(ids) * p / 100)
    if ps[-1] == 100:
        assert set(flat) == set(ids)


@settings(max_examples=100, deadline=None)
@given(device_ids, percents, st.permutations(range(10)))
def test_membership_is_deterministic_and_independent_of_registry_order(ids, ps, perm):
    a = ring_members("detector", rings_for(ps), GROUPS, fleet(ids))
    shuffled = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (perm[i % 10], i))]
    assert ring_members("detector", rings_for(ps), GROUPS, fleet(shuffled)) == a


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z]{2,6}-[0-9]{1,4}", fullmatch=True), min_size=20, max_size=120, unique=True),
    st.lists(st.from_regex(r"new-[0-9]{1,4}", fullmatch=True), max_size=20, unique=True),
)
def test_adding_devices_keeps_the_order_of_existing_devices(ids, new):
    """New devices can move a percent cut-off, but never reorder the fleet: the existing devices in the first
    k rings are always a prefix of the existing devices' order, so nobody leapfrogs anybody."""
    from components.rollout.membership import rank

    rings = rings_for([5, 30, 100])
    after = ring_members("detector", rings, GROUPS, fleet(ids + new))
    old_order = sorted(ids, key=lambda d: rank("detector", d))
    reached: set[str] = set()
    for ring in rings:
        reached |= set(after[ring.name]) & set(ids)
        assert reached == set(old_order[: len(reached)])


observations = st.builds(
    lambda n, a, f, rep, inf, err, inv, p99: RingObservation(
        devices=n,
        adopted=min(a, n),
        failed=min(f, n - min(a, n)),
        reporting=min(n, max(rep, min(a, n) + min(f, n - min(a, n)))),
        inferences=inf,
        errors=min(err, inf),
        invalid_outputs=min(inv, inf),
        p99_latency_ms=p99,
    ),
    st.integers(1, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.one_of(st.none(), st.floats(0, 500)),
)


def gate_configs(**more: st.SearchStrategy) -> st.SearchStrategy[GateConfig]:
    """Health gates over their whole range (`more`: strategies for further fields)."""
    return st.builds(
        GateConfig,
        soak_seconds=st.floats(0, 100),
        deadline_seconds=st.just(1000.0),
        success_share=st.floats(0.01, 1),
        max_failure_share=st.floats(0, 1),
        max_error_rate=st.one_of(st.none(), st.floats(0, 1)),
        max_invalid_output_share=st.one_of(st.none(), st.floats(0, 1)),
        max_p99_latency_ms=st.one_of(st.none(), st.floats(1, 500)),
        **more,
    )


gates = gate_configs()


@settings(max_examples=300, deadline=None)
@given(gates, observations, st.integers(0, 50))
def test_more_failed_devices_never_turn_a_failing_gate_into_a_passing_one(gate, obs, extra):
    worse = RingObservation(**{**obs.__dict__, "failed": min(obs.devices - obs.adopted, obs.failed + extra)})
    v = evaluate(gate, obs, since_deploy=0, soak_started=0, now=500)
    w = evaluate(gate, worse, since_deploy=0, soak_started=0, now=500)
    if v.outcome == "fail":
        assert w.outcome == "fail"


@settings(max_examples=300, deadline=None)
@given(gates, observations, st.floats(0, 2000))
def test_no_gate_passes_before_its_soak_or_with_adoption_below_the_bar(gate, obs, now):
    v = evaluate(gate, obs, since_deploy=0, soak_started=0, now=now)
    if v.outcome == "pass":
        assert now >= gate.soak_seconds
        assert obs.adopted / obs.devices >= gate.success_share
        assert obs.failed / obs.devices <= gate.max_failure_share
        assert obs.inferences >= gate.min_inferences


def test_a_soaked_ring_that_served_nothing_waits_for_evidence_then_fails_at_its_deadline():
    """A NaN model passes every metric threshold while no inference has been reported: silence is not health."""
    gate = GateConfig(soak_seconds=0, deadline_seconds=60, max_invalid_output_share=0.0)
    silent = RingObservation(devices=5, adopted=5, failed=0, reporting=5, inferences=0)
    waiting = evaluate(gate, silent, since_deploy=0, soak_started=0, now=10)
    assert waiting.outcome == "soak" and "waiting for 1 inferences" in waiting.reasons[0]
    served = evaluate(gate, RingObservation(**{**silent.__dict__, "inferences": 40}), since_deploy=0, soak_started=0, now=10)
    assert served.outcome == "pass"
    late = evaluate(gate, silent, since_deploy=0, soak_started=0, now=61)
    assert late.outcome == "fail" and "its health metrics were never measured" in late.reasons[0]


# -- control holdback -------------------------------------------------------------------------------------------------
holdbacks = st.floats(min_value=0.0, max_value=0.49)


@settings(max_examples=200, deadline=None)
@given(device_ids, percents, holdbacks)
def test_the_control_holdback_is_the_tail_of_the_order_in_no_ring_and_the_rest_of_the_group(ids, ps, h):
    import math

    from components.rollout.membership import control_members, rank

    rings = rings_for(ps)
    members = ring_members("detector", rings, GROUPS, fleet(ids, other=5), holdback=h)
    control = control_members("detector", rings, GROUPS, fleet(ids, other=5), h)
    flat = [d for ring in members.values() for d in ring]
    assert not set(flat) & set(control), "a control device is in a ring"
    assert len(control) == math.floor(len(ids) * h + 1e-9)
    order = sorted(ids, key=lambda d: rank("detector", d))
    assert set(control) == set(order[len(order) - len(control) :]), "the holdback is the end of the rollout's order"
    if ps[-1] == 100:
        assert set(flat) | set(control) == set(ids)


@settings(max_examples=200, deadline=None)
@given(device_ids, percents, holdbacks)
def test_a_holdback_moves_no_device_of_a_ring_that_ends_before_it(ids, ps, h):
    without = ring_members("detector", rings_for(ps), GROUPS, fleet(ids))
    held = ring_members("detector", rings_for(ps), GROUPS, fleet(ids), holdback=h)
    reach = 0.0
    for p, name in zip(ps, without, strict=True):
        reach = p
        if reach <= 100 * (1 - h) - 1e-9:
            assert held[name] == without[name]
    assert ring_members("detector", rings_for(ps), GROUPS, fleet(ids), holdback=0.0) == without


# -- quality gates ------------------------------------------------------------------------------------------------------
def test_a_quality_gate_with_no_telemetry_waits_then_fails_closed_at_its_deadline():
    from components.rollout.quality import QualityContext, Summary

    gate = GateConfig(soak_seconds=0, deadline_seconds=60, max_distribution_shift=0.1)
    quiet = RingObservation(devices=5, adopted=5, failed=0, reporting=5, inferences=40)
    ctx = QualityContext(control=Summary(devices=20, predictions=4000, classes={"0": 2000, "1": 2000}))
    waiting = evaluate(gate, quiet, since_deploy=0, soak_started=0, now=10, ctx=ctx)
    assert waiting.outcome == "soak" and "waiting for quality samples" in waiting.reasons[0]
    late = evaluate(gate, quiet, since_deploy=0, soak_started=0, now=61, ctx=ctx)
    assert late.outcome == "fail" and "never passes on silence" in late.reasons[0]
    assert "the ring's predictions has 0 (needs 200)" in late.reasons[0]


summaries = st.builds(
    lambda n, a, b: __import__("components.rollout.quality", fromlist=["Summary"]).Summary(
        devices=5, predictions=n, classes={"0": a * n // max(a + b, 1), "1": n - a * n // max(a + b, 1)}
    ),
    st.integers(0, 3000),
    st.integers(0, 10),
    st.integers(0, 10),
)


@settings(max_examples=300, deadline=None)
@given(summaries, summaries, st.floats(0, 1))
def test_a_prediction_shift_fails_only_when_large_significant_and_sampled_on_both_sides(ring, control, bound):
    from components.rollout.quality import ALPHA, QualityContext, aligned, chi2_homogeneity, total_variation

    gate = GateConfig(soak_seconds=0, deadline_seconds=60, max_distribution_shift=bound)
    obs = RingObservation(devices=5, adopted=5, failed=0, reporting=5, inferences=40, summary=ring)
    v = evaluate(gate, obs, since_deploy=0, soak_started=0, now=10, ctx=QualityContext(control=control))
    a, b = aligned(ring.class_counts(), control.class_counts())
    significant = total_variation(a, b) > bound and chi2_homogeneity(a, b)[2] < ALPHA
    sampled = ring.predictions >= gate.min_quality_samples and control.predictions >= gate.min_quality_samples
    assert (v.outcome == "fail") == (sampled and significant)
    if v.outcome == "pass":
        assert sampled
