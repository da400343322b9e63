"""The Pulumi face of the local platform: dynamic providers called directly, with the inputs the program
declares (taken from the synthesized graph), as the Pulumi engine calls them under `pulumi up`."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components.local import providers
from components.local.fleet import LocalFleet, local_devices, lock_holder, lock_path, register
from components.local.hub import LocalHub
from components.local.signer import LocalKeySigner
from components.local.up import serve
from edgefleet.config import load_stack
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.artifact import verify_artifact
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import load_public_key

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


def inputs(graph: dict, name: str) -> dict:
    return next(r["inputs"] for r in graph["resources"] if r["name"] == name)


@pytest.fixture
def deployed(project, monkeypatch):
    """Project copy, its key, and the artifact created through the provider (cwd = project, as under Pulumi)."""
    p = project(devices=20, processes=0)
    monkeypatch.chdir(p)
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
    assert len(canary) == 2  # 10% of 20
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
    fleet = LocalFleet(
        cfg, p / cfg.local.hub, p / ".edgefleet" / "local" / "devices", signer.public_key_pem(), ["detector"], sim_period=0.3
    )
    with fleet:
        for ring in ("canary", "early", "broad"):
            providers.RingDeploymentProvider().create(resolved(graph, f"detector-{ring}-deployment", art))
            gate = providers.RingGateProvider().create(resolved(graph, f"detector-{ring}-gate", art))
            assert gate.outs["gate"].endswith(f":{ring}:passed")
        assert hub.rollouts("detector")[-1]["status"] == "succeeded"

        add_version(
            p / "models" / "detector", SAMPLES / "detector-1.2.0-nan.onnx", "1.2.0", metrics=[parse_metric("accuracy=0.9@e", set())]
        )
        graph2 = synth(p, "local")
        art2 = providers.ArtifactProvider().create(inputs(graph2, "detector-local-artifact"))
        providers.RingDeploymentProvider().create(resolved(graph2, "detector-canary-deployment", art2))
        with pytest.raises(RuntimeError) as failed:
            providers.RingGateProvider().create(resolved(graph2, "detector-canary-gate", art2))
    message = str(failed.value)
    assert "halted at ring 'canary'" in message and "invalid (NaN/Inf) outputs" in message
    assert "Rolled back rings ['canary'] to 1.0.0" in message and "never deployed: 2 later ring(s)" in message


# -- RingGateProvider called directly, with `edgefleet fleet run` (serve) as the other terminal ---------------
@pytest.fixture
def fleet_run(project, monkeypatch):
    """A short-soak project copy (long enough for one inference sweep: metric gates need inferences), its artifact published through the provider, and a function that starts
    `edgefleet fleet run` in a thread (stopped at teardown)."""
    p = project(devices=12, processes=0, soak=0.5)
    monkeypatch.chdir(p)
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start() -> None:
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=serve, args=(p, "local", *load_stack(p, "local"), stop), kwargs={"on_ready": lambda *_: ready.set()}, daemon=True
        )
        thread.start()
        assert ready.wait(30), "the fleet did not start"
        stops.append((stop, thread))

    yield p, start
    for stop, thread in stops:
        stop.set()
        thread.join(30)


def published(p: Path) -> tuple[dict, object]:
    graph = synth(p, "local")
    return graph, providers.ArtifactProvider().create(inputs(graph, "detector-local-artifact"))


def roll(p: Path) -> list:
    """What `pulumi up` does for one model version: deployment then gate, ring after ring."""
    graph, art = published(p)
    gates = []
    for ring in ("canary", "early", "broad"):
        providers.RingDeploymentProvider().create(resolved(graph, f"detector-{ring}-deployment", art))
        gates.append(providers.RingGateProvider().create(resolved(graph, f"detector-{ring}-gate", art)))
    return gates


def test_gate_provider_create_with_no_devices_registered_says_to_run_edgefleet_fleet_run(fleet_run):
    p, _ = fleet_run
    graph, art = published(p)
    for name in ("detector-canary-deployment", "detector-canary-gate"):
        cls = providers.RingDeploymentProvider if name.endswith("deployment") else providers.RingGateProvider
        with pytest.raises(RuntimeError) as err:
            cls().create(resolved(graph, name, art))
        assert "ring 'canary' of rollout 'detector' has no devices in the local hub" in str(err.value)
        assert "Run `edgefleet fleet run --stack local` in another terminal" in str(err.value)


def test_gate_provider_create_with_devices_but_no_fleet_running_fails_at_once_instead_of_timing_out(fleet_run):
    p, _ = fleet_run
    cfg, _ = load_stack(p, "local")
    register(LocalHub(p / cfg.local.hub), local_devices(cfg))
    graph, art = published(p)
    providers.RingDeploymentProvider().create(resolved(graph, "detector-canary-deployment", art))
    with pytest.raises(RuntimeError) as err:
        providers.RingGateProvider().create(resolved(graph, "detector-canary-gate", art))
    assert "no local fleet is running" in str(err.value) and "edgefleet fleet run --stack local" in str(err.value)


def test_gate_provider_create_passes_each_ring_and_update_reruns_without_redeploying(fleet_run):
    p, start = fleet_run
    start()
    assert lock_holder(lock_path(p / ".edgefleet" / "local" / "hub.sqlite", "fleet")) == str(os.getpid())
    gates = roll(p)
    assert [g.outs["gate"].rsplit(":", 2)[1:] for g in gates] == [["canary", "passed"], ["early", "passed"], ["broad", "passed"]]
    assert gates[0].outs["measured"]["adopted"] == gates[0].outs["measured"]["devices"] > 0
    hub = LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")
    [record] = hub.rollouts("detector")
    assert record["status"] == "succeeded"
    events = len(record["events"])

    graph, art = published(p)
    news = {**resolved(graph, "detector-early-gate", art), "provider_version": "3"}
    diff = providers.RingGateProvider().diff(gates[1].id, gates[1].outs, news)
    assert diff.changes and diff.replaces == [], "a provider change alone is an in-place update"
    updated = providers.RingGateProvider().update(gates[1].id, gates[1].outs, news)
    assert updated.outs["gate"] == gates[1].outs["gate"] and updated.outs["measured"] == gates[1].outs["measured"]
    assert len(hub.rollouts("detector")[-1]["events"]) == events, "an update of an up-to-date gate must not deploy or gate again"


def test_gate_provider_diff_replaces_on_a_new_version_or_gate_and_is_quiet_otherwise(deployed):
    p, graph, art = deployed
    olds = {**resolved(graph, "detector-canary-gate", art), "gate": "g", "measured": {}}
    gate = providers.RingGateProvider()
    assert not gate.diff("id", olds, resolved(graph, "detector-canary-gate", art)).changes
    stricter = {**resolved(graph, "detector-canary-gate", art)}
    stricter["gate_config"] = {**stricter["gate_config"], "success_share": 0.5}
    assert gate.diff("id", olds, stricter).replaces == ["gate_config"]
    add_version(p / "models" / "detector", SAMPLES / "detector-1.1.0.onnx", "1.1.0", metrics=[parse_metric("accuracy=0.9@e", set())])
    newer = resolved(synth(p, "local"), "detector-canary-gate", art)
    assert {"version", "sha256"} <= set(gate.diff("id", olds, newer).replaces)


def test_under_pulumi_a_declared_older_version_rolls_back_and_a_rejected_one_is_never_redeployed(fleet_run):
    p, start = fleet_run
    start()
    model_dir = p / "models" / "detector"
    shutil.copytree(model_dir, p.parent / "v1.0.0")
    roll(p)
    add_version(model_dir, SAMPLES / "detector-1.1.0.onnx", "1.1.0", metrics=[parse_metric("accuracy=0.9@e", set())])
    roll(p)
    hub = LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")

    shutil.rmtree(model_dir)
    shutil.copytree(p.parent / "v1.0.0", model_dir)
    roll(p)
    record = hub.rollouts("detector")[-1]
    assert (record["status"], record["version"], record["previous_version"]) == ("succeeded", "1.0.0", "1.1.0")
    assert all(s["desired"].version == "1.0.0" and s["desired"].is_rollback for s in hub.ring_states())
    assert {r.version for r in hub.reports("detector").values()} == {"1.0.0"}

    add_version(model_dir, SAMPLES / "detector-1.2.0-nan.onnx", "1.2.0", metrics=[parse_metric("accuracy=0.9@e", set())])
    graph, art = published(p)
    providers.RingDeploymentProvider().create(resolved(graph, "detector-canary-deployment", art))
    with pytest.raises(RuntimeError) as failed:
        providers.RingGateProvider().create(resolved(graph, "detector-canary-gate", art))
    assert "halted at ring 'canary'" in str(failed.value)
    canary_after_rollback = next(s["desired"] for s in hub.ring_states() if s["ring"] == "canary")
    with pytest.raises(RuntimeError) as refused:
        providers.RingDeploymentProvider().create(resolved(graph, "detector-canary-deployment", art))
    assert "failed the gate of ring 'canary'" in str(refused.value) and "--version 1.2.1" in str(refused.value)
    assert next(s["desired"] for s in hub.ring_states() if s["ring"] == "canary") == canary_after_rollback, (
        "a version a gate rejected must not reach the canary again"
    )


@pytest.mark.parametrize(
    "cls",
    [
        providers.ModelStoreProvider,
        providers.SigningKeyProvider,
        providers.ArtifactProvider,
        providers.RingDeploymentProvider,
        providers.RingGateProvider,
    ],
)
def test_each_provider_pickles_with_pulumis_serializer_and_loads_in_a_fresh_interpreter(cls):
    """Pulumi ships the provider to another process with dill; it must load there from the installed package."""
    blob = serialize_provider(cls())
    code = "import base64, sys, dill; p = dill.loads(base64.b64decode(sys.stdin.read())); print(type(p).__module__, type(p).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""}, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [cls.__module__, cls.__name__]
    assert len(base64.b64decode(blob)) < 20_000, "the provider captured more than its code (credentials, clients?)"


def test_the_signing_key_provider_never_creates_a_key_under_pulumi_up(project, monkeypatch):
    """Under `pulumi up --stack local` a missing key file used to be created on the spot; devices would then be told to
    trust it. Now the provider fails and says how to restore or create it deliberately."""
    p = project(devices=4, processes=0)
    monkeypatch.chdir(p)
    key = p / ".edgefleet" / "keys" / "signing.pem"
    key.unlink()
    key.with_name("signing.pub.pem").unlink()
    with pytest.raises(EdgefleetError, match="the signing key of stack 'local' is missing") as err:
        providers.SigningKeyProvider().create(inputs(synth(p, "local"), "local-signing-keyfile"))
    assert "edgefleet keys create" in err.value.fix and not key.exists()


def test_ring_deployment_outside_its_groups_window_leaves_the_devices_to_the_gate(deployed):
    """The ring resource points devices at the version only while their group's maintenance window is open: outside
    it, the ring's gate (the engine) waits for the window and deploys then. The window here opens 12 hours from now."""
    from datetime import datetime, timezone

    p, graph, art = deployed
    cfg, _ = load_stack(p, "local")
    hub = LocalHub(p / cfg.local.hub)
    register(hub, local_devices(cfg))
    props = resolved(graph, "detector-canary-deployment", art)
    later = (datetime.now(timezone.utc).hour + 12) % 24
    for group in props["groups"].values():
        group["maintenance_windows"] = [{"cron": f"0 {later} * * *", "minutes": 60}]
    out = providers.RingDeploymentProvider().create(props)
    assert len(out.outs["devices"]) == 2, "the ring's devices are still its outputs"
    assert hub.desired_for_devices([d.id for d in local_devices(cfg)], "detector") == {}, "a swap was ordered outside the window"
