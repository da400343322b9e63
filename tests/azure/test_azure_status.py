"""`edgefleet status --stack azure-dev` against the local IoT Hub (tests/azure/azure_testkit.py): the configurations'
desired versions and system metrics, one GROUP BY twin query per ring (and one for its held devices when it drifts),
paging, the query quota's 429s, and keys that are missing or wrong."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure_testkit import HUB_HOST, KEY, POLICY, SimDevice

from components.azure import status as az_status
from components.azure.configurations import HubClient
from components.azure.hub import AzureHub, MemoryProgressStore
from components.azure.manifest import RingDeploymentSpec
from components.azure.rest import RetryPolicy
from components.rollout.status import CloudError
from components.rollout.types import RingTarget
from edgefleet_agent.contract.state import DesiredModel

REPO = Path(__file__).resolve().parents[2]
SIZES = {"canary": 5, "early": 20, "broad": 40}


def desired(version: str, rollout: str = "detector") -> DesiredModel:
    sha = (version.replace(".", "") * 64)[:64]
    return DesiredModel(
        model="detector",
        version=version,
        sha256=sha,
        size=2364,
        uri=f"https://x/models/detector/{sha}.onnx",
        manifest="name: detector\n",
        signature="{}",
        rollout=f"{rollout}@{version}+{sha[:12]}",
    )


def client(hub, waits: list[float] | None = None, really: bool = False) -> HubClient:
    record = waits if waits is not None else []

    def sleep(seconds: float) -> None:
        record.append(seconds)
        if really:
            time.sleep(seconds)

    return HubClient(HUB_HOST, POLICY, KEY, hub.endpoint, policy=RetryPolicy(attempts=4, base_delay=0.01, sleep=sleep))


def fleet(hub, graph, scale: int = 1) -> list[RingDeploymentSpec]:
    [spec] = az_status.rings_of(graph)
    for ring, size in SIZES.items():
        for i in range(size * scale):
            d = f"{ring}-{i:05d}"
            hub.devices[d] = SimDevice(tags={"group": "cameras", **({"ring": ring} if ring != "broad" else {})})
            if i % 10 == 9:
                continue  # never reported
            version = "0.9.0" if i % 10 == 8 else "1.0.0"
            hub.devices[d].reported = {"models": {"detector": {"version": version, "ring": f"detector.{ring}", "status": "ok"}}}
    gate = AzureHub(client(hub), {s.key: s for s in spec.rings}, MemoryProgressStore())
    for s in spec.rings:
        gate.set_desired(RingTarget(s.rollout, s.ring, s.index, s.key), desired("1.0.0"))
    hub.evaluate()
    return list(spec.rings)


def record() -> dict:
    return {
        "rollout": "detector",
        "rollout_id": "detector@1.0.0+x",
        "version": "1.0.0",
        "status": "succeeded",
        "started_at": 10.0,
        "rings": [
            {
                "name": "broad",
                "index": 2,
                "state": "passed",
                "finished_at": 99.0,
                "verdict": {"outcome": "pass", "reasons": [], "measured": {"adopted_share": 1.0}},
            }
        ],
    }


def read(graph, c, progress=None):
    if progress is None:
        progress = MemoryProgressStore()
        progress.save("detector@1.0.0+x", record())
    return az_status.read_status(REPO, None, "stacks/Pulumi.azure-dev.yaml", "azure-dev", graph, client=c, progress=progress)


def test_status_reads_layers_and_groups_versions_per_ring(hub, azure_dev_graph):
    fleet(hub, azure_dev_graph)
    hub.queries.clear()
    before = len(hub.requests)
    out = read(azure_dev_graph, client(hub))
    assert out["gaps"] == []
    rows = {r["ring"]: r for r in out["rings"]}
    broad = rows["broad"]
    assert (broad["desired"], broad["devices"], broad["reported"]) == ("1.0.0", 40, {"0.9.0": 4, "1.0.0": 32})
    assert (broad["drift"], broad["silent"], broad["partial"]) == (4, 4, False)
    assert rows["canary"]["devices"] == 5
    [ro] = out["rollouts"]
    assert (ro["declared"], ro["status"], ro["last_gate"]["ring"], ro["last_gate"]["measured"]) == (
        "1.0.0",
        "succeeded",
        "broad",
        {"adopted_share": 1.0},
    )
    assert len(hub.queries) == 3 + 2 and all("GROUP BY" in q for q in hub.queries), "per ring: versions; held only with drift"
    assert len(hub.requests) - before == 1 + 3 + 5, "the configurations once, then per ring: its layer and its queries"


def test_held_devices_show_per_ring_with_their_reason_and_stop_showing_once_released(hub, azure_dev_graph):
    from edgefleet_agent.contract.state import DEFERRED_BY_APPLICATION, outside_window

    window = outside_window("0 2 * * 1-5 for 120 min (Europe/Berlin)")
    fleet(hub, azure_dev_graph)
    behind = [
        d
        for d, s in hub.devices.items()
        if d.startswith("broad-") and s.reported.get("models", {}).get("detector", {}).get("version") == "0.9.0"
    ]
    for d, why in zip(behind, [window, window, window, DEFERRED_BY_APPLICATION], strict=True):
        hub.devices[d].reported["models"]["detector"]["deferred"] = why  # what the agent reports while held
    hub.queries.clear()
    rows = {r["ring"]: r for r in read(azure_dev_graph, client(hub))["rings"]}
    assert (rows["broad"]["held"], rows["broad"]["held_reasons"]) == (4, {window: 3, DEFERRED_BY_APPLICATION: 1})
    assert (rows["canary"]["held"], rows["canary"]["held_reasons"]) == (0, {})
    assert rows["canary"]["drift"] == 0 and not any("deferred" in q and "detector.canary" in q for q in hub.queries), (
        "a ring without drift holds nobody: not asked"
    )

    for d in behind:  # swapped: the agent sends null, and IoT Hub drops the key
        del hub.devices[d].reported["models"]["detector"]["deferred"]
    rows = {r["ring"]: r for r in read(azure_dev_graph, client(hub))["rings"]}
    assert (rows["broad"]["held"], rows["broad"]["held_reasons"], rows["broad"]["partial"]) == (0, {}, False)


def test_calls_grow_with_pages_not_devices(hub, azure_dev_graph):
    fleet(hub, azure_dev_graph, scale=20)
    hub.page_size_cap = 1  # one version a page: a ring with two versions answers in two pages
    before = len(hub.requests)
    out = read(azure_dev_graph, client(hub))
    assert sum(r["devices"] for r in out["rings"]) == 20 * sum(SIZES.values())
    pages = len(hub.requests) - before - 1 - 3
    assert pages == 3 * 2 + 3, "each ring's two versions, one page each, and its held devices' one group (none held)"


def test_the_query_quota_is_waited_for_then_a_ring_it_denies_is_partial(hub, azure_dev_graph):
    fleet(hub, azure_dev_graph)
    hub.query_quota, hub.quota_window = 2, 0.3
    waits: list[float] = []
    out = read(azure_dev_graph, client(hub, waits, really=True))
    assert out["gaps"] == [] and hub.throttled >= 1 and any(w >= 0.001 for w in waits), "429s honoured with Retry-After, then answered"

    hub.query_quota, hub.quota_window = 0, 3600.0  # no room at all
    hub.throttled = 0
    out = read(azure_dev_graph, client(hub, []))
    assert out["rings"] and all(r["partial"] and r["reported"] is None for r in out["rings"])
    assert "throttled" in out["gaps"][0]["problem"] and "--interval" in out["gaps"][0]["fix"]
    assert hub.throttled == 3 * 4, "bounded: four attempts a ring"


def test_a_5xx_on_a_layer_keeps_the_ring_partial_and_names_it(hub, azure_dev_graph):
    specs = fleet(hub, azure_dev_graph)
    for _ in range(4):
        hub.fail_next("GET", "/configurations/", 503)
    out = read(azure_dev_graph, client(hub))
    canary = out["rings"][0]
    assert (
        canary["partial"]
        and canary["desired"] is None
        and canary["devices"] is None
        and canary["reported"] == {"0.9.0": 0, "1.0.0": 4}
        or canary["partial"]
    )
    assert out["gaps"][0]["where"].startswith(f"ring {specs[0].key}") and "503" in out["gaps"][0]["problem"]


def test_missing_or_wrong_keys_stop_with_the_cause_and_the_fix(hub, azure_dev_graph, monkeypatch):
    monkeypatch.delenv(az_status.CONNECTION_ENV, raising=False)
    monkeypatch.delenv(az_status.KEY_ENV, raising=False)
    with pytest.raises(CloudError) as err:
        az_status.read_status(REPO, None, "s", "azure-dev", azure_dev_graph)
    assert err.value.kind == "credentials" and "az iot hub connection-string show" in err.value.fix

    wrong = HubClient(HUB_HOST, POLICY, "d3Jvbmcta2V5", hub.endpoint)
    with pytest.raises(CloudError) as err:
        read(azure_dev_graph, wrong)
    assert err.value.kind == "invalid" and az_status.CONNECTION_ENV in err.value.fix

    monkeypatch.setenv(az_status.CONNECTION_ENV, f"HostName={HUB_HOST};SharedAccessKeyName={POLICY};SharedAccessKey={KEY}")
    monkeypatch.setenv(az_status.ENDPOINT_ENV, hub.endpoint)
    out = az_status.read_status(REPO, None, "s", "azure-dev", azure_dev_graph, progress=MemoryProgressStore())
    assert out["rings"] and out["rollouts"][0]["status"] is None and out["gaps"] == []


def test_records_that_cannot_be_read_are_a_gap(hub, azure_dev_graph):
    fleet(hub, azure_dev_graph)

    class Denied:
        def list(self, rollout):
            raise PermissionError("AuthorizationPermissionMismatch")

    out = read(azure_dev_graph, client(hub), progress=Denied())
    assert out["rollouts"][0]["status"] is None and "Storage Blob Data Reader" in out["gaps"][0]["fix"]
