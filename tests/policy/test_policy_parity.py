"""policies/ is standard-library only, so it restates two things from edgefleet: hardware fit and defaults.
These tests keep the two copies from drifting apart."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from components.aws.config import AwsConfig
from components.azure.config import AzureConfig
from components.stack import PolicyConfig, hardware_runs
from edgefleet_agent import __version__ as AGENT_VERSION
from edgefleet_agent.contract.manifest import KNOWN_PROVIDERS, HardwareProfile
from policies import aws, azure, compatibility, local
from policies.settings import Settings

profiles = st.builds(
    HardwareProfile,
    name=st.just("hw"),
    arch=st.sampled_from(["amd64", "arm64", "armv7"]),
    execution_providers=st.lists(st.sampled_from(KNOWN_PROVIDERS[:4]), min_size=1, max_size=3, unique=True),
    memory_mb=st.integers(1, 4096),
    storage_mb=st.integers(1, 4096),
)


@settings(max_examples=300, deadline=None)
@given(target=profiles, hardware=profiles)
def test_hardware_rule_agrees_with_edgefleet_config(target, hardware):
    assert compatibility.hardware_runs(target.model_dump(), hardware.model_dump()) == hardware_runs(target, hardware)
    assert bool(compatibility.hardware_problems(target.model_dump(), hardware.model_dump())) != hardware_runs(target, hardware)


def test_defaults_agree_with_the_stack_config_models():
    cfg = PolicyConfig()
    s = Settings()
    assert (s.production, s.canary_max_share, s.min_canary_soak_seconds, s.max_metric_regression) == (
        cfg.production,
        cfg.canary_max_share,
        cfg.min_canary_soak_seconds,
        cfg.max_metric_regression,
    )
    assert (s.max_variant_drop, s.min_variant_agreement) == (cfg.max_variant_drop, cfg.min_variant_agreement)
    assert AwsConfig.model_fields["agent_version"].default == aws.DEFAULT_AGENT_VERSION
    assert AzureConfig.model_fields["agent_version"].default == azure.DEFAULT_AGENT_VERSION
    assert AGENT_VERSION == local.AGENT_VERSION, "the local fleet runs this checkout's agent"


@given(
    st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
)
def test_version_order_matches_semver(a, b):
    import semver

    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    assert compatibility.version_lt(va, vb) == (semver.Version.parse(va) < semver.Version.parse(vb))
    assert compatibility.version_lt("1.0.0-rc.1", "1.0.0") and not compatibility.version_lt("1.0.0", "1.0.0-rc.1")
