"""Sample capture in the stack: the ring setting, the stack's declared destination, and the policy that asks for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from components.rollout.spec import CaptureConfig, RingConfig
from components.stack import parse_stack
from edgefleet.plan import run_policy
from edgefleet_agent.contract.capture import CaptureSpec
from edgefleet_agent.contract.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RULE = "capture-destination-declared"
DESTINATION = {"store": ".edgefleet/local/captures", "retention_days": 30, "purpose": "labelling and retraining of detector"}


def local_config(capture: dict | None = None, destination: dict | None = None) -> dict:
    """The shipped local stack's `edgefleet:` keys, the canary ring capturing when `capture` is given."""
    raw = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]
    cfg = {k.removeprefix("edgefleet:"): v for k, v in raw.items()}
    if capture is not None:
        cfg["rollouts"][0]["rings"][0]["capture"] = capture
    if destination is not None:
        cfg["capture"] = destination
    return cfg


def project_with(tmp_path: Path, cfg: dict) -> Path:
    (tmp_path / "stacks").mkdir()
    shutil.copytree(ROOT / "models" / "detector", tmp_path / "models" / "detector")
    shutil.copytree(ROOT / "models" / "datasets", tmp_path / "models" / "datasets")
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(ROOT / "__main__.py", tmp_path / "__main__.py")
    stack = {"config": {f"edgefleet:{k}": v for k, v in cfg.items()}}
    (tmp_path / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return tmp_path


def rule(report, name):
    return next(r for r in report.results if r.name == name)


# -- the settings -----------------------------------------------------------------------------------------------------
def test_capture_is_unset_by_default_and_an_unset_capture_is_not_serialized():
    ring = RingConfig(name="canary", group="cameras")
    assert ring.capture is None
    assert "capture" not in ring.model_dump(mode="json"), "a ring without capture serializes as before capture existed"
    with_capture = RingConfig(name="canary", group="cameras", capture=CaptureConfig(low_confidence_below=0.4))
    assert with_capture.model_dump(mode="json")["capture"]["low_confidence_below"] == 0.4


def test_a_capture_needs_a_criterion_and_bounded_limits():
    with pytest.raises(ValidationError, match="needs a criterion"):
        CaptureConfig()
    with pytest.raises(ValidationError, match="max_per_device_per_day"):
        CaptureConfig(on_shadow_disagreement=True, max_per_device_per_day=0)
    with pytest.raises(ValidationError, match="low_confidence_below"):
        CaptureConfig(low_confidence_below=1.5)


def test_the_ring_setting_is_the_contracts_spec():
    cfg = CaptureConfig(low_confidence_below=0.4, on_shadow_disagreement=True, max_per_device_per_day=50, min_seconds_between=5)
    assert cfg.spec() == CaptureSpec(
        low_confidence_below=0.4, on_shadow_disagreement=True, max_per_device_per_day=50, min_seconds_between=5
    )


def test_the_stack_loads_capture_and_its_destination():
    cfg = parse_stack(local_config({"low_confidence_below": 0.5}, DESTINATION), "Pulumi.local.yaml")
    assert cfg.rollouts[0].rings[0].capture.low_confidence_below == 0.5
    assert cfg.capture.retention_days == 30


@pytest.mark.parametrize("store", [".edgefleet/local/store", ".edgefleet/local/store/captures", "/var/captures", "../captures"])
def test_a_local_capture_store_must_be_a_directory_of_its_own(store):
    """The model store is the devices' read-only update repository: captures never go into it."""
    with pytest.raises(ConfigError, match="capture.store"):
        parse_stack(local_config({"low_confidence_below": 0.5}, {**DESTINATION, "store": store}), "Pulumi.local.yaml")


@pytest.mark.parametrize("stack", ["aws-dev", "azure-dev"])
def test_capture_on_a_cloud_ring_is_refused_until_it_is_delivered_there(stack):
    raw = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    cfg = {k.removeprefix("edgefleet:"): v for k, v in raw.items() if k.startswith("edgefleet:")}
    cfg["rollouts"][0]["rings"][0]["capture"] = {"low_confidence_below": 0.5}
    cfg["capture"] = {**DESTINATION, "store": "s3://captures-bucket/detector"}
    with pytest.raises(ConfigError, match="local platform only"):
        parse_stack(cfg, f"Pulumi.{stack}.yaml")


# -- the policy, on the synthesized graph -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_local(tmp_path_factory):
    from edgefleet.synth import synth

    def make(cfg: dict) -> dict:
        project = project_with(tmp_path_factory.mktemp("project"), cfg)
        return synth(project, "local")

    return make


def test_the_shipped_stacks_capture_nothing_and_the_rule_does_not_apply(synth_local):
    report = run_policy(synth_local(local_config()))
    assert rule(report, RULE).status == "not-applicable"


def test_capture_without_a_declared_destination_is_a_mandatory_finding(synth_local):
    graph = synth_local(local_config({"low_confidence_below": 0.5}))
    [canary] = [r for r in graph["resources"] if r["type"] == "edgefleet:rollout:Ring" and r["inputs"]["ring"] == "canary"]
    assert canary["inputs"]["capture"]["low_confidence_below"] == 0.5
    others = [r for r in graph["resources"] if r["type"] == "edgefleet:rollout:Ring" and r["inputs"]["ring"] != "canary"]
    assert others and all("capture" not in r["inputs"] for r in others)
    report = run_policy(graph)
    result = rule(report, RULE)
    assert (result.status, result.level) == ("failed", "mandatory")
    assert "does not declare where captured data may go" in result.findings[0].message
    assert "canary" in result.findings[0].message
    assert any(r.name == RULE for r in report.blocking)


def test_capture_with_a_declared_destination_passes(synth_local):
    report = run_policy(synth_local(local_config({"on_shadow_disagreement": True}, DESTINATION)))
    assert rule(report, RULE).status == "passed"
