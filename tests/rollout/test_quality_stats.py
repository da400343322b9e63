"""The quality gates' statistics (components/rollout/quality.py): the chi-square survival function against published
tables and its closed forms, the homogeneity test's calibration, and the shift, alignment and confidence functions'
properties."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.rollout.quality import (
    ALPHA,
    Summary,
    Telemetry,
    aligned,
    chi2_homogeneity,
    chi2_sf,
    confidence_drop_test,
    total_variation,
)
from edgefleet_agent.contract.telemetry import OTHER, Predictions

# Upper critical values of the chi-square distribution (NIST/SEMATECH e-Handbook of Statistical Methods, table
# 1.3.6.7.4): P(X > x) = alpha for `dof` degrees of freedom.
TABLE = [
    (1, 0.05, 3.841),
    (1, 0.01, 6.635),
    (1, 0.001, 10.828),
    (2, 0.05, 5.991),
    (2, 0.01, 9.210),
    (3, 0.05, 7.815),
    (3, 0.01, 11.345),
    (4, 0.05, 9.488),
    (5, 0.01, 15.086),
    (7, 0.05, 14.067),
    (8, 0.001, 26.124),
    (10, 0.05, 18.307),
    (10, 0.01, 23.209),
    (20, 0.05, 31.410),
    (30, 0.01, 50.892),
    (50, 0.05, 67.505),
    (100, 0.05, 124.342),
    (100, 0.01, 135.807),
]
# and the lower tail: P(X > x) = 1 - alpha
LOWER = [(1, 0.95, 0.004), (2, 0.95, 0.103), (5, 0.99, 0.554), (10, 0.90, 4.865), (30, 0.95, 18.493)]


@pytest.mark.parametrize("dof,alpha,x", TABLE + LOWER)
def test_chi2_sf_matches_published_critical_values(dof, alpha, x):
    # tables print three decimals: compare at the precision the rounding of x allows
    lo, hi = chi2_sf(x + 0.0005, dof), chi2_sf(x - 0.0005, dof)
    assert lo - 1e-9 <= alpha <= hi + 1e-9, (dof, alpha, x, chi2_sf(x, dof))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=400.0, allow_nan=False))
def test_chi2_sf_closed_forms_for_one_and_two_degrees_of_freedom(x):
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9, abs=1e-300)
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-8, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.01, max_value=300.0), st.integers(min_value=1, max_value=120))
def test_chi2_sf_recurrence_in_the_degrees_of_freedom(x, k):
    """Q(a+1, z) = Q(a, z) + z^a e^-z / Gamma(a+1): the series and continued-fraction branches agree with each other."""
    a, z = k / 2, x / 2
    step = math.exp(a * math.log(z) - z - math.lgamma(a + 1))
    assert chi2_sf(x, k + 2) == pytest.approx(chi2_sf(x, k) + step, rel=1e-7, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=500.0), st.floats(min_value=0.0, max_value=50.0), st.integers(min_value=1, max_value=200))
def test_chi2_sf_is_a_survival_function(x, dx, k):
    p, q = chi2_sf(x, k), chi2_sf(x + dx, k)
    assert 0.0 <= q <= p <= 1.0
    assert chi2_sf(0.0, k) == 1.0 and chi2_sf(math.inf, k) == 0.0


counts = st.dictionaries(st.sampled_from([str(i) for i in range(12)] + [OTHER]), st.integers(min_value=0, max_value=5000), max_size=13)


@settings(max_examples=300, deadline=None)
@given(counts, counts)
def test_total_variation_is_a_symmetric_distance_between_zero_and_one(a, b):
    d = total_variation(a, b)
    assert 0.0 <= d <= 1.0 + 1e-12
    assert d == pytest.approx(total_variation(b, a))
    assert total_variation(a, a) == pytest.approx(0.0, abs=1e-12)
    assert total_variation(a, {k: 7 * v for k, v in a.items()}) == pytest.approx(0.0, abs=1e-12), "shares, not counts"


@settings(max_examples=300, deadline=None)
@given(counts, counts)
def test_chi2_homogeneity_is_symmetric_and_bounded_and_never_rejects_proportional_samples(a, b):
    stat, dof, p = chi2_homogeneity(a, b)
    assert stat >= 0 and 0.0 <= p <= 1.0
    assert (stat, dof) == pytest.approx(chi2_homogeneity(b, a)[:2])
    stat, _, p = chi2_homogeneity(a, {k: 3 * v for k, v in a.items()})
    assert stat == pytest.approx(0.0, abs=1e-9) and p == pytest.approx(1.0)


@settings(max_examples=300, deadline=None)
@given(counts, counts, st.integers(min_value=1, max_value=8))
def test_aligned_sides_share_categories_and_keep_their_totals(a, b, k):
    x, y = aligned(a, b, top_k=k)
    assert set(x) == set(y)
    assert len([c for c in x if c != OTHER]) <= k
    assert sum(x.values()) == sum(a.values()) and sum(y.values()) == sum(b.values())


def test_the_homogeneity_test_rejects_at_about_alpha_when_both_sides_share_a_distribution():
    """Calibration: two samples of 400 from the same 3-class distribution; the test rejects about 1% of the time."""
    rng = random.Random(11)
    weights = [0.5, 0.3, 0.2]
    trials, rejected = 3000, 0
    for _ in range(trials):
        a, b = ({str(c): 0 for c in range(3)} for _ in range(2))
        for side in (a, b):
            for c in rng.choices(range(3), weights, k=400):
                side[str(c)] += 1
        rejected += chi2_homogeneity(a, b)[2] < ALPHA
    assert 0.004 <= rejected / trials <= 0.02, rejected / trials


def test_the_homogeneity_test_sees_a_swap_of_two_classes_and_shrugs_at_noise():
    control = {"0": 340, "1": 330, "2": 330}
    assert chi2_homogeneity({"0": 100, "1": 100, "2": 800}, control)[2] < 1e-50
    assert chi2_homogeneity({"0": 345, "1": 325, "2": 330}, control)[2] > 0.5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=200), min_size=10, max_size=10),
    st.lists(st.integers(min_value=0, max_value=200), min_size=10, max_size=10),
)
def test_confidence_drop_is_antisymmetric_and_its_p_value_a_probability(a, b):
    drop, p = confidence_drop_test(a, b)
    back, q = confidence_drop_test(b, a)
    if drop is None:
        assert back is None and p == 1.0
        return
    assert drop == pytest.approx(-back) and 0.0 <= p <= 1.0 and 0.0 <= q <= 1.0
    if sum(a) > 1 and sum(b) > 1 and drop != 0:
        assert (p < 0.5) == (drop > 0) or p == pytest.approx(0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=30), min_size=1, max_size=6))
def test_a_summary_of_merged_telemetry_sums_each_devices_own(devices):
    total = Telemetry()
    classes: dict[str, int] = {}
    for labels in devices:
        preds = Predictions("classes", "scores")
        for c in labels:
            preds.add_class(c, 0.75)
            classes[str(c)] = classes.get(str(c), 0) + 1
        total.add(preds, None, None, None)
    s = total.summary()
    assert s.devices == len(devices) and s.predictions == sum(map(len, devices)) and dict(s.classes) == classes
    assert s.mean_confidence() == pytest.approx(0.75)


def test_predictions_a_platform_could_not_attribute_count_as_other():
    s = Summary(predictions=100, classes={"0": 60, "1": 30})
    assert s.class_counts() == {"0": 60, "1": 30, OTHER: 10}
