"""Gates per build on AWS: agents file their window's health and quality twice, under the ring's dimensions and with a
`Variant` one (contract/greengrass.py), and the hub reads each build's copies (AwsHub.variant_observations,
summarize_variants) on moto's CloudWatch, so a bad int8 build cannot hide behind good fp32 devices, while every
ring-wide read stays what it was."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from test_aws_gate import DEVICES, GATE, MODEL_C, NAMESPACE, OLD, FakeClock, devices_on_every_new_deployment, props, pulumi_deploys, world
from test_aws_gate import save_succeeded as save_record

from components.aws.hub import AwsHub
from components.aws.plan import run_gate
from components.props import published_variants
from components.rollout.types import RingTarget
from edgefleet_agent.contract import greengrass as gg
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Predictions
from edgefleet_agent.transports.greengrass import CloudWatchMetrics
from tests.variant_entries import variant_entry

__all__ = ["world"]  # the fixture, shared with test_aws_gate

REPO = Path(__file__).resolve().parents[2]
BUILDS = {"device-0": "fp32", "device-1": "fp32", "device-2": "int8"}
EARLY = {"early-0": "fp32", "early-1": "fp32", "early-2": "int8", "early-3": "int8"}
SPREAD = {0: 34, 1: 33, 2: 33}


def manifest(version: str) -> str:
    """models/detector's manifest at `version`, shipping an int8 build beside the reference (format 3)."""
    doc = yaml.safe_load((REPO / "models" / "detector" / "model.yaml").read_text())
    cpu = ["CPUExecutionProvider"]
    int8 = variant_entry("int8", sha256=(version.replace(".", "") + "8" * 64)[:64], size=1000, eps=cpu, memory=64, providers=cpu)
    doc.update(version=version, variants=[int8], min_agent_version="0.4.0", format=3)
    return yaml.safe_dump(doc, sort_keys=False)


def with_builds(world, index: int, version: str = "1.1.0", gate: dict | None = None, **extra) -> dict:
    return {**props(world, index, version=version, gate=gate), "manifest": manifest(version), **extra}


def previous_with_builds() -> DesiredModel:
    text = manifest(OLD.version)
    return replace(OLD, manifest=text, variants=published_variants(parse_manifest_bytes(text.encode(), "test"), OLD.uri))


def file(world, ring: str, version: str, builds: dict[str, str], **per_build: dict) -> None:
    """Each device's window as its agent files it (CloudWatchMetrics), with the build it serves; `per_build`: the
    report fields of that build's devices (default: 100 healthy inferences)."""
    now = time.time()
    for device, kind in builds.items():
        fields = {"inferences": 100, "errors": 0, **per_build.get(kind, {})}
        classes = fields.pop("classes", None)
        if classes is not None:
            preds = Predictions("classes", "scores")
            for cls, n in classes.items():
                for _ in range(n):
                    preds.add_class(cls, 0.8)
            fields["predictions"] = preds.to_json()
        report = DeviceReport(device, "detector", version, "b" * 64, "ok", reported_at=now, variant=kind, **fields)
        assert CloudWatchMetrics(NAMESPACE, "detector", ring, client=world.clients.cloudwatch).publish(report)


def test_a_report_of_one_build_files_the_ring_metrics_as_before_and_a_bounded_copy_for_its_build():
    report = DeviceReport("d", "detector", "1.1.0", "b" * 64, "ok", inferences=100, errors=3, variant="int8", p99_latency_ms=9.0)
    datums = CloudWatchMetrics(NAMESPACE, "detector", "canary").datums(report)
    ring = [d for d in datums if [x["Name"] for x in d["Dimensions"]] == list(gg.DIMENSIONS)]
    build = [d for d in datums if any(x["Name"] == gg.VARIANT_DIMENSION for x in d["Dimensions"])]
    device = [d for d in datums if any(x["Name"] == gg.DEVICE_DIMENSION for x in d["Dimensions"])]
    assert [d["MetricName"] for d in ring] == [d["MetricName"] for d in build] == ["Inferences", "Errors", "InvalidOutputs", "LatencyP99Ms"]
    assert all(d["Dimensions"][-1] == {"Name": "Variant", "Value": "int8"} for d in build)
    assert len(device) == 1 and not any(x["Name"] == gg.VARIANT_DIMENSION for x in device[0]["Dimensions"]), "nothing per build per device"
    assert len(datums) == len(ring) + len(build) + len(device)
    older = CloudWatchMetrics(NAMESPACE, "detector", "canary").datums(replace(report, variant=None))
    assert len(older) == len(ring) + len(device), "a report naming no build files what it always did"


def test_a_canary_whose_int8_devices_error_fails_naming_int8_though_the_ring_as_a_whole_is_under_its_threshold(world):
    save_record(world, OLD)
    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    file(world, "canary", "1.1.0", BUILDS, int8={"errors": 12})  # 12% of int8's requests fail, 4% of the ring's (max 5%)
    with pytest.raises(RuntimeError) as err:
        run_gate(with_builds(world, 0), clients=world.clients, clock=FakeClock())
    message = str(err.value)
    assert "halted at ring 'canary'" in message and "variant int8: error rate 12.00% > max 5.00%" in message, message
    assert "variant fp32" not in message and "whole ring" not in message, "the good build is not blamed; the ring alone passes"
    assert "device-2 error rate 12.00%" in message, "named from the per-device metric of its bad window"
    assert json_merge(world)["RollbackOrder"], "rolled back"


def test_the_same_ring_with_both_builds_healthy_passes_and_measures_each_build(world):
    save_record(world, OLD)
    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    file(world, "canary", "1.1.0", BUILDS, int8={"errors": 1}, fp32={"errors": 2})
    progress = run_gate(with_builds(world, 0), clients=world.clients, clock=FakeClock())
    canary = progress["rings"][0]
    assert canary["state"] == "passed", canary
    per_build = canary["measured"]["variants"]
    assert (per_build["fp32"]["inferences"], per_build["int8"]["inferences"]) == (200, 100)
    assert (per_build["fp32"]["error_rate"], per_build["int8"]["error_rate"]) == (0.02, 0.01)
    assert canary["measured"]["inferences"] == 300, "the ring-wide read is unchanged by the per-build copies"


def test_a_version_of_one_build_reads_no_per_build_metric(world):
    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    file(world, "canary", "1.1.0", BUILDS)
    hub = AwsHub.from_props(props(world, 0), clients=world.clients, clock=time.time)
    calls: list[tuple] = []
    hub.variant_metrics = lambda *a: calls.append(a) or {}  # type: ignore[method-assign]
    target = RingTarget("detector", "canary", 0, props(world, 0)["targets"][0])
    desired = hub.desired(target)
    assert desired is not None and desired.variants is None
    obs = hub.observe(target, desired, since=time.time() - 60)
    assert obs.adopted == 3 and obs.variants == () and calls == [], "the agents' per-build copies are not read"


def test_a_blind_int8_build_fails_against_the_int8_control_devices_where_the_whole_canary_would_pass(world):
    """Quality per build: the canary's int8 devices are compared with the later ring's int8 devices on the previous
    version (summarize_variants), its fp32 devices with the fp32 ones."""
    save_record(world, previous_with_builds())
    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    file(world, "canary", "1.1.0", BUILDS, fp32={"classes": SPREAD}, int8={"classes": {0: 250}})
    file(world, "early", "1.0.0", EARLY, fp32={"classes": SPREAD}, int8={"classes": SPREAD})
    gate = {**GATE, "max_distribution_shift": 0.45}
    with pytest.raises(RuntimeError) as err:
        run_gate(with_builds(world, 0, gate=gate, control_rings=["early"]), clients=world.clients, clock=FakeClock())
    message = str(err.value)
    assert "variant int8: prediction shift: total variation 0.66" in message, message
    assert "variant fp32" not in message and "whole ring" not in message, "the canary as a whole shifts 0.37, under 0.45"


def json_merge(world) -> dict:
    import json

    return json.loads(world.gg.created()[-1]["components"][MODEL_C]["configurationUpdate"]["merge"])


def test_each_build_is_compared_with_the_control_devices_of_its_own_build_and_a_healthy_ring_passes(world):
    """The int8 build answers a little otherwise than fp32 on either version: against the whole control group it would
    shift by 0.13 (max 0.1), against the int8 control devices by nothing."""
    save_record(world, previous_with_builds())
    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    skewed = {0: 150, 1: 50, 2: 50}
    file(world, "canary", "1.1.0", BUILDS, fp32={"classes": SPREAD}, int8={"classes": skewed})
    file(world, "early", "1.0.0", EARLY, fp32={"classes": SPREAD}, int8={"classes": skewed})
    gate = {**GATE, "max_distribution_shift": 0.1}
    progress = run_gate(with_builds(world, 0, gate=gate, control_rings=["early"]), clients=world.clients, clock=FakeClock())
    canary = progress["rings"][0]
    assert canary["state"] == "passed", canary
    per_build = canary["measured"]["variants"]
    assert per_build["int8"]["quality"]["control"]["predictions"] == 500 and per_build["fp32"]["quality"]["control"]["predictions"] == 200
    assert per_build["int8"]["quality"]["distribution_shift"] == 0.0
