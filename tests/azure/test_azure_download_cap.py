"""A download cap on Azure (`max_download_bytes_per_second` on a group, overridable per ring): each ring's layered
deployment carries its ring's cap in the agent module twin (`maxDownloadBytesPerSecond`), resolved as on the local
platform; the manifests still validate against the vendor schemas and the agent twin contract; and removing the cap
from the stack removes it from the devices' twins and from the agent's copy, against the local IoT Hub."""

from __future__ import annotations

import dataclasses

import pytest
from azure_testkit import SimDevice, SimModuleClient
from test_azure_gate import base_layer, release
from test_azure_manifest import CANARY

from components.azure import manifest as mf
from components.azure.configurations import ConfigurationProvider
from components.local.signer import LocalKeySigner, create_key_file
from components.rollout.engine import rollout_id
from edgefleet.config import load_stack
from edgefleet.synth import synth
from edgefleet_agent.contract.iotedge import CAP_KEY
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.transports.iotedge import IoTEdgeTransport
from tests.local.test_download_cap import CANARY_CAP, GROUP_CAP, capped, stack_copy

RINGS = ("canary", "early", "broad")


def by_name(graph: dict, name: str) -> dict:
    return next(r for r in graph["resources"] if r["name"] == name)


def model_entry(deployment: dict) -> dict:
    return deployment["inputs"]["content"]["modulesContent"][mf.AGENT_MODULE]["properties.desired.models.detector"]


@pytest.fixture(scope="module")
def capped_graph(tmp_path_factory) -> dict:
    return synth(stack_copy(tmp_path_factory.mktemp("capped"), "azure-dev", capped), "azure-dev")


def test_each_rings_deployment_carries_its_rings_cap_and_the_rings_own_beats_the_groups(capped_graph, tmp_path):
    project = stack_copy(tmp_path, "azure-dev", capped)
    cfg, _ = load_stack(project, "azure-dev")  # no longer refused
    group = cfg.groups[0]
    want = {"canary": CANARY_CAP, "early": GROUP_CAP, "broad": GROUP_CAP}
    # the same resolution as the local platform's ring plans
    assert {r.name: r.download_cap(group) for r in cfg.rollouts[0].rings} == want
    for ring, cap in want.items():
        assert model_entry(by_name(capped_graph, f"detector-{ring}-deployment"))[CAP_KEY] == cap, ring
        gate = by_name(capped_graph, f"detector-{ring}-gate")["inputs"]
        specs = [mf.RingDeploymentSpec.from_json(s) for s in gate["ring_specs"]]
        assert {s.ring: s.download_cap for s in specs} == want  # what the gate writes a ring's layers with


def test_capped_manifests_validate_against_the_vendor_schemas_and_the_agent_twin_contract(capped_graph):
    base = by_name(capped_graph, "cameras-base")["inputs"]["content"]["modulesContent"]
    for ring in RINGS:
        layer = by_name(capped_graph, f"detector-{ring}-deployment")["inputs"]["content"]["modulesContent"]
        effective = mf.effective_manifest(base, layer)
        assert mf.vendor_problems(effective) == []
        problems = mf.check_manifest(effective)
        # only the deploy-time stand-ins (the Key Vault key and signature are computed at deploy) may be named
        assert not [p for p in problems if CAP_KEY in p], problems


def test_a_stack_without_a_cap_writes_none_and_its_gate_inputs_are_unchanged(azure_dev_graph):
    for ring in RINGS:
        assert CAP_KEY not in model_entry(by_name(azure_dev_graph, f"detector-{ring}-deployment"))
        specs = by_name(azure_dev_graph, f"detector-{ring}-gate")["inputs"]["ring_specs"]
        assert not [s for s in specs if "download_cap" in s]


def test_the_greengrass_refusal_stays(tmp_path):
    from edgefleet_agent.contract.errors import ConfigError

    project = stack_copy(tmp_path, "aws-dev", lambda c: c["edgefleet:groups"][0].update(max_download_bytes_per_second=GROUP_CAP))
    with pytest.raises(ConfigError, match="on Greengrass the nucleus downloads"):
        load_stack(project, "aws-dev")


# -- removal, against the local IoT Hub ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path_factory.mktemp("k") / "signing.pem"))


def test_removing_the_cap_from_the_stack_removes_it_from_the_twin_and_the_agents_copy(hub, signer):
    """IoT Hub merges twin patches, and only a null removes a property; edgefleet does not patch the agent twin: each
    ring is a layered deployment whose content is immutable, so the stack without the cap declares a new layer (a new
    id) that sets the model entry whole, and IoT Hub recomputes the twin from the layers that apply. The agent gets the
    whole new desired properties, without a null for the cap, and replaces the entry rather than merging it."""
    hub.devices["c1"] = SimDevice(tags={"group": "cameras", "ring": "canary"})
    provider = ConfigurationProvider()
    access = base_layer(hub, signer, provider)
    rel = release(signer, "1.0.0")
    d = DesiredModel(**{k: rel[k] for k in ("model", "version", "sha256", "size", "uri", "manifest", "signature")})
    d = dataclasses.replace(d, rollout=rollout_id("detector", d))
    spec = dataclasses.replace(CANARY, target_condition="tags.group='cameras' AND (tags.ring='canary')", download_cap=CANARY_CAP)

    def deploy(s: mf.RingDeploymentSpec) -> str:
        """What `pulumi up` does for the ring: create its layer (create-before-delete retires the old one)."""
        return provider.create({**access, **mf.ring_configuration(s, d), "check": "edgefleet-agent"}).id

    capped_id = deploy(spec)
    hub.apply()
    client = SimModuleClient(hub, "c1")
    transport = IoTEdgeTransport(client)
    transport.connect()
    assert hub.devices["c1"].agent_desired["models"]["detector"][CAP_KEY] == CANARY_CAP
    assert transport.desired("c1", "detector").max_download_bytes_per_second == CANARY_CAP

    uncapped_id = deploy(dataclasses.replace(spec, download_cap=None))  # the cap removed from the stack
    assert uncapped_id != capped_id  # content is immutable: a new layer
    assert [c["id"] for c in hub.configs.values() if c["labels"].get(mf.RING_LABEL) == "detector.canary"] == [uncapped_id]
    hub.apply()
    assert CAP_KEY not in hub.devices["c1"].agent_desired["models"]["detector"]  # gone from the twin, not left merged
    (notified,) = client.notified
    assert CAP_KEY not in notified["models"]["detector"]  # the whole desired properties, with no null for the cap
    assert transport.refresh() is False  # the notification alone brings the agent in step: no twin read needed
    assert CAP_KEY not in transport.models()["detector"]
    got = transport.desired("c1", "detector")
    assert got.max_download_bytes_per_second is None and (got.version, got.sha256) == (d.version, d.sha256)

    deploy(spec)  # and back: the cap set again reaches the agent
    hub.apply()
    assert transport.desired("c1", "detector").max_download_bytes_per_second == CANARY_CAP
    transport.close()
