"""The Azure gate end to end against the local IoT Hub: metrics-driven promotion, rollback by re-applying the last
good version under a signed rollback order, and the Key Vault signer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
from azure_testkit import HUB_HOST, KEY, POLICY, FakeKeyVault, SimDevice, StaticToken

from components.azure import manifest as mf
from components.azure.configurations import ConfigurationProvider, HubClient
from components.azure.hub import AzureHub, MemoryProgressStore, hub_from_props, run_gate
from components.local.signer import LocalKeySigner, create_key_file
from components.rollout.engine import rollout_id
from components.rollout.spec import GateConfig, RingConfig
from components.rollout.windows import MaintenanceWindow, Windows
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import Envelope, SignatureError, load_public_key, parse_rollback_order, sign_bytes, verify_bytes
from edgefleet_agent.contract.state import DesiredModel

REPO = Path(__file__).resolve().parents[2]
GATE = GateConfig(soak_seconds=600, deadline_seconds=1800, min_reporting_share=0.9, success_share=0.95, max_failure_share=0.0)
RINGS = [
    RingConfig(name="canary", group="cameras", labels={"ring": "canary"}, gate=GATE),
    RingConfig(name="broad", group="cameras", gate=GATE),
]
AGENT = mf.AgentModule(image="efdev.azurecr.io/edgefleet-agent:0.1.0", agent_version="0.1.0")


class TickingClock:
    """The engine's clock: each sleep is IoT Hub's evaluation cycle passing (devices react, metrics refresh)."""

    def __init__(self, hub) -> None:
        self.t = 1_000.0
        self.hub = hub
        self.on_tick: Callable[[float], None] | None = None  # what the fleet does at each new time, before IoT Hub's cycle

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.on_tick is not None:
            self.on_tick(self.t)
        self.hub.tick()


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path_factory.mktemp("k") / "signing.pem"))


def release(signer, version: str) -> dict:
    text = (REPO / "models" / "detector" / "model.yaml").read_text().replace("version: 1.0.0", f"version: {version}")
    sha = (version.replace(".", "") * 64)[:64]
    return {
        "model": "detector",
        "version": version,
        "sha256": sha,
        "size": 2364,
        "manifest": text,
        "uri": f"https://efdev.blob.core.windows.net/models/detector/{sha}.onnx",
        "signature": sign_bytes(signer, text.encode()).to_bytes().decode(),
    }


@pytest.fixture
def rings() -> list[RingConfig]:
    """The rollout's rings (a test may parametrize `rings` with others)."""
    return RINGS


def base_layer(hub, signer, provider: ConfigurationProvider | None = None) -> dict[str, str]:
    """The cameras group's base layer (the agent module, trusting `signer`) created on `hub`; returns the hub access
    every later layer is created with."""
    access = {"hub_host": HUB_HOST, "endpoint": hub.endpoint, "key_name": POLICY, "hub_key": KEY}
    base = mf.base_manifest(
        agent=AGENT,
        runtime="1.5",
        agent_schema="1.1",
        hub_schema="1.2",
        trust={"keyId": signer.key_id, "publicKeyPem": signer.public_key_pem().decode()},
        store_sas="${secret:storeSas}",
    )
    (provider or ConfigurationProvider()).create(
        {
            **access,
            "id_prefix": "ef-base-cameras",
            "id_hint": "agent-0.1.0",
            "content": {"modulesContent": base},
            "secrets": {"storeSas": "sv=x&sig=y"},
            "target_condition": mf.group_condition({"group": "cameras"}),
            "priority": 10,
            "labels": {mf.BASE_LABEL: "cameras"},
            "metrics": {},
            "exclusive_label": mf.BASE_LABEL,
            "check": "edgefleet-agent",
        }
    )
    return access


def ring_specs(rings, caps: dict[str, int] | None = None, windows: str = "") -> list[mf.RingDeploymentSpec]:
    """Each ring's layered deployment spec over the `cameras` group, as the Azure platform builds them."""
    conditions = mf.ring_conditions([({"group": "cameras"}, [], dict(r.labels)) for r in rings])
    return [
        mf.RingDeploymentSpec(
            rollout="detector",
            ring=r.name,
            index=i,
            model="detector",
            target_condition=conditions[i],
            priority=11,
            agent=AGENT,
            agent_schema="1.1",
            download_cap=(caps or {}).get(r.name),
            windows=windows,
        )
        for i, r in enumerate(rings)
    ]


@pytest.fixture
def caps() -> dict[str, int]:
    """Each ring's download cap as the platform resolves it (ring name -> bytes a second; none: no cap)."""
    return {}


@pytest.fixture
def windows() -> str:
    """The rings' group's maintenance windows document, as the platform puts it in each ring's spec ("": none)."""
    return ""


@pytest.fixture
def fleet(hub, signer, rings, caps, windows):
    for d in ("c1", "c2"):
        hub.devices[d] = SimDevice(tags={"group": "cameras", "ring": "canary"})
    for d in ("b1", "b2", "b3", "b4"):
        hub.devices[d] = SimDevice(tags={"group": "cameras"})
    access = base_layer(hub, signer)
    specs = ring_specs(rings, caps, windows)
    clock = TickingClock(hub)
    store = MemoryProgressStore()

    class Fleet:
        ring_list = rings
        engine_clock = clock

        def azure_hub(self) -> AzureHub:
            return AzureHub(
                HubClient(HUB_HOST, POLICY, KEY, hub.endpoint),
                {s.key: s for s in specs},
                store,
                poll_seconds=30,
                sleep=clock.sleep,
                clock=clock.now,
            )

        def deploy(self, index: int, rel: dict) -> None:
            """What `pulumi up` does for ring `index`: create the ring's layer (Configuration), then run its gate (RingGate)."""
            d = DesiredModel(**{k: rel[k] for k in ("model", "version", "sha256", "size", "uri", "manifest", "signature")})
            d = DesiredModel(**{**d.__dict__, "rollout": rollout_id("detector", d)})
            ConfigurationProvider().create({**access, **mf.ring_configuration(specs[index], d), "check": "edgefleet-agent"})

        def gate(self, index: int, rel: dict) -> dict:
            """The RingGate provider's run: the hub it builds from its inputs (so it knows the rings' gates)."""
            props = {
                **access,
                "rollout": "detector",
                "ring": rings[index].name,
                "index": index,
                "poll_seconds": 30,
                "rings": [r.model_dump(mode="json") for r in rings],
                "ring_specs": [s.to_json() for s in specs],
                **rel,
            }
            return run_gate(props, hub=hub_from_props(props, store, sleep=clock.sleep, clock=clock.now), signer=signer, clock=clock)

        def ring_configs(self, ring: str) -> list[dict]:
            return self.azure_hub().ring_configurations(f"detector.{ring}")

    return Fleet()


def roll_out(fleet, rel) -> dict:
    progress = None
    for i in range(len(fleet.ring_list)):
        fleet.deploy(i, rel)
        progress = fleet.gate(i, rel)
    return progress


def test_a_healthy_version_passes_each_ring_on_the_hubs_metrics(hub, fleet, signer):
    v1 = release(signer, "1.0.0")
    fleet.deploy(0, v1)
    first = fleet.gate(0, v1)
    assert [r["state"] for r in first["rings"]] == ["passed", "pending"]
    assert first["rings"][0]["measured"]["devices"] == 2 and first["rings"][0]["measured"]["adopted"] == 2
    assert {hub.devices[d].reported["models"]["detector"]["version"] for d in ("c1", "c2")} == {"1.0.0"}
    assert "detector" not in hub.devices["b1"].reported.get("models", {})  # broad has not been deployed yet
    fleet.deploy(1, v1)
    done = fleet.gate(1, v1)
    assert done["status"] == "succeeded" and done["rings"][1]["measured"]["devices"] == 4
    assert all(dev.reported["models"]["detector"]["status"] == "ok" for dev in hub.devices.values())
    queries = [r["body"]["query"] for r in hub.requests if r["path"] == "/devices/query"]
    assert queries and not [q for q in queries if q.startswith("SELECT TOP") and " > " in q]  # a healthy ring asks for no offenders


def test_a_canary_device_serving_nan_is_named_in_the_failure_report(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    assert roll_out(fleet, v1)["status"] == "succeeded"
    hub.devices["c2"].metrics["2.0.0"] = {"inferences": 80, "invalidOutputs": 20}  # serves 2.0.0, a quarter of its outputs NaN
    fleet.deploy(0, v2)
    with pytest.raises(RuntimeError) as e:
        fleet.gate(0, v2)
    text = str(e.value)
    assert "halted at ring 'canary'" in text and "invalid (NaN/Inf) outputs 11.11% > max 0.00%" in text
    assert "Offending devices: c2 NaN/Inf outputs 25.00% (max 0.00%)" in text and "c1" not in text.split("Offending devices:")[1]
    assert "to 1.0.0" in text and {hub.devices[d].reported["models"]["detector"]["version"] for d in ("c1", "c2")} == {"1.0.0"}
    (offending,) = [
        q for q in (r["body"]["query"] for r in hub.requests if r["path"] == "/devices/query") if q.startswith("SELECT TOP") and " > " in q
    ]  # only the breached metric was asked about
    assert "invalidOutputs > 0" in offending


def test_a_failing_canary_rolls_back_to_the_last_good_version_under_a_signed_order(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    assert roll_out(fleet, v1)["status"] == "succeeded"
    hub.devices["c1"].refuse.add("2.0.0")
    fleet.deploy(0, v2)
    with pytest.raises(RuntimeError) as e:
        fleet.gate(0, v2)
    text = str(e.value)
    assert "ring 'canary'" in text and "failure share" in text and "c1: refused 2.0.0" in text and "to 1.0.0" in text
    (cfg,) = fleet.ring_configs("canary")  # the failed layer is gone, the rollback layer replaced it
    assert cfg["labels"]["edgefleet-kind"] == "rollback" and cfg["labels"]["edgefleet-version"] == "1.0.0"
    model = cfg["content"]["modulesContent"][mf.AGENT_MODULE]["properties.desired.models.detector"]
    order = model["rollbackOrder"].encode()
    verify_bytes(
        order, Envelope.parse(model["rollbackSignature"].encode(), "order"), load_public_key(signer.public_key_pem(), "k"), "order"
    )
    assert parse_rollback_order(order, "order")["version"] == "1.0.0" and model["sha256"] == v1["sha256"]
    assert {hub.devices[d].reported["models"]["detector"]["version"] for d in ("c1", "c2")} == {"1.0.0"}
    (broad,) = fleet.ring_configs("broad")  # later rings never saw 2.0.0
    assert broad["labels"]["edgefleet-version"] == "1.0.0"
    assert all(hub.devices[d].reported["models"]["detector"]["version"] == "1.0.0" for d in ("b1", "b2", "b3", "b4"))
    # every moment of the rollback, the canary ring had a layer: created first, then the failed one deleted
    canary_ops = [(op, cid) for op, cid, present in hub.timeline if cid.startswith("ef-detector-canary")]
    assert canary_ops[-2][0] == "create" and "rb-v1-0-0" in canary_ops[-2][1] and canary_ops[-1][0] == "delete"


def test_a_rolled_back_layer_that_pulumi_recreates_is_rolled_back_again(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    roll_out(fleet, v1)
    hub.devices["c1"].refuse.add("2.0.0")
    fleet.deploy(0, v2)
    with pytest.raises(RuntimeError):
        fleet.gate(0, v2)
    fleet.deploy(0, v2)  # e.g. `pulumi refresh && pulumi up` without a fix
    assert fleet.ring_configs("canary")[-1]["labels"]["edgefleet-version"] == "2.0.0"
    with pytest.raises(RuntimeError, match="halted at ring 'canary'"):
        fleet.gate(0, v2)
    (cfg,) = fleet.ring_configs("canary")
    assert (cfg["labels"]["edgefleet-kind"], cfg["labels"]["edgefleet-version"]) == ("rollback", "1.0.0")


@pytest.mark.parametrize("caps", [{"canary": 50_000, "broad": 250_000}])
def test_a_capped_ring_passes_on_its_own_layer_and_rolls_back_under_its_cap(hub, fleet, signer, caps):
    """The gate's plans carry each ring's cap as its layer does: the layer Pulumi created is the one the gate judges
    (not re-deployed over a cap-only difference), and a rollback layer keeps the ring's cap."""

    def cap_of(ring: str) -> object:
        (cfg,) = fleet.ring_configs(ring)
        return cfg["content"]["modulesContent"][mf.AGENT_MODULE]["properties.desired.models.detector"].get("maxDownloadBytesPerSecond")

    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    done = roll_out(fleet, v1)
    assert done["status"] == "succeeded"
    deploys = [(e["ring"], e["event"]) for e in done["events"] if e["event"] in ("deployed", "already-deployed")]
    assert deploys == [("canary", "already-deployed"), ("broad", "already-deployed")]  # the layer is what the gate wants
    assert (cap_of("canary"), cap_of("broad")) == (50_000, 250_000)
    creates = [cid for op, cid, _ in hub.timeline if op == "create" and cid.startswith("ef-detector-")]
    assert len(creates) == 2, creates  # one layer a ring, each `pulumi up`'s: the gates wrote none
    hub.devices["c1"].refuse.add("2.0.0")
    fleet.deploy(0, v2)
    with pytest.raises(RuntimeError, match="halted at ring 'canary'"):
        fleet.gate(0, v2)
    (cfg,) = fleet.ring_configs("canary")
    assert (cfg["labels"]["edgefleet-kind"], cfg["labels"]["edgefleet-version"]) == ("rollback", "1.0.0")
    assert cap_of("canary") == 50_000


def test_metrics_not_yet_evaluated_are_waited_for_not_read_as_an_empty_ring(hub, fleet, signer):
    v1 = release(signer, "1.0.0")
    fleet.deploy(0, v1)
    h = fleet.azure_hub()
    target = type("T", (), {"selector": "detector.canary"})()
    (cfg,) = fleet.ring_configs("canary")
    assert "targetedCount" not in cfg["systemMetrics"]["results"]  # IoT Hub has not evaluated it yet
    d = h.desired(target)
    obs = h.observe(target, d, since=0)
    assert obs.devices == 2 and obs.adopted == 2 and obs.inferences == 200 and obs.p99_latency_ms == 5.0


# -- maintenance windows: the ring's windows (its spec's `windows`) pause its deadline while they are closed -------------
# Without them in the gate's ring plans the deadline ran on the wall clock, so a good ring whose devices waited for their
# window was rolled back at it.
HOURLY = Windows("UTC", (MaintenanceWindow(cron="0 * * * *", minutes=10),))  # open the first 10 minutes of every hour


def hold_until(hub, devices: set[str], at: float | None):
    """The canary's devices swap only from `at` (an opening of their window; None: never): until then the layer does
    not reach them, so the gate sees them pending, as it does devices whose agent holds the swap for the window."""
    hub.unapplied.update(devices)

    def tick(t: float) -> None:
        if at is not None and t >= at:
            hub.unapplied.difference_update(devices)

    return tick


@pytest.mark.parametrize("windows", [HOURLY.to_document()])
def test_a_ring_whose_devices_wait_for_their_window_is_not_failed_while_it_is_closed(hub, fleet, signer):
    """The gate starts 5 minutes before the window closes; the devices swap at its next opening, 55 minutes later: past
    the 30-minute deadline on the wall clock, well inside it in open-window time."""
    v1 = release(signer, "1.0.0")
    fleet.engine_clock.t = 3600 + 300
    fleet.engine_clock.on_tick = hold_until(hub, {"c1", "c2"}, at=7200)
    fleet.deploy(0, v1)
    progress = fleet.gate(0, v1)
    ring = progress["rings"][0]
    assert ring["state"] == "passed" and ring["measured"]["adopted"] == 2
    assert ring["window_paused"] >= 3000, "the 50 minutes the window was closed did not count against the deadline"
    events = [e["event"] for e in progress["events"] if e["ring"] == "canary"]
    assert events[0] == "already-deployed" and "deadline-paused" in events
    creates = [cid for op, cid, _ in hub.timeline if op == "create" and cid.startswith("ef-detector-")]
    assert len(creates) == 1, "Pulumi's layer only: the window neither holds it back nor makes the gate deploy again"


@pytest.mark.parametrize("windows", [HOURLY.to_document()])
@pytest.mark.parametrize(
    "rings",
    [[RingConfig(name="canary", group="cameras", labels={"ring": "canary"}, gate=GATE.model_copy(update={"deadline_seconds": 900}))]],
)
def test_a_ring_whose_window_is_open_and_whose_devices_never_swap_still_fails_at_its_deadline(hub, fleet, signer):
    """A gate that starts while the window is closed waits for it and judges Pulumi's layer once it opens; devices that
    never swap fail the ring once 900 s of open window have passed, and the rollback (a first version: the layer removed)
    does not wait for a window."""
    v1 = release(signer, "1.0.0")
    fleet.engine_clock.t = 3600 - 600
    fleet.engine_clock.on_tick = hold_until(hub, {"c1", "c2"}, at=None)
    fleet.deploy(0, v1)
    with pytest.raises(RuntimeError, match="halted at ring 'canary'"):
        fleet.gate(0, v1)
    record = fleet.azure_hub().rollouts("detector")[-1]
    events = {e["event"]: e for e in record["events"] if e["ring"] == "canary"}
    assert events["window-wait"]["opens_at"] == 3600
    assert events["already-deployed"]["t"] >= 3600, "its deadline starts when the window opens"
    failed = events["gate-failed"]["t"]
    assert failed - events["already-deployed"]["t"] - record["rings"][0]["window_paused"] >= 900
    assert HOURLY.open_until(failed) is not None, "the deadline runs out in open-window time"
    assert record["status"] == "rolled_back" and fleet.ring_configs("canary") == []
    creates = [cid for op, cid, _ in hub.timeline if op == "create" and cid.startswith("ef-detector-")]
    assert len(creates) == 1, "Pulumi's layer only: the gate never deployed the version itself"


# -- the Key Vault signer ----------------------------------------------------------------------------------------------
@pytest.fixture
def vault():
    v = FakeKeyVault()
    yield v
    v.stop()


def test_key_vault_signatures_verify_with_the_public_key_devices_get(vault):
    from components.azure.signer import KeyVaultSigner

    token = StaticToken()
    s = KeyVaultSigner(vault.kid, credential=token)
    payload = b"name: detector\nversion: 1.0.0\n"
    env = sign_bytes(s, payload)
    assert s.public_key_pem() == vault.public_pem()
    verify_bytes(payload, env, load_public_key(s.public_key_pem(), "vault"), "payload")
    assert env.key_id == s.key_id and vault.signed == 1
    assert token.scopes == ["https://vault.azure.net/.default"] * len(token.scopes)
    with pytest.raises(SignatureError):  # any change to the payload breaks it
        verify_bytes(payload + b" ", env, load_public_key(s.public_key_pem(), "vault"), "payload")


def test_key_vault_refusals_name_the_key_and_the_fix(vault):
    from components.azure.signer import KeyVaultSigner

    with pytest.raises(EdgefleetError) as e:
        KeyVaultSigner(vault.kid, credential=StaticToken("expired")).public_key_pem()
    assert vault.kid in str(e.value) and "401" in str(e.value) and "az login" in str(e.value)


def test_a_signature_from_another_key_is_caught_before_it_reaches_a_device(vault, tmp_path):
    from components.azure.signer import KeyVaultSigner

    s = KeyVaultSigner(vault.kid, credential=StaticToken())
    s._public = LocalKeySigner(create_key_file(tmp_path / "other.pem"))._key.public_key()  # e.g. an unpinned, rotated key
    with pytest.raises(SignatureError, match="does not verify"):
        s.sign_digest(b"\x00" * 32)


def test_the_signer_holds_no_token_and_pickles_small(vault):
    import pickle

    from components.azure.signer import KeyVaultSigner

    data = pickle.dumps(KeyVaultSigner(vault.kid))
    assert b"Bearer" not in data and len(data) < 2000


# -- publishing a model -------------------------------------------------------------------------------------------------
class MemoryContainer:
    """The ContainerClient calls publish_artifact makes, in memory. Every upload gives the blob a new ETag, and an
    upload with etag=E and MatchConditions.IfNotModified of a blob whose ETag is no longer E is ResourceModifiedError
    (the service's 412 ConditionNotMet), for BlobMetadataStorage's timestamp swap."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, dict]] = {}
        self.etags: dict[str, str] = {}
        self.uploads: list[str] = []

    def list_blobs(self, name_starts_with="", include=None):
        from types import SimpleNamespace

        return [
            SimpleNamespace(name=n, metadata=m if include and "metadata" in include else None)
            for n, (_, m) in sorted(self.blobs.items())
            if n.startswith(name_starts_with)
        ]

    def upload_blob(self, name, data, overwrite=False, metadata=None, etag=None, match_condition=None, **_):
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        if not overwrite and name in self.blobs:
            raise ResourceExistsError(f"{name}: The specified blob already exists.")
        if match_condition == MatchConditions.IfNotModified and self.etags.get(name) != etag:
            raise ResourceModifiedError(f"{name}: The condition specified using HTTP conditional header(s) is not met.")
        assert match_condition in (None, MatchConditions.IfNotModified), match_condition
        self.blobs[name] = (data.read() if hasattr(data, "read") else bytes(data), dict(metadata or {}))
        self.uploads.append(name)
        self.etags[name] = f'"0x8DD{len(self.uploads):012X}"'

    def download_blob(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(readall=lambda: self.blobs[name][0], properties=SimpleNamespace(etag=self.etags.get(name)))


def test_publishing_uploads_a_content_addressed_signed_artifact_once(signer):
    from components.azure.providers import publish_artifact
    from edgefleet_agent.contract.artifact import verify_artifact

    text = (REPO / "models" / "detector" / "model.yaml").read_text()
    props = {
        "source": str(REPO / "models" / "detector" / "detector.onnx"),
        "model": "detector",
        "version": "1.0.0",
        "sha256": "de6313948e98ba28a0087916ca93f9bcb594a0eee60e35670d696b304ed3b7bc",
        "size": 2364,
        "manifest": text,
        "blob_endpoint": "https://efdev.blob.core.windows.net/",
        "container": "models",
        "key_url": "unused",
    }
    box = MemoryContainer()
    out = publish_artifact(props, signer=signer, container=box)
    base = f"detector/{props['sha256']}"
    assert out["uri"] == f"https://efdev.blob.core.windows.net/models/{base}.onnx"
    assert sorted(box.blobs) == [f"{base}.onnx", f"{base}.yaml", f"{base}.yaml.sig"]
    verify_artifact(
        box.blobs[f"{base}.yaml"][0],
        out["signature"].encode(),
        Path(props["source"]),
        load_public_key(signer.public_key_pem(), "k"),
        "store",
    )
    again = publish_artifact(props, signer=signer, container=box)  # a re-run: nothing uploaded, same signature
    assert again == out and len(box.uploads) == 3


def test_publishing_refuses_an_artifact_that_does_not_match_its_manifest(signer, tmp_path):
    from components.azure.providers import publish_artifact

    fake = tmp_path / "detector.onnx"
    fake.write_bytes(b"not the model")
    props = {
        "source": str(fake),
        "model": "detector",
        "version": "1.0.0",
        "sha256": "de6313948e98ba28a0087916ca93f9bcb594a0eee60e35670d696b304ed3b7bc",
        "size": 2364,
        "manifest": "x",
        "blob_endpoint": "https://e/",
        "container": "models",
        "key_url": "unused",
    }
    box = MemoryContainer()
    with pytest.raises(EdgefleetError, match="refusing to publish"):
        publish_artifact(props, signer=signer, container=box)
    assert box.blobs == {}


def test_an_in_place_gate_update_keeps_the_output_the_next_ring_waits_on():
    from components.azure.providers import RingGateProvider

    olds = {
        "rollout": "detector",
        "ring": "canary",
        "poll_seconds": 30,
        "gate": "detector@1.1.0+ab:canary:passed",
        "measured": {"adopted": 3},
    }
    news = {"rollout": "detector", "ring": "canary", "poll_seconds": 60, "gate": None, "measured": None}
    diff = RingGateProvider().diff("id", olds, news)
    assert diff.changes and not diff.replaces
    outs = RingGateProvider().update("id", olds, news).outs
    assert outs["gate"] == "detector@1.1.0+ab:canary:passed" and outs["poll_seconds"] == 60


# -- the system metrics: targeted, applied, reported success and failure ----------------------------------------------
def canary(fleet):
    return fleet.azure_hub(), type("T", (), {"selector": "detector.canary"})()


def test_devices_the_layer_is_not_applied_to_yet_are_pending_not_failed(hub, fleet, signer):
    v1 = release(signer, "1.0.0")
    hub.unapplied.add("c2")  # IoT Hub has not reached c2 yet
    fleet.deploy(0, v1)
    hub.tick()
    (cfg,) = fleet.ring_configs("canary")
    assert {k: hub.configs[cfg["id"]]["systemMetrics"]["results"][k] for k in ("targetedCount", "appliedCount", "reportedFailedCount")} == {
        "targetedCount": 2,
        "appliedCount": 1,
        "reportedFailedCount": 0,
    }
    h, target = canary(fleet)
    obs = h.observe(target, h.desired(target), since=0)
    assert (obs.devices, obs.adopted, obs.failed, obs.pending_count) == (2, 1, 0, 1)
    hub.unapplied.clear()
    assert fleet.gate(0, v1)["rings"][0]["state"] == "passed"


def test_a_runtime_failure_fails_the_ring_and_names_the_device(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    roll_out(fleet, v1)
    hub.devices["c1"].runtime_fails["2.0.0"] = "pull access denied for efdev.azurecr.io/edgefleet-agent"
    fleet.deploy(0, v2)
    hub.tick()
    (cfg,) = fleet.ring_configs("canary")
    results = hub.configs[cfg["id"]]["systemMetrics"]["results"]
    assert (results["reportedFailedCount"], results["reportedSuccessfulCount"]) == (1, 1)
    assert hub.configs[cfg["id"]]["metrics"]["results"]["failed"] == 0  # the agent never saw 2.0.0: only the runtime tells
    h, target = canary(fleet)
    obs = h.observe(target, h.desired(target), since=0)
    assert obs.failed == 1 and obs.adopted == 1
    ((device, why),) = obs.failures
    assert device == "c1" and "lastDesiredStatus 500: pull access denied" in why
    with pytest.raises(RuntimeError) as e:
        fleet.gate(0, v2)
    assert "failure share" in str(e.value) and "c1: IoT Edge runtime did not apply the deployment" in str(e.value)
    assert {hub.devices[d].reported["models"]["detector"]["version"] for d in ("c1", "c2")} == {"1.0.0"}


def test_a_device_failing_in_both_agent_and_runtime_is_counted_once(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    roll_out(fleet, v1)
    hub.devices["c1"].refuse.add("2.0.0")
    fleet.deploy(0, v2)
    hub.tick()  # the agent reports the refusal ...
    hub.devices["c1"].runtime_fails["2.0.0"] = "module edgefleet-agent failed to start"
    hub.tick()  # ... then the runtime reports its own failure
    (cfg,) = fleet.ring_configs("canary")
    live = hub.configs[cfg["id"]]
    assert (live["metrics"]["results"]["failed"], live["systemMetrics"]["results"]["reportedFailedCount"]) == (1, 1)
    h, target = canary(fleet)
    obs = h.observe(target, h.desired(target), since=0)
    assert obs.failed == 1 and obs.devices == 2
    ((device, why),) = obs.failures
    assert device == "c1" and why.startswith("refused 2.0.0; IoT Edge runtime did not apply")
    listing = [q for q in hub.queries if not re.match(r"SELECT (COUNT|SUM|MAX)\(", q)]
    assert listing and all(q.startswith("SELECT TOP ") for q in listing), (
        "every poll runs these against IoT Hub's query quota: a query that lists devices must be bounded"
    )


def test_runtime_failures_are_read_with_the_configurations_own_query(hub, fleet, signer):
    """IoT Hub returns the system metrics' queries with the configuration; older API versions key them by display name."""
    fleet.deploy(0, release(signer, "1.0.0"))
    hub.devices["c2"].runtime_fails["1.0.0"] = "no space left on device"
    hub.tick()
    (cfg,) = fleet.ring_configs("canary")
    live = hub.configs[cfg["id"]]
    live["systemMetrics"]["queries"] = {"Reporting Failure": live["systemMetrics"]["queries"].pop("reportedFailedCount")}
    h, _ = canary(fleet)
    assert h._runtime_failures(hub._public(live)) == [
        ("c2", "IoT Edge runtime did not apply the deployment (lastDesiredStatus 500: no space left on device)")
    ]
    live["systemMetrics"]["queries"] = {}
    assert [d for d, _ in h._runtime_failures(hub._public(live))] == ["c2"]  # Microsoft's documented query as the fallback
    assert any("$edgeAgent" in r["body"]["query"] for r in hub.requests if r["path"] == "/devices/query")


# -- quality gates -------------------------------------------------------------------------------------------------------
COMPARES = GateConfig(
    soak_seconds=600, deadline_seconds=1800, min_reporting_share=0.9, success_share=0.95, max_failure_share=0.0, max_distribution_shift=0.2
)
QUALITY_RINGS = [RingConfig(name="canary", group="cameras", labels={"ring": "canary"}, gate=COMPARES), RINGS[1]]


def twin_quality(classes: dict[int, int]) -> dict:
    """A quality entry as an agent reports it and IoT Hub keeps it (nulls removed)."""
    from edgefleet_agent.contract.iotedge import quality_entry
    from edgefleet_agent.contract.state import DeviceReport
    from edgefleet_agent.contract.telemetry import Latency, Predictions

    preds, lat = Predictions("classes", "scores"), Latency()
    for cls, n in classes.items():
        for _ in range(n):
            preds.add_class(cls, 0.8)
            lat.add(3.0)
    entry = quality_entry(DeviceReport("d", "detector", "x", "x", "ok", predictions=preds.to_json(), latency=lat.to_json()))
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize("rings", [QUALITY_RINGS])
def test_a_canary_whose_predictions_shift_from_the_later_rings_fails_naming_the_control_and_devices(hub, fleet, signer):
    v1, v2 = release(signer, "1.0.0"), release(signer, "2.0.0")
    for d in ("b1", "b2", "b3", "b4"):
        hub.devices[d].metrics["1.0.0"] = {"quality": twin_quality({0: 34, 1: 33, 2: 33})}
    first = roll_out(fleet, v1)
    assert first["status"] == "succeeded"
    assert any("not judged: a first rollout" in r for r in first["rings"][0]["verdict"]["reasons"])
    for d in ("c1", "c2"):
        hub.devices[d].metrics["2.0.0"] = {"quality": twin_quality({0: 90, 1: 5, 2: 5})}
    fleet.deploy(0, v2)
    with pytest.raises(RuntimeError) as e:
        fleet.gate(0, v2)
    text = str(e.value)
    assert "halted at ring 'canary'" in text and "prediction shift: total variation 0.56" in text
    assert "vs control {0: 34%, 1: 33%, 2: 33%} (400)" in text and "to 1.0.0" in text
    assert "Offending devices: c1 prediction shift 0.560 (max 0.200) classes {0: 90%, 1: 5%, 2: 5%}" in text
    queries = [r["body"]["query"] for r in hub.requests if r["path"] == "/devices/query"]
    control = [q for q in queries if "detector.broad" in q and "SUM(" in q]
    assert control and "version = '1.0.0'" in control[-1], "the control group is the later ring on the previous version"


@pytest.mark.parametrize("rings", [QUALITY_RINGS])
def test_a_canary_that_answers_like_its_control_passes_and_one_with_no_telemetry_fails_closed(hub, fleet, signer):
    v1, v2, v3 = release(signer, "1.0.0"), release(signer, "2.0.0"), release(signer, "3.0.0")
    for d in ("b1", "b2", "b3", "b4"):
        hub.devices[d].metrics["1.0.0"] = {"quality": twin_quality({0: 34, 1: 33, 2: 33})}
    roll_out(fleet, v1)
    for d in ("c1", "c2"):
        hub.devices[d].metrics["2.0.0"] = {"quality": twin_quality({0: 33, 1: 35, 2: 32})}
    fleet.deploy(0, v2)
    passed = fleet.gate(0, v2)
    q = passed["rings"][0]["verdict"]["measured"]["quality"]
    assert passed["rings"][0]["state"] == "passed" and q["distribution_shift"] < 0.05 and q["control"]["devices"] == 4
    assert q["ring"]["p50_ms"] == pytest.approx(3.0 * 1.0, rel=0.2), "the mean of the devices' own medians"
    hub.devices["b1"].metrics["2.0.0"] = hub.devices["b1"].metrics["1.0.0"]
    fleet.deploy(1, v2)
    fleet.gate(1, v2)
    fleet.deploy(0, v3)  # no device reports telemetry for 3.0.0
    with pytest.raises(RuntimeError, match="never passes on silence"):
        fleet.gate(0, v3)


def test_a_reported_quality_entry_is_bounded_fits_the_twin_and_leaves_no_stale_class(hub):
    from edgefleet_agent.contract.iotedge import reported_entry
    from edgefleet_agent.contract.state import DeviceReport
    from edgefleet_agent.contract.telemetry import TOP_K, Labelled, Latency, Predictions, Shadow

    def report(classes: range) -> DeviceReport:
        preds, lat = Predictions("classes", "scores"), Latency()
        for c in classes:
            for _ in range(c + 1):
                preds.add_class(c, 0.99)
                lat.add(1000.0 * (c + 1))
        shadow = Shadow("10.20.30", "f" * 64, 999999, 999998, 99, 99, lat, lat)
        return DeviceReport(
            "d",
            "detector",
            "1.0.0",
            "a" * 64,
            "ok",
            predictions=preds.to_json(),
            latency=lat.to_json(),
            shadow=shadow.to_json(),
            labelled=Labelled(99999, 99999).to_json(),
        )

    first = reported_entry(report(range(1000, 1100)), {"ring": "detector.canary", "rollout": "r"})
    quality = first["quality"]
    assert len(quality["classes"]) == TOP_K + 1 and "other" in quality["classes"]
    assert mf.twin_size(first) < 1500, "a model's reported entry stays small: a twin's 32 KB hold many models"
    second = reported_entry(report(range(3)), {"ring": "detector.canary", "rollout": "r"}, previous=first)
    classes = second["quality"]["classes"]
    assert {k for k, v in classes.items() if v is not None} == {"c0", "c1", "c2"}
    assert all(classes[k] is None for k in first["quality"]["classes"]), "a class the window did not see is nulled"
