"""The Pulumi face of the local platform: dynamic providers called directly, with the inputs the program
declares (taken from the synthesized graph), as the Pulumi engine calls them under `pulumi up`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components.local import providers
from components.local.fleet import LocalFleet, local_devices, register
from components.local.hub import LocalHub
from edgefleet.artifact import verify_artifact
from edgefleet.config import load_stack
from edgefleet.model_add import add_version, parse_metric
from edgefleet.signing import LocalKeySigner, create_key_file, load_public_key
from edgefleet.synth import synth

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


def inputs(graph: dict, name: str) -> dict:
    return next(r["inputs"] for r in graph["resources"] if r["name"] == name)


@pytest.fixture
def deployed(project, monkeypatch):
    """Project copy, its key, and the artifact created through the provider (cwd = project, as under Pulumi)."""
    p = project(devices=20, processes=0)
    monkeypatch.chdir(p)
    create_key_file(p / ".edgefleet" / "keys" / "signing.pem")
    graph = synth(p, "local")
    art = providers.ArtifactProvider().create(inputs(graph, "detector-local-artifact"))
    return p, graph, art


def resolved(graph: dict, name: str, art) -> dict:
    """A ring resource's inputs with the artifact's outputs filled in, as the engine resolves them."""
    props = dict(inputs(graph, name))
    props.update(uri=art.outs["uri"], signature=art.outs["signature"])
    props.pop("after", None)
    return props


def test_artifact_provider_publishes_a_signed_artifact_that_a_device_verifies(deployed):
    p, graph, art = deployed
    path = Path(art.outs["uri"].removeprefix("file://"))
    assert path.is_file() and path.parent.name == "detector" and path.name.endswith(".onnx")
    signer = LocalKeySigner(p / ".edgefleet" / "keys" / "signing.pem")
    manifest = art.outs["manifest"].encode()
    verified = verify_artifact(manifest, art.outs["signature"].encode(), path, load_public_key(signer.public_key_pem(), "k"), "test")
    assert verified.version == "1.0.0"
    again = providers.ArtifactProvider().create(inputs(graph, "detector-local-artifact"))
    assert again.outs["signature"] == art.outs["signature"], "re-publishing must reuse the signature (no spurious diff)"


def test_artifact_diff_replaces_on_a_new_version_and_is_quiet_otherwise(deployed):
    p, graph, art = deployed
    olds = art.outs
    same = providers.ArtifactProvider().diff(art.id, olds, inputs(graph, "detector-local-artifact"))
    assert not same.changes
    add_version(p / "models" / "detector", SAMPLES / "detector-1.1.0.onnx", "1.1.0", metrics=[parse_metric("accuracy=0.9@e", set())])
    news = inputs(synth(p, "local"), "detector-local-artifact")
    diff = providers.ArtifactProvider().diff(art.id, olds, news)
    assert diff.changes and {"version", "sha256", "manifest"} <= set(diff.replaces)


def test_ring_deployment_sets_the_rings_devices_and_nothing_else(deployed):
    p, graph, art = deployed
    cfg, _ = load_stack(p, "local")
    hub = LocalHub(p / cfg.local.hub)
    register(hub, local_devices(cfg))
    out = providers.RingDeploymentProvider().create(resolved(graph, "detector-canary-deployment", art))
    canary = out.outs["devices"]
    assert len(canary) == 2                                   # 10% of 20
    desired = hub.desired_for_devices([d.id for d in local_devices(cfg)], "detector")
    assert set(desired) == set(canary) and all(d.version == "1.0.0" for d in desired.values())
    diff = providers.RingDeploymentProvider().diff(out.id, out.outs, resolved(graph, "detector-canary-deployment", art))
    assert not diff.changes
    changed = {**resolved(graph, "detector-canary-deployment", art), "provider_version": "0"}
    diff = providers.RingDeploymentProvider().diff(out.id, out.outs, changed)
    assert diff.changes and diff.replaces == []
    updated = providers.RingDeploymentProvider().update(out.id, out.outs, changed)
    assert updated.outs["devices"] == canary, "an in-place update must keep the resource's outputs"


@pytest.mark.slow
def test_gate_provider_passes_a_healthy_ring_and_fails_the_update_with_the_reason_for_a_bad_one(deployed):
    p, graph, art = deployed
    cfg, _ = load_stack(p, "local")
    hub = LocalHub(p / cfg.local.hub)
    register(hub, local_devices(cfg))
    signer = LocalKeySigner(p / ".edgefleet" / "keys" / "signing.pem")
    fleet = LocalFleet(cfg, p / cfg.local.hub, p / ".edgefleet" / "local" / "devices", signer.public_key_pem(), ["detector"], sim_period=0.3)
    with fleet:
        for ring in ("canary", "early", "broad"):
            providers.RingDeploymentProvider().create(resolved(graph, f"detector-{ring}-deployment", art))
            gate = providers.RingGateProvider().create(resolved(graph, f"detector-{ring}-gate", art))
            assert gate.outs["gate"].endswith(f":{ring}:passed")
        assert hub.rollouts("detector")[-1]["status"] == "succeeded"

        add_version(p / "models" / "detector", SAMPLES / "detector-1.2.0-nan.onnx", "1.2.0", metrics=[parse_metric("accuracy=0.9@e", set())])
        graph2 = synth(p, "local")
        art2 = providers.ArtifactProvider().create(inputs(graph2, "detector-local-artifact"))
        providers.RingDeploymentProvider().create(resolved(graph2, "detector-canary-deployment", art2))
        with pytest.raises(RuntimeError) as failed:
            providers.RingGateProvider().create(resolved(graph2, "detector-canary-gate", art2))
    message = str(failed.value)
    assert "halted at ring 'canary'" in message and "invalid (NaN/Inf) outputs" in message
    assert "Rolled back rings ['canary'] to 1.0.0" in message and "never deployed: 2 later ring(s)" in message


@pytest.mark.parametrize("cls", [providers.ModelStoreProvider, providers.SigningKeyProvider, providers.ArtifactProvider,
                                 providers.RingDeploymentProvider, providers.RingGateProvider])
def test_each_provider_pickles_with_pulumis_serializer_and_loads_in_a_fresh_interpreter(cls):
    """Pulumi ships the provider to another process with dill; it must load there from the installed package."""
    blob = serialize_provider(cls())
    code = ("import base64, sys, dill; p = dill.loads(base64.b64decode(sys.stdin.read())); "
            "print(type(p).__module__, type(p).__name__)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [cls.__module__, cls.__name__]
    assert len(base64.b64decode(blob)) < 20_000, "the provider captured more than its code (credentials, clients?)"
