"""The agent as an IoT Edge module: the module twin the platform builds becomes what the agent installs, and
what the agent reports is what the ring's gate (components/azure/hub.py) counts.

The twin's desired properties are built with the platform's own code (`base_manifest`, `ring_layer`,
`effective_manifest`), and the gate's verdict inputs come from `AzureHub.observe` running its own queries
against the reported properties the agents wrote. IoT Hub's query engine is not available here, so
`FakeIoTHub.query` evaluates them with the Azure tests' evaluator of the SQL subset edgefleet generates
(tests/azure/azure_testkit.py); everything else about the queries is the hub's.

azure-iot-device is not needed: `FakeModuleClient` implements the methods and handler properties of the
SDK's `IoTHubModuleClient` that the transport uses (and a test checks them against the SDK when installed).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from agent_testkit import MODEL, REPO, SAMPLES, TARGET, FakeTransport, artifact_bytes, oip_infer
from azure_testkit import run_query

from components.azure.hub import AzureHub, MemoryProgressStore
from components.azure.manifest import (
    AGENT_MODULE,
    AgentModule,
    RingDeploymentSpec,
    base_manifest,
    check_manifest,
    effective_manifest,
    ring_layer,
)
from components.rollout.engine import rollout_id
from components.rollout.types import RingTarget
from edgefleet.model_add import add_version
from edgefleet.signing import sign_model_dir
from edgefleet_agent import __version__ as AGENT_VERSION
from edgefleet_agent.contract.iotedge import TWIN_STRING_LIMIT, model_key
from edgefleet_agent.contract.manifest import HardwareProfile, Metric, ModelDir
from edgefleet_agent.contract.signing import key_id_of, load_public_key, sign_bytes
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.core import DeviceAgent
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry
from edgefleet_agent.transports.iotedge import EdgeSupervisor, IoTEdgeTransport, TrustRefused, resolve_trust

SAS = "sv=2022-11-02&sr=c&sp=r&se=2031-01-01T00%3A00%3A00Z&sig=S3CRETsasSIGNATURE%2Bx%3D"
SECRET = "S3CRETsasSIGNATURE"
AGENT = AgentModule(image="edgefleetdev.azurecr.io/edgefleet-agent:0.1.0", agent_version="0.1.0")
SPEC = RingDeploymentSpec(
    rollout="detector",
    ring="canary",
    index=0,
    model=MODEL,
    target_condition="(tags.ring='canary')",
    priority=11,
    agent=AGENT,
    agent_schema="1.1",
)


# -- the SDK and the hub, faked ------------------------------------------------------------------------------------
def _merge(doc: dict, patch: dict) -> dict:
    """Twin merge semantics, written independently of agent.iotedge.merge_patch."""
    for k, v in patch.items():
        if v is None:
            doc.pop(k, None)
        elif isinstance(v, dict):
            doc[k] = _merge(doc.get(k) if isinstance(doc.get(k), dict) else {}, v)
        else:
            doc[k] = v
    return doc


class FakeModuleClient:
    """azure.iot.device.IoTHubModuleClient (sync, v2) as the transport uses it: `get_twin()` returns
    {"desired": …, "reported": …}; the desired-patch handler takes the patch (with "$version"); the connection
    handler takes no argument; `patch_twin_reported_properties` merges (null removes); `shutdown()`."""

    def __init__(self, desired: dict | None = None, reported: dict | None = None) -> None:
        self.desired = copy.deepcopy(desired or {})
        self.desired["$version"] = 1
        self.reported = copy.deepcopy(reported or {})
        self.on_twin_desired_properties_patch_received = None
        self.on_connection_state_change = None
        self.connected = True
        self.sent: list[dict] = []
        self.get_twin_calls = 0
        self.is_shut_down = False

    @classmethod
    def create_from_edge_environment(cls, **kwargs) -> "FakeModuleClient":
        return cls()

    def get_twin(self) -> dict:
        self.get_twin_calls += 1
        return {"desired": copy.deepcopy(self.desired), "reported": copy.deepcopy(self.reported)}

    def patch_twin_reported_properties(self, reported_properties_patch: dict) -> None:
        self.sent.append(copy.deepcopy(reported_properties_patch))
        _merge(self.reported, copy.deepcopy(reported_properties_patch))

    def shutdown(self) -> None:
        self.is_shut_down = True

    # the service side
    def service_update(self, patch: dict, deliver: bool = True) -> dict:
        _merge(self.desired, copy.deepcopy(patch))
        self.desired["$version"] += 1
        sent = {**copy.deepcopy(patch), "$version": self.desired["$version"]}
        if deliver and self.on_twin_desired_properties_patch_received is not None:
            self.on_twin_desired_properties_patch_received(sent)
        return sent


class FakeIoTHub:
    """The HubClient calls AzureHub.observe makes when the ring has no configuration with metric results:
    live queries over `devices` (device twins, by tags) and `devices.modules` (module twins)."""

    def __init__(self) -> None:
        self.devices: dict[str, dict] = {}
        self.modules: dict[str, FakeModuleClient] = {}
        self.queries: list[str] = []

    def add(self, device_id: str, ring: str, client: FakeModuleClient) -> None:
        self.devices[device_id] = {"deviceId": device_id, "tags": {"ring": ring}}
        self.modules[device_id] = client

    def list_configurations(self) -> list[dict]:
        return []

    def get_configuration(self, cid: str) -> dict | None:
        return None

    def query(self, sql: str, limit: int | None = None) -> list[dict]:
        self.queries.append(sql)
        modules = [
            {"deviceId": d, "moduleId": AGENT_MODULE, "properties": {"reported": copy.deepcopy(c.reported)}}
            for d, c in self.modules.items()
        ]
        rows = run_query(sql, list(self.devices.values()), modules)
        return rows[:limit] if limit else rows


# -- helpers -------------------------------------------------------------------------------------------------------
def ring_desired(v: DesiredModel, http_store, sas: str = SAS) -> DesiredModel:
    """The DesiredModel the Azure gate deploys: rollout id as the platform forms it, artifact in a store that
    answers only requests carrying the SAS."""
    path = f"/models/{MODEL}/{v.sha256}.onnx"
    http_store.files[f"{path}?{sas}"] = (artifact_bytes(v), None)
    base = f"http://127.0.0.1:{http_store.server.server_address[1]}{path}"
    return dataclasses.replace(v, uri=base, rollout=rollout_id(SPEC.rollout, v))


def module_twin_desired(desired: DesiredModel | None, pem: bytes, key_id: str | None = None, sas: str | None = SAS) -> dict:
    """properties.desired of the agent module twin, built by the platform's code: base deployment ⊕ ring layer."""
    trust = {"keyId": key_id or key_id_of(load_public_key(pem, "test")), "publicKeyPem": pem.decode()}
    base = base_manifest(agent=AGENT, runtime="1.5", agent_schema="1.1", hub_schema="1.2", trust=trust, store_sas=sas)
    layers = [ring_layer(agent=AGENT, agent_schema="1.1", desired=desired, ring_key=SPEC.key)] if desired else []
    return effective_manifest(base, *layers)[AGENT_MODULE]["properties.desired"]


def connected(desired: dict, reported: dict | None = None) -> tuple[FakeModuleClient, IoTEdgeTransport]:
    client = FakeModuleClient(desired, reported)
    transport = IoTEdgeTransport(client)
    transport.connect()
    return client, transport


def documented_reported_fields() -> set[str]:
    """The field names docs/azure.md lists for properties.reported.models.<key>."""
    text = (REPO / "docs" / "azure.md").read_text()
    sentence = text[text.index("Reported, under") : text.index("When a model leaves the desired properties")]
    return {w for w in re.findall(r"`([A-Za-z0-9]+)`", sentence)} - {"ok", "failed"}


@pytest.fixture
def make(tmp_path, keys):
    made: list[DeviceAgent] = []

    def agent(transport, name: str, pem: bytes | None = None) -> DeviceAgent:
        a = DeviceAgent(name, MODEL, tmp_path / name, pem or keys.pem, transport)
        made.append(a)
        return a

    yield agent
    for a in made:
        a.close()


# -- desired ---------------------------------------------------------------------------------------------------------
def test_the_platforms_twin_becomes_the_desired_model_with_the_sas_appended(keys, v110, http_store):
    want = ring_desired(v110, http_store)
    _, transport = connected(module_twin_desired(want, keys.pem))
    got = transport.desired("cam-1", MODEL)
    assert got == dataclasses.replace(want, uri=f"{want.uri}?{SAS}")
    assert transport.desired("cam-1", "other-model") is None


def test_the_sas_reaches_the_store_and_never_a_log_or_a_report(keys, v110, http_store, make, caplog):
    caplog.set_level(logging.DEBUG)
    want = ring_desired(v110, http_store)
    client, transport = connected(module_twin_desired(want, keys.pem))
    good = make(transport, "cam-1")
    assert good.sync() and good.current_version == "1.1.0"  # the store answers only with the SAS

    bad_client, bad_transport = connected(module_twin_desired(want, keys.pem, sas=SAS.replace("sp=r", "sp=w")))
    bad = make(bad_transport, "cam-2")
    bad.sync()
    bad.report()
    entry = bad_client.reported["models"][model_key(MODEL)]
    assert entry["status"] == "failed" and entry["error"].startswith("download failed: HTTP 404 Not Found from http://")
    assert entry["error"].endswith("?<redacted>")
    assert SECRET not in json.dumps(bad_client.sent) and SECRET not in json.dumps(client.sent)
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


def test_the_sas_is_never_sent_over_plain_http_to_another_host(keys, v110):
    far = dataclasses.replace(v110, uri="http://store.example.com/models/detector/x.onnx", rollout="detector@1.1.0+x")
    _, transport = connected(module_twin_desired(far, keys.pem))
    with pytest.raises(ValueError, match="only ever sent over TLS") as err:
        transport.desired("cam-1", MODEL)
    assert SECRET not in str(err.value)


def test_patches_update_the_desired_state(keys, v100, v110, http_store):
    one, two = ring_desired(v100, http_store), ring_desired(v110, http_store)
    client, transport = connected(module_twin_desired(one, keys.pem))
    assert transport.desired("cam-1", MODEL).version == "1.0.0"

    sent = client.service_update({"models": {model_key(MODEL): module_twin_desired(two, keys.pem)["models"][model_key(MODEL)]}})
    assert transport.desired("cam-1", MODEL) == dataclasses.replace(two, uri=f"{two.uri}?{SAS}")
    assert not transport.refresh()  # in step with the twin: no read needed

    client.on_twin_desired_properties_patch_received({**sent, "models": {model_key(MODEL): {"version": "0.0.1"}}})
    assert transport.desired("cam-1", MODEL).version == "1.1.0"  # a replayed (old $version) patch is ignored

    client.service_update({"store": {"sasToken": "sv=new&sig=rotated"}}, deliver=False)  # missed while offline
    client.service_update({"models": {"other": {"model": "other"}}})  # $version gap
    assert transport.desired("cam-1", MODEL).uri.endswith("?" + SAS)
    assert transport.refresh() and transport.desired("cam-1", MODEL).uri.endswith("?sv=new&sig=rotated")

    client.service_update({"store": {"sasToken": SAS}}, deliver=False)
    client.on_connection_state_change()  # reconnected: patches sent meanwhile are not replayed
    assert transport.refresh() and transport.desired("cam-1", MODEL).uri.endswith("?" + SAS)

    client.service_update({"models": {model_key(MODEL): None}})
    assert transport.desired("cam-1", MODEL) is None


def test_a_patch_racing_the_first_twin_read_neither_truncates_nor_is_lost(keys, v110, http_store):
    client = FakeModuleClient(module_twin_desired(ring_desired(v110, http_store), keys.pem))
    read = client.get_twin

    def racing():
        twin = read()
        client.service_update({"store": {"sasToken": "sv=new&sig=rotated"}})  # delivered while the read is in flight
        return twin

    client.get_twin = racing
    transport = IoTEdgeTransport(client)
    transport.connect()
    assert transport.desired("cam-1", MODEL).uri.endswith("?" + SAS)  # the whole document, not the patch alone
    client.get_twin = read
    assert transport.refresh() and transport.desired("cam-1", MODEL).uri.endswith("?sv=new&sig=rotated")


def test_an_unreachable_hub_is_retried_with_backoff_and_the_cache_kept(keys, v110, http_store):
    now = [0.0]
    client = FakeModuleClient(module_twin_desired(ring_desired(v110, http_store), keys.pem))
    transport = IoTEdgeTransport(client, clock=lambda: now[0])
    transport.connect()
    client.get_twin = lambda: (_ for _ in ()).throw(ConnectionError("no route to the edge hub"))
    client.on_connection_state_change()
    with pytest.raises(ConnectionError):
        transport.refresh()
    assert transport.refresh() is False  # backing off: not asked again at every sync period
    assert transport.desired("cam-1", MODEL).version == "1.1.0"
    now[0] += 2.5
    with pytest.raises(ConnectionError):
        transport.refresh()


# -- manifests longer than a twin string ----------------------------------------------------------------------------
def publish_large(root, keys, version: str) -> DesiredModel:
    """A legitimately long model.yaml: many evaluation metrics and hardware targets, and a non-ASCII description."""
    metrics = [
        Metric(name=f"recall_class_{i:03d}", value=round(0.5 + i / 1000, 4), dataset=f"field-eval-2025 (site {i}, Kamerahöhe 3 m)")
        for i in range(70)
    ]
    targets = [
        HardwareProfile(name=f"edge-box-{i:02d}", arch="arm64", execution_providers=["CPUExecutionProvider"], memory_mb=256, storage_mb=64)
        for i in range(12)
    ]
    model_dir = root / version / MODEL
    add_version(
        model_dir,
        SAMPLES / "detector-1.1.0.onnx",
        version,
        metrics=metrics,
        targets=[TARGET, *targets],
        description="Détecteur de canal dominant — évalué sur 70 classes",
    )
    mdir = ModelDir(model_dir)
    sign_model_dir(mdir, keys.signer)
    manifest = mdir.load()
    return DesiredModel(
        model=MODEL,
        version=version,
        sha256=manifest.sha256,
        size=manifest.size,
        uri=mdir.artifact_path(manifest).as_uri(),
        manifest=mdir.manifest_bytes().decode(),
        signature=mdir.signature_path.read_text(),
        rollout="detector-rollout",
    )


def padded(v: DesiredModel, size: int, keys) -> DesiredModel:
    """`v` with its manifest padded by a YAML comment to exactly `size` UTF-8 bytes, ending in a two-byte character, re-signed."""
    text = v.manifest + "#"
    text += "x" * (size - len(text.encode()) - 2) + "é"
    assert len(text.encode()) == size
    return dataclasses.replace(v, manifest=text, signature=sign_bytes(keys.signer, text.encode()).to_bytes().decode())


def served_manifest(state_dir) -> bytes:
    pointer = json.loads((state_dir / MODEL / "current.json").read_text())
    return (state_dir / MODEL / "slots" / pointer["current"]["slot"] / "model.yaml").read_bytes()


def test_a_manifest_over_4_kb_reaches_the_agent_in_chunks_verifies_and_installs(tmp_path, keys, http_store, make):
    want = ring_desired(publish_large(tmp_path / "published", keys, "1.5.0"), http_store)
    assert len(want.manifest.encode()) > 2 * TWIN_STRING_LIMIT
    twin = module_twin_desired(want, keys.pem)
    entry = twin["models"][model_key(MODEL)]
    pieces = [entry[k] for k in ("manifest", "manifest01", "manifest02")]
    assert entry["manifestChunks"] == 3 and all(len(p.encode()) <= TWIN_STRING_LIMIT for p in pieces)
    assert (
        check_manifest({AGENT_MODULE: {"properties.desired": twin}}, contract=False) == []
    )  # IoT Hub's twin limits (the uri is http here)
    client, transport = connected(twin)
    agent = make(transport, "cam-1")
    assert agent.sync() and agent.current_version == "1.5.0"
    assert served_manifest(tmp_path / "cam-1") == want.manifest.encode()  # the signed bytes, reassembled exactly
    agent.report()
    assert client.reported["models"][model_key(MODEL)]["status"] == "ok"


@pytest.mark.parametrize("size,chunks", [(TWIN_STRING_LIMIT, 1), (TWIN_STRING_LIMIT + 1, 2)])
def test_the_4096_byte_boundary(tmp_path, keys, v110, http_store, make, size, chunks):
    want = ring_desired(padded(v110, size, keys), http_store)
    entry = module_twin_desired(want, keys.pem)["models"][model_key(MODEL)]
    assert entry["manifestChunks"] == chunks and ("manifest01" in entry) == (chunks == 2)
    if chunks == 2:
        assert entry["manifest01"] == "é" and len(entry["manifest"].encode()) == TWIN_STRING_LIMIT - 1  # not cut inside "é"
    _, transport = connected(module_twin_desired(want, keys.pem))
    agent = make(transport, "cam-1")
    assert agent.sync() and agent.current_version == "1.1.0"
    assert served_manifest(tmp_path / "cam-1") == want.manifest.encode()


def test_chunks_a_longer_manifest_left_behind_are_ignored(tmp_path, keys, publisher, http_store, make):
    big = ring_desired(publish_large(tmp_path / "published", keys, "1.5.0"), http_store)
    small = ring_desired(publisher.publish("1.6.0", "detector-1.1.0.onnx"), http_store)
    client, transport = connected(module_twin_desired(big, keys.pem))
    agent = make(transport, "cam-1")
    assert agent.sync() and agent.current_version == "1.5.0"
    # a notification carrying the whole new desired properties, without nulls for the keys it no longer has
    client.desired = {**module_twin_desired(small, keys.pem), "$version": client.desired["$version"] + 1}
    client.on_twin_desired_properties_patch_received(copy.deepcopy(client.desired))
    assert "manifest02" not in transport.models()[model_key(MODEL)]  # the layer set the entry whole: it replaced the old
    assert transport.desired("cam-1", MODEL) == dataclasses.replace(small, uri=f"{small.uri}?{SAS}")
    # a partial patch of the entry merges (a service-side update), and a chunk beyond the count is still ignored
    client.service_update({"models": {model_key(MODEL): {"manifest02": "left over"}}})
    assert "manifest02" in transport.models()[model_key(MODEL)]
    assert transport.desired("cam-1", MODEL) == dataclasses.replace(small, uri=f"{small.uri}?{SAS}")
    assert agent.sync() and agent.current_version == "1.6.0"


def test_a_missing_chunk_is_named_and_nothing_is_installed(tmp_path, keys, http_store, make):
    want = ring_desired(publish_large(tmp_path / "published", keys, "1.5.0"), http_store)
    twin = module_twin_desired(want, keys.pem)
    del twin["models"][model_key(MODEL)]["manifest01"]
    _, transport = connected(twin)
    with pytest.raises(ValueError, match=r"properties.desired.models.detector lacks 'manifest01'"):
        transport.desired("cam-1", MODEL)
    agent = make(transport, "cam-1")
    assert not agent.sync() and agent.current_version is None


# -- reports and the gate ---------------------------------------------------------------------------------------------
def test_reports_carry_exactly_the_documented_fields(keys, v110, http_store, make):
    want = ring_desired(v110, http_store)
    client, transport = connected(module_twin_desired(want, keys.pem))
    agent = make(transport, "cam-1")
    agent.sync()
    for _ in range(20):
        agent.infer()
    agent.report()
    entry = client.sent[-1]["models"][model_key(MODEL)]
    assert set(entry) == documented_reported_fields()  # every field, null when absent (IoT Hub then drops it)
    absent = {"error", "failedVersion", "deferred"}  # null: nothing failed, nothing held
    assert set(client.reported["models"][model_key(MODEL)]) == documented_reported_fields() - absent
    quality = entry["quality"]  # the 20 requests, bounded as the twin carries them
    assert (quality["n"], quality["timed"], sum(quality["classes"].values()), quality["shadow"], quality["labelled"]) == (
        20,
        20,
        20,
        None,
        None,
    )
    assert {k: v for k, v in entry.items() if k not in ("p99LatencyMs", "quality")} == {
        "version": "1.1.0",
        "sha256": v110.sha256,
        "status": "ok",
        "error": None,
        "failedVersion": None,
        "inferences": 20,
        "errors": 0,
        "invalidOutputs": 0,
        "agentVersion": AGENT_VERSION,
        "ring": SPEC.key,
        "rollout": want.rollout,
        "variant": "fp32",
        "deferred": None,
    }
    assert entry["p99LatencyMs"] > 0


def test_the_gate_counts_adopted_and_failed_devices_from_what_agents_report(tmp_path, keys, v100, v110, http_store, make):
    want = ring_desired(v110, http_store)
    twin = module_twin_desired(want, keys.pem)
    hub = FakeIoTHub()

    ok_client, ok = connected(twin)  # takes 1.1.0
    adopted = make(ok, "cam-ok")
    adopted.sync()
    for _ in range(30):
        adopted.infer()
    adopted.report()

    bad_client, bad = connected(twin)  # trusts another key: the signature does not verify
    refused = make(bad, "cam-bad", pem=keys.other.public_key_pem())
    refused.sync()
    refused.report()

    old_client, old = connected(twin)  # still serves 1.0.0: has not synced since 1.1.0 was set
    seed = DeviceAgent("cam-old", MODEL, tmp_path / "cam-old", keys.pem, FakeTransport(v100))
    seed.sync()
    seed.close()
    behind = make(old, "cam-old")
    behind.start()
    behind.report()

    trust_client = FakeModuleClient(module_twin_desired(want, keys.pem, key_id="sha256:" + "0" * 64))
    untrusting = IoTEdgeTransport(trust_client)
    untrusting.connect()
    EdgeSupervisor(untrusting, "cam-trust", tmp_path / "cam-trust", threaded=False).step()

    other_client, other = connected({**twin, "models": {model_key(MODEL): {**twin["models"][model_key(MODEL)], "ring": "detector.early"}}})
    elsewhere = make(other, "cam-early")
    elsewhere.sync()
    elsewhere.report()

    for name, client, ring in (
        ("cam-ok", ok_client, "canary"),
        ("cam-bad", bad_client, "canary"),
        ("cam-old", old_client, "canary"),
        ("cam-trust", trust_client, "canary"),
        ("cam-early", other_client, "early"),
    ):
        hub.add(name, ring, client)
    gate = AzureHub(hub, {SPEC.key: SPEC}, MemoryProgressStore(), poll_seconds=0, metrics_timeout=0)
    seen = gate.observe(RingTarget(SPEC.rollout, SPEC.ring, 0, SPEC.key), want, since=0)

    assert (seen.devices, seen.adopted, seen.failed, seen.reporting) == (4, 1, 2, 4)
    assert (seen.inferences, seen.errors, seen.invalid_outputs) == (30, 0, 0) and seen.p99_latency_ms > 0
    reasons = dict(seen.failures)
    assert reasons["cam-bad"].startswith("signature does not verify: signed by key")
    assert reasons["cam-trust"].startswith("trusted key refused: trust.keyId sha256:000")
    assert "version" not in trust_client.reported["models"][model_key(MODEL)]  # null: it serves nothing
    assert not (tmp_path / "cam-trust" / MODEL).exists()


def test_the_gate_names_the_device_whose_agent_reports_nan_outputs(tmp_path, keys, v110, v120_nan, http_store, make):
    from components.rollout.gate import evaluate
    from components.rollout.report import offender_text
    from components.rollout.spec import GateConfig

    hub = FakeIoTHub()
    for name, version in (("cam-good", v110), ("cam-nan", v120_nan)):
        want = ring_desired(version, http_store)
        client, transport = connected(module_twin_desired(want, keys.pem))
        agent = make(transport, name)
        agent.sync()
        for _ in range(10):
            agent.infer()
        agent.report()
        hub.add(name, "canary", client)
    nan = ring_desired(v120_nan, http_store)
    gate = AzureHub(hub, {SPEC.key: SPEC}, MemoryProgressStore(), gates={SPEC.key: GateConfig()}, poll_seconds=0, metrics_timeout=0)
    seen = gate.observe(RingTarget(SPEC.rollout, SPEC.ring, 0, SPEC.key), nan, since=0)
    assert (seen.adopted, seen.invalid_outputs) == (1, 10)  # cam-good serves 1.1.0: pending for 1.2.0
    assert seen.offenders == (("cam-nan", "invalid_output_share", 1.0),)
    verdict = evaluate(GateConfig(), seen, since_deploy=0, soak_started=None, now=1)
    assert verdict.outcome == "fail" and [offender_text(o) for o in verdict.offenders] == ["cam-nan NaN/Inf outputs 100.00% (max 0.00%)"]


def test_a_model_leaving_the_twin_clears_its_reported_entry(keys, v110, http_store, make):
    want = ring_desired(v110, http_store)
    client, transport = connected(module_twin_desired(want, keys.pem), reported={"models": {"retired": {"version": "0.9.0"}}})
    assert client.sent == [{"models": {"retired": None}}]  # left by an earlier run: removed at connect
    agent = make(transport, "cam-1")
    agent.sync()
    agent.report()
    assert model_key(MODEL) in client.reported["models"]

    client.service_update({"models": {model_key(MODEL): None}})
    assert agent.sync() and agent.current_version is None
    agent.report()
    assert client.sent[-1] == {"models": {model_key(MODEL): None}}
    assert client.reported["models"] == {}
    agent.report()
    assert len([p for p in client.sent if p == {"models": {model_key(MODEL): None}}]) == 1


# -- trust -------------------------------------------------------------------------------------------------------------
def test_trust_from_the_twin_only_when_its_key_id_matches(keys):
    kid = key_id_of(load_public_key(keys.pem, "test"))
    twin = {"keyId": kid, "publicKeyPem": keys.pem.decode()}
    assert resolve_trust(None, twin).key_id == kid
    assert resolve_trust(None, twin, pinned_key_id=kid).source == "module twin trust"
    with pytest.raises(TrustRefused, match=r"trust.keyId sha256:0+ does not match the key in trust.publicKeyPem \(sha256:"):
        resolve_trust(None, {**twin, "keyId": "sha256:" + "0" * 64})
    with pytest.raises(TrustRefused, match="not the pinned --trusted-key-id"):
        resolve_trust(None, twin, pinned_key_id="sha256:" + "1" * 64)
    with pytest.raises(TrustRefused, match="no trusted key"):
        resolve_trust(None, None)
    other = keys.other.public_key_pem()
    chosen = resolve_trust(other, {**twin, "keyId": "sha256:" + "0" * 64})  # a key file wins over the twin
    assert (chosen.pem, chosen.source) == (other, "--public-key")


def test_the_supervisor_runs_one_agent_per_model_on_one_endpoint_and_stops_removed_ones(tmp_path, keys, v110, http_store):
    """The module's agents serve the device's applications on one endpoint, and report the traffic they send."""
    want = ring_desired(v110, http_store)
    client, transport = connected(module_twin_desired(want, keys.pem))
    registry = ModelRegistry()
    sup = EdgeSupervisor(transport, "cam-1", tmp_path / "state", sync_seconds=0.05, report_seconds=0.05, registry=registry)
    endpoint = InferenceEndpoint(registry, port=0).start()
    try:
        sup.step()
        assert set(sup.agents) == {MODEL} and sup.trust.source == "module twin trust"
        assert registry.names() == [MODEL]
        deadline = time.monotonic() + 20
        while (client.reported.get("models", {}).get(model_key(MODEL), {}).get("inferences") or 0) == 0:
            assert time.monotonic() < deadline, client.reported
            status, body = oip_infer(endpoint.url, MODEL, np.zeros((1, 3, 224, 224), np.float32))
            assert status in (200, 503), body  # 503 until the first sync has installed the model
            time.sleep(0.02)
        assert client.reported["models"][model_key(MODEL)]["status"] == "ok"

        client.service_update({"models": {model_key(MODEL): None}})
        sup.step()
        assert sup.agents == {} and client.reported["models"] == {}
        assert registry.names() == [] and oip_infer(endpoint.url, MODEL, np.zeros((1, 3, 224, 224), np.float32))[0] == 404
        pointer = json.loads((tmp_path / "state" / MODEL / "current.json").read_text())
        assert pointer["current"] is None and pointer["previous"]["version"] == "1.1.0"
    finally:
        sup.close()
        endpoint.close()


# -- the real SDK and the process ---------------------------------------------------------------------------------------
def test_the_fake_client_has_the_sdks_surface():
    sdk = pytest.importorskip("azure.iot.device", reason="azure-iot-device is not installed (CI installs pyproject's deps only)")
    cls = sdk.IoTHubModuleClient
    for name in ("create_from_edge_environment", "get_twin", "patch_twin_reported_properties", "shutdown"):
        assert callable(getattr(cls, name)) and callable(getattr(FakeModuleClient, name))
    for name in ("on_twin_desired_properties_patch_received", "on_connection_state_change", "connected"):
        assert isinstance(getattr(cls, name), property), name


def test_outside_iot_edge_the_agent_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTEDGE_", "EdgeHub", "EdgeModule"))}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--transport", "iotedge", "--device-id", "cam-1", "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "edgefleet-agent: cannot create the IoT Edge module client:" in proc.stderr


def test_a_windows_quality_leaves_no_class_of_an_earlier_window_in_the_twin_even_after_a_restart(keys, v110, http_store):
    """Twin patches merge: a class the new window did not see must be nulled, or the gate would sum stale counts."""
    from edgefleet_agent.contract.state import DeviceReport
    from edgefleet_agent.contract.telemetry import Predictions

    def report(classes: dict[int, int]) -> DeviceReport:
        preds = Predictions("classes", "scores")
        for c, n in classes.items():
            for _ in range(n):
                preds.add_class(c, 0.9)
        return DeviceReport("cam-1", MODEL, "1.1.0", v110.sha256, "ok", inferences=sum(classes.values()), predictions=preds.to_json())

    desired = module_twin_desired(ring_desired(v110, http_store), keys.pem)
    client, transport = connected(desired)
    transport.report(report({0: 5, 7: 3}))
    transport.report(report({1: 4}))
    held = client.reported["models"][model_key(MODEL)]["quality"]
    assert held["classes"] == {"c1": 4} and held["n"] == 4
    client2, restarted = connected(desired, reported=client.reported)  # a new process: what the twin holds is read back
    restarted.report(report({2: 6}))
    assert client2.reported["models"][model_key(MODEL)]["quality"]["classes"] == {"c2": 6}
    restarted.report(DeviceReport("cam-1", MODEL, "1.1.0", v110.sha256, "ok"))  # no requests at all
    assert "quality" not in client2.reported["models"][model_key(MODEL)]
