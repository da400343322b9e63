"""Quality settings in the gate config and the rollout: validated with messages that name the field, unwritten when
unset (so stacks already deployed declare exactly what they did), and the holdback's ring name reserved."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.rollout.spec import GateConfig, RingConfig, RolloutConfig, compares_with_control, follower_gate

COMPARE = {"max_distribution_shift": 0.2}


def rollout(*gates: dict, **kw) -> RolloutConfig:
    rings = [RingConfig(name=f"r{i}", group="cams", percent=100 * (i + 1) / len(gates), gate=GateConfig(**g)) for i, g in enumerate(gates)]
    return RolloutConfig(name="detector", model="detector", rings=rings, **kw)


def test_a_gate_without_quality_settings_serializes_as_before_they_existed():
    body = GateConfig().model_dump(mode="json")
    assert not {"shadow_soak_seconds", "min_agreement", "max_distribution_shift", "min_quality_samples"} & set(body)
    full = GateConfig(shadow_soak_seconds=10, min_agreement=0.8, deadline_seconds=3600, min_quality_samples=300).model_dump(mode="json")
    assert (full["shadow_soak_seconds"], full["min_agreement"], full["min_quality_samples"]) == (10, 0.8, 300)


def test_the_last_ring_compares_with_a_control_group_only_when_one_is_held_back():
    with pytest.raises(ValidationError, match="declare control_holdback"):
        rollout({}, COMPARE)
    assert rollout(COMPARE, {}).rings[0].gate.max_distribution_shift == 0.2, "an earlier ring compares with the later rings"
    assert rollout({}, COMPARE, control_holdback=0.05).control_holdback == 0.05
    shadowed = {"shadow_soak_seconds": 10, "min_agreement": 0.8, "max_latency_ratio": 2.0}
    assert not compares_with_control(GateConfig(**shadowed)), "a shadow ring judges latency beside the served model"
    rollout({}, shadowed)


def test_the_holdback_is_a_share_below_half_and_reserves_the_name_control():
    with pytest.raises(ValidationError, match="less than 0.5"):
        rollout({}, control_holdback=0.5)
    with pytest.raises(ValidationError, match="control holdback's once it follows"):
        RolloutConfig(name="d", model="d", control_holdback=0.1, rings=[RingConfig(name="control", group="cams")])


def test_shadow_settings_fit_the_deadline_and_agreement_needs_a_shadow_phase():
    with pytest.raises(ValidationError, match="plus shadow_soak_seconds"):
        GateConfig(soak_seconds=300, shadow_soak_seconds=3400, deadline_seconds=3600)
    with pytest.raises(ValidationError, match="set shadow_soak_seconds too"):
        GateConfig(min_agreement=0.9)


def test_the_holdback_follows_under_the_last_rings_health_criteria_only():
    last = GateConfig(soak_seconds=30, max_error_rate=0.01, max_distribution_shift=0.1, max_latency_ratio=2.0)
    follow = follower_gate(last)
    assert (follow.soak_seconds, follow.max_error_rate) == (30, 0.01) and not follow.quality
