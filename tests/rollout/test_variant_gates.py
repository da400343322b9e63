"""A ring whose devices run different builds of one version (fp32, int8, fp16) is judged per build: a bad int8 build
cannot hide behind good fp32 devices, neither in the health figures nor in the comparison with the control group."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.gate import evaluate, for_variant
from components.rollout.observe import ObserveMemo, control_summaries, is_on, observe_reports
from components.rollout.quality import QualityContext, Summary
from components.rollout.spec import GateConfig
from components.rollout.types import RingObservation
from tests.rollout.test_observe_memo import DEVICES, V2, one_report, report
from tests.rollout.test_properties import gate_configs

KINDS = ("fp16", "fp32", "int8")


def group(n: int, a: int, inf: int, err: int, inv: int, p99: float | None) -> RingObservation:
    adopted = min(a, n)
    return RingObservation(
        devices=n,
        adopted=adopted,
        failed=n - adopted,
        reporting=n,
        inferences=inf,
        errors=min(err, inf),
        invalid_outputs=min(inv, inf),
        p99_latency_ms=p99,
    )


groups = st.builds(
    group,
    st.integers(1, 20),
    st.integers(0, 20),
    st.integers(0, 1000),
    st.integers(0, 300),
    st.integers(0, 300),
    st.one_of(st.none(), st.floats(0, 500)),
)


def ring_of(parts: list[RingObservation], pending: int) -> RingObservation:
    p99s = [g.p99_latency_ms for g in parts if g.p99_latency_ms is not None]
    return RingObservation(
        devices=sum(g.devices for g in parts) + pending,
        adopted=sum(g.adopted for g in parts),
        failed=sum(g.failed for g in parts),
        reporting=sum(g.reporting for g in parts),
        inferences=sum(g.inferences for g in parts),
        errors=sum(g.errors for g in parts),
        invalid_outputs=sum(g.invalid_outputs for g in parts),
        p99_latency_ms=max(p99s) if p99s else None,
        variants=tuple(zip(KINDS, parts, strict=False)),
    )


gates = gate_configs(min_inferences=st.integers(0, 50))


@settings(max_examples=400, deadline=None)
@given(gates, st.lists(groups, min_size=2, max_size=3), st.integers(0, 10), st.floats(0, 2000))
def test_a_ring_passes_only_if_every_build_passes_and_fails_naming_the_build_that_fails(gate, parts, pending, now):
    ring = ring_of(parts, pending)
    v = evaluate(gate, ring, since_deploy=0, soak_started=0, now=now)
    alone = {kind: evaluate(gate, g, since_deploy=0, soak_started=0, now=now) for kind, g in ring.variants}
    whole = evaluate(gate, replace(ring, variants=()), since_deploy=0, soak_started=0, now=now)
    for kind, w in alone.items():
        if w.outcome == "fail":
            assert v.outcome == "fail"
            assert any(r.startswith(f"variant {kind} (") for r in v.reasons), v.reasons
    if whole.outcome == "fail":
        assert v.outcome == "fail", "judging per build never lets through what the whole ring fails"
    if v.outcome == "pass":
        assert whole.outcome == "pass" and all(w.outcome == "pass" for w in alone.values())
        assert set(v.measured["variants"]) == set(alone)
    if v.outcome == "fail" and whole.outcome != "fail":
        assert any(w.outcome == "fail" for w in alone.values())


@settings(max_examples=200, deadline=None)
@given(gates, groups, st.floats(0, 2000))
def test_a_ring_of_one_build_is_judged_as_before(gate, g, now):
    one = replace(g, variants=(("fp32", g),))
    assert evaluate(gate, one, 0, 0, now) == evaluate(gate, g, 0, 0, now)


def shifted(n: int, share_of_zero: float) -> Summary:
    zeros = int(n * share_of_zero)
    return Summary(devices=4, predictions=n, classes={"0": zeros, "1": n - zeros})


def test_a_bad_int8_build_fails_the_ring_by_name_though_the_whole_ring_looks_fine():
    """8 fp32 devices answer like their control; 2 int8 devices answer class 0 whatever they are asked. Summed over the
    ring the shift stays under the bound; the int8 devices compared with the int8 control fail it, with its value."""
    gate = GateConfig(soak_seconds=0, deadline_seconds=600, max_distribution_shift=0.2, min_quality_samples=200)
    fp32 = RingObservation(devices=8, adopted=8, failed=0, reporting=8, inferences=4000, summary=shifted(4000, 0.5))
    int8 = RingObservation(devices=2, adopted=2, failed=0, reporting=2, inferences=1000, summary=shifted(1000, 1.0))
    ring = RingObservation(
        devices=10,
        adopted=10,
        failed=0,
        reporting=10,
        inferences=5000,
        summary=shifted(5000, 0.6),
        variants=(("fp32", fp32), ("int8", int8)),
    )
    control = shifted(3000, 0.5)
    ctx = QualityContext(control=control, variant_controls=(("fp32", shifted(2400, 0.5)), ("int8", shifted(600, 0.5))))
    assert evaluate(gate, replace(ring, variants=()), 0, 0, 10, ctx).outcome == "pass", "the mix hides the bad build"
    v = evaluate(gate, ring, 0, 0, 10, ctx)
    assert v.outcome == "fail"
    assert v.reasons and all(r.startswith("variant int8 (2 devices): ") for r in v.reasons), v.reasons
    assert "prediction shift: total variation 0.500" in v.reasons[0]
    assert v.measured["variants"]["int8"]["quality"]["distribution_shift"] == 0.5
    assert v.measured["variants"]["fp32"]["quality"]["distribution_shift"] == 0.0
    assert for_variant(ctx, "int8").control == shifted(600, 0.5)
    assert for_variant(ctx, "fp16").control == control, "a build the control group lacks is compared with all of it"


one_variant_report = st.tuples(one_report, st.sampled_from([None, "fp32", "int8"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(one_variant_report, max_size=4), min_size=1, max_size=8), st.sampled_from([0.0, 3.0]))
def test_builds_observed_with_a_memo_are_observed_as_if_read_afresh(polls, since):
    """A device may change build between polls; the per-build observations and control groups a memo keeps equal a
    fresh read's, and each build's devices are those reporting it, pending devices in none."""
    memo, control_memo = ObserveMemo(), ObserveMemo()
    reports = {}
    for t, changes in enumerate(polls):
        for (dev, version, classes, ms, failed, shadow), kind in changes:
            reports[dev] = replace(report(dev, float(t), version, classes, ms, failed, shadow), variant=kind)
        remembered = observe_reports(DEVICES, dict(reports), V2, since, memo)
        fresh = observe_reports(DEVICES, dict(reports), V2, since)
        assert remembered == fresh
        for _kind, g in fresh.variants:
            assert g.devices == g.adopted + g.failed
        assert sum(g.adopted for _, g in fresh.variants) == sum(
            1 for r in reports.values() if r.variant and r.reported_at >= since and is_on(r, V2)
        )
        ctl_remembered = control_summaries(DEVICES, dict(reports), V2, since, control_memo)
        ctl_fresh = control_summaries(DEVICES, dict(reports), V2, since)
        assert set(ctl_remembered) == set(ctl_fresh)
        for kind in ctl_fresh:
            assert replace(ctl_remembered[kind], devices=0) == replace(ctl_fresh[kind], devices=0)
