"""Gates per build on Azure, against the local IoT Hub: agents report the build they serve (`variant` in their twin
entry), the hub counts and measures each build's devices on their own (GROUP BY, then one query per build) and
compares each with the control devices of the same build, so a bad int8 build cannot hide behind good fp32 devices."""

from __future__ import annotations

import pytest
import yaml
from azure_testkit import HUB_HOST, KEY, POLICY, SimDevice
from test_azure_gate import TickingClock, base_layer, release, ring_specs, twin_quality

from components.azure import manifest as mf
from components.azure.configurations import ConfigurationProvider, HubClient
from components.azure.hub import AzureHub, AzureRingGateProps, MemoryProgressStore, hub_from_props, run_gate
from components.local.signer import LocalKeySigner, create_key_file
from components.rollout.engine import rollout_id
from components.rollout.spec import GateConfig, RingConfig
from components.rollout.types import RingTarget
from edgefleet_agent.contract.signing import sign_bytes
from tests.variant_entries import variant_entry

HEALTH = GateConfig(
    soak_seconds=600, deadline_seconds=1800, min_reporting_share=0.9, success_share=0.95, max_failure_share=0.0, max_error_rate=0.05
)
COMPARES = HEALTH.model_copy(update={"max_distribution_shift": 0.2})
CANARY_FP32, CANARY_INT8 = ("c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"), ("c9", "c10")
BROAD_FP32, BROAD_INT8 = ("b1", "b2", "b3"), ("b4", "b5")
SPREAD = {0: 34, 1: 33, 2: 33}


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path_factory.mktemp("k") / "signing.pem"))


def with_builds(signer, version: str) -> dict:
    """`release` of a version shipping an int8 build beside its fp32 reference (manifest format 3)."""
    rel = release(signer, version)
    doc = yaml.safe_load(rel["manifest"])
    cpu = ["CPUExecutionProvider"]
    int8 = variant_entry("int8", sha256=(version.replace(".", "") + "8" * 64)[:64], size=1000, eps=cpu, memory=64, providers=cpu)
    doc.update(variants=[int8], min_agent_version="0.4.0", format=3)
    text = yaml.safe_dump(doc, sort_keys=False)
    return {**rel, "manifest": text, "signature": sign_bytes(signer, text.encode()).to_bytes().decode()}


@pytest.fixture
def two_builds(hub, signer):
    """A canary of eight fp32 and two int8 devices, a broad ring of three and two, each agent reporting its build."""
    for devices, ring, kind in ((CANARY_FP32, "canary", "fp32"), (CANARY_INT8, "canary", "int8")):
        for d in devices:
            hub.devices[d] = SimDevice(tags={"group": "cameras", "ring": ring}, variant=kind)
    for devices, kind in ((BROAD_FP32, "fp32"), (BROAD_INT8, "int8")):
        for d in devices:
            hub.devices[d] = SimDevice(tags={"group": "cameras"}, variant=kind)
    access = base_layer(hub, signer)
    clock, store = TickingClock(hub), MemoryProgressStore()

    class Fleet:
        def rings(self, gate: GateConfig) -> list[RingConfig]:
            return [
                RingConfig(name="canary", group="cameras", labels={"ring": "canary"}, gate=gate),
                RingConfig(name="broad", group="cameras", gate=HEALTH),
            ]

        def specs(self, gate: GateConfig) -> list[mf.RingDeploymentSpec]:
            return ring_specs(self.rings(gate))

        def props(self, index: int, rel: dict, gate: GateConfig) -> dict:
            rings = self.rings(gate)
            return {
                **access,
                "rollout": "detector",
                "ring": rings[index].name,
                "index": index,
                "poll_seconds": 30,
                "rings": [r.model_dump(mode="json") for r in rings],
                "ring_specs": [s.to_json() for s in self.specs(gate)],
                **rel,
            }

        def roll(self, index: int, rel: dict, gate: GateConfig = HEALTH) -> dict:
            """`pulumi up` of ring `index`: its layer (with the variants the gate declares), then its gate."""
            props = self.props(index, rel, gate)
            declared = AzureRingGateProps.of(props).declared()
            desired = declared.__class__(**{**declared.__dict__, "rollout": rollout_id("detector", declared)})
            assert desired.variants, "the version ships an int8 build"
            ConfigurationProvider().create(
                {**access, **mf.ring_configuration(self.specs(gate)[index], desired), "check": "edgefleet-agent"}
            )
            return run_gate(props, hub=hub_from_props(props, store, sleep=clock.sleep, clock=clock.now), signer=signer, clock=clock)

        def hub(self, gate: GateConfig = HEALTH) -> AzureHub:
            specs = self.specs(gate)
            client = HubClient(HUB_HOST, POLICY, KEY, hub.endpoint)
            gates = {s.key: r.gate for s, r in zip(specs, self.rings(gate), strict=True)}
            return AzureHub(client, {s.key: s for s in specs}, store, gates=gates, poll_seconds=30, sleep=clock.sleep, clock=clock.now)

    return Fleet()


def roll_out(fleet, rel: dict, gate: GateConfig = HEALTH) -> dict:
    fleet.roll(0, rel, gate)
    return fleet.roll(1, rel, gate)


def test_a_canary_whose_int8_devices_error_fails_naming_int8_and_its_devices_and_rolls_back(hub, two_builds, signer):
    v1, v2 = with_builds(signer, "1.0.0"), with_builds(signer, "2.0.0")
    assert roll_out(two_builds, v1)["status"] == "succeeded"
    for d in CANARY_INT8:
        hub.devices[d].metrics["2.0.0"] = {"inferences": 100, "errors": 30}  # 30% of int8 requests fail; 6% of the ring's
    with pytest.raises(RuntimeError) as e:
        two_builds.roll(0, v2)
    text = str(e.value)
    assert "halted at ring 'canary'" in text and "variant int8 (2 devices): error rate 30.00% > max 5.00%" in text, text
    assert "variant fp32" not in text and "whole ring" in text, "the good build is not blamed; the ring as a whole breaches too"
    assert "Offending devices: c10 error rate 30.00%" in text or "Offending devices: c9 error rate 30.00%" in text, text
    assert {hub.devices[d].reported["models"]["detector"]["version"] for d in CANARY_INT8} == {"1.0.0"}, "rolled back"


def test_errors_the_whole_ring_would_hide_still_fail_the_int8_build(hub, two_builds, signer):
    v1, v2 = with_builds(signer, "1.0.0"), with_builds(signer, "2.0.0")
    roll_out(two_builds, v1)
    for d in CANARY_INT8:
        hub.devices[d].metrics["2.0.0"] = {"inferences": 100, "errors": 12}  # 12% of int8's, 2.4% of the ring's (max 5%)
    with pytest.raises(RuntimeError) as e:
        two_builds.roll(0, v2)
    text = str(e.value)
    assert "variant int8 (2 devices): error rate 12.00% > max 5.00%" in text and "whole ring" not in text, text


def test_a_canary_whose_int8_build_answers_otherwise_than_int8_control_fails_and_the_same_healthy_ring_passes(hub, two_builds, signer):
    """Quality per build: the canary's int8 devices are compared with the broad ring's int8 devices on the previous
    version, its fp32 devices with the fp32 ones. A blind int8 build shifts the whole canary's predictions by less
    than the gate allows, its own by far more."""
    v1, v2, v3 = with_builds(signer, "1.0.0"), with_builds(signer, "2.0.0"), with_builds(signer, "3.0.0")
    for d in (*BROAD_FP32, *BROAD_INT8):
        hub.devices[d].metrics["1.0.0"] = {"quality": twin_quality(SPREAD)}
    assert roll_out(two_builds, v1, COMPARES)["status"] == "succeeded"
    for d in CANARY_FP32:
        hub.devices[d].metrics["2.0.0"] = hub.devices[d].metrics["3.0.0"] = {"quality": twin_quality(SPREAD)}
    for d in CANARY_INT8:
        hub.devices[d].metrics["2.0.0"] = {"quality": twin_quality({0: 100})}  # blind: class 0 whatever it is asked
        hub.devices[d].metrics["3.0.0"] = {"quality": twin_quality({0: 36, 1: 32, 2: 32})}
    with pytest.raises(RuntimeError) as e:
        two_builds.roll(0, v2, COMPARES)
    text = str(e.value)
    assert "variant int8 (2 devices): prediction shift: total variation 0.66" in text, text
    assert "variant fp32" not in text and "whole ring" not in text, "the canary as a whole would have passed"
    assert "c9 prediction shift" in text or "c10 prediction shift" in text, "the int8 devices are named"

    passed = two_builds.roll(0, v3, COMPARES)
    canary = passed["rings"][0]
    assert canary["state"] == "passed", canary["verdict"]
    per_build = canary["verdict"]["measured"]["variants"]
    assert set(per_build) == {"fp32", "int8"} and (per_build["fp32"]["devices"], per_build["int8"]["devices"]) == (8, 2)
    assert per_build["int8"]["quality"]["control"]["devices"] == 2 and per_build["fp32"]["quality"]["control"]["devices"] == 3


def test_builds_cost_queries_per_build_and_a_version_of_one_build_costs_none(hub, two_builds, signer):
    v1 = with_builds(signer, "1.0.0")
    roll_out(two_builds, v1)
    h = two_builds.hub()
    (canary, _) = [RingTarget("detector", s.ring, s.index, s.key) for s in two_builds.specs(HEALTH)]
    desired = h.desired(canary)
    assert desired is not None and desired.variants
    hub.queries.clear()
    obs = h.observe(canary, desired, since=0)
    assert [k for k, _ in obs.variants] == ["fp32", "int8"] and [o.adopted for _, o in obs.variants] == [8, 2]
    grouped = [q for q in hub.queries if "GROUP BY" in q]
    per_build = [q for q in hub.queries if ".variant = '" in q]
    assert len(grouped) == 1 and len(per_build) == 2, hub.queries
    single = desired.__class__(**{**desired.__dict__, "variants": None})
    hub.queries.clear()
    assert h.observe(canary, single, since=0).variants == () and not [q for q in hub.queries if "variant" in q]


def test_the_agent_reports_the_build_it_serves_in_its_twin_entry():
    from edgefleet_agent.contract.iotedge import REPORTED_FIELDS, reported_entry
    from edgefleet_agent.contract.state import DeviceReport

    entry = reported_entry(DeviceReport("d", "detector", "1.0.0", "a" * 64, "ok", variant="int8"), {"ring": "r", "rollout": "x"})
    assert "variant" in REPORTED_FIELDS and entry["variant"] == "int8"
    assert reported_entry(DeviceReport("d", "detector", None, None, "ok"), {})["variant"] is None, "null: IoT Hub drops it"
