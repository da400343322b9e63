"""The Azure hub names the devices behind a metric: bounded twin queries, rates computed from each device's own
window, worst first, and no query a healthy ring does not need (IoT Hub allows 20 queries a minute per S1 unit)."""

from __future__ import annotations

import copy

from azure_testkit import run_query
from test_azure_manifest import CANARY

from components.azure import manifest as mf
from components.azure.hub import AzureHub, MemoryProgressStore
from components.rollout.gate import evaluate
from components.rollout.spec import GateConfig
from components.rollout.types import OFFENDERS_PER_METRIC, RingTarget
from edgefleet_agent.contract.state import DesiredModel

SPEC = CANARY
TARGET = RingTarget(SPEC.rollout, SPEC.ring, 0, SPEC.key)
NEW = DesiredModel(
    model="detector",
    version="2.0.0",
    sha256="2" * 64,
    size=2364,
    uri="https://x/models/detector/2.onnx",
    manifest="name: detector\n",
    signature="{}",
    rollout="detector@2.0.0+222222222222",
)


class TwinQueries:
    """The HubClient calls `observe` makes when the ring has no configuration yet (every count a live query), over
    module twins this test writes. Rows come back in reverse: IoT Hub promises no order without ORDER BY."""

    def __init__(self) -> None:
        self.devices: list[dict] = []
        self.modules: list[dict] = []
        self.queries: list[tuple[str, int | None]] = []

    def add(self, device: str, version: str = "2.0.0", **metrics) -> None:
        entry = {
            "version": version,
            "sha256": ("2" if version == "2.0.0" else "1") * 64,
            "status": "ok",
            "ring": SPEC.key,
            "rollout": NEW.rollout,
            "inferences": 100,
            "errors": 0,
            "invalidOutputs": 0,
            "p99LatencyMs": 5.0,
            **metrics,
        }
        self.devices.append({"deviceId": device, "tags": {"ring": "canary"}})
        self.modules.append({"deviceId": device, "moduleId": mf.AGENT_MODULE, "properties": {"reported": {"models": {"detector": entry}}}})

    def list_configurations(self) -> list[dict]:
        return []

    def get_configuration(self, cid: str) -> dict | None:
        return None

    def query(self, sql: str, page_size: int = 1000, limit: int | None = None) -> list[dict]:
        self.queries.append((sql, limit))
        rows = list(reversed(run_query(sql, copy.deepcopy(self.devices), copy.deepcopy(self.modules))))
        return rows[:limit] if limit is not None else rows

    def offender_queries(self) -> list[tuple[str, int | None]]:
        return [(sql, limit) for sql, limit in self.queries if sql.startswith("SELECT TOP") and " > " in sql]


def observe(client: TwinQueries, gates: dict | None = None):
    return AzureHub(client, {SPEC.key: SPEC}, MemoryProgressStore(), gates=gates, poll_seconds=0, metrics_timeout=0).observe(
        TARGET, NEW, since=0
    )


def test_offenders_are_each_devices_own_window_worst_first_and_only_devices_on_the_new_version():
    client = TwinQueries()
    client.add("d-clean")
    client.add("d-err-low", errors=1, inferences=200)  # 0.5%
    client.add("d-err-high", errors=30, inferences=100)  # 30%
    client.add("d-nan", invalidOutputs=100)  # every output NaN
    client.add("d-nan-some", invalidOutputs=25, inferences=50)
    client.add("d-slow", p99LatencyMs=480.25)
    client.add("d-idle", inferences=0, errors=0)  # nothing ran: no rate to name
    client.add("d-old", version="1.0.0", errors=90, invalidOutputs=90, p99LatencyMs=999.0)  # not on the new version
    seen = observe(client)
    by_metric = {m: [(d, v) for d, mm, v in seen.offenders if mm == m] for m in ("error_rate", "invalid_output_share", "p99_latency_ms")}
    assert by_metric["error_rate"] == [("d-err-high", 0.3), ("d-err-low", 0.005)]
    assert by_metric["invalid_output_share"] == [("d-nan", 1.0), ("d-nan-some", 0.5)]
    assert by_metric["p99_latency_ms"][0] == ("d-slow", 480.25)
    assert all(d != "d-old" for d, _, _ in seen.offenders) and all(v > 0 for _, _, v in seen.offenders)
    assert len(client.offender_queries()) == 3  # one query per metric, each one page at most


def test_offender_queries_are_bounded_and_skipped_when_the_ring_is_clean():
    client = TwinQueries()
    for i in range(50):
        client.add(f"d{i:02d}", invalidOutputs=1 + i % 7, p99LatencyMs=0)
    seen = observe(client)
    invalid = [o for o in seen.offenders if o[1] == "invalid_output_share"]
    assert len(invalid) == OFFENDERS_PER_METRIC and [v for _, _, v in invalid] == sorted((v for _, _, v in invalid), reverse=True)
    ((sql, limit),) = client.offender_queries()  # no errors, no latency: only the one metric is asked about
    assert sql.startswith(f"SELECT TOP {OFFENDERS_PER_METRIC} deviceId, ") and limit == OFFENDERS_PER_METRIC
    assert "properties.reported.models.detector.invalidOutputs > 0" in sql

    clean = TwinQueries()
    for i in range(5):
        clean.add(f"c{i}", p99LatencyMs=0)
    assert observe(clean).offenders == () and clean.offender_queries() == []


def test_with_the_rings_gate_known_only_a_breached_metric_costs_a_query():
    gate = GateConfig(max_error_rate=0.05, max_invalid_output_share=0.0, max_p99_latency_ms=250)
    healthy = TwinQueries()
    healthy.add("a", errors=1)  # 1% errors, 5 ms: under every threshold
    healthy.add("b", p99LatencyMs=200.0)
    assert observe(healthy, {SPEC.key: gate}).offenders == () and healthy.offender_queries() == []

    slow = TwinQueries()
    slow.add("fast", p99LatencyMs=120.0, errors=1)
    slow.add("slow", p99LatencyMs=900.0)
    slow.add("slower", p99LatencyMs=1500.5)
    seen = observe(slow, {SPEC.key: gate})
    ((sql, _),) = slow.offender_queries()  # the ring's 1% error rate is within the gate: not asked
    assert "p99LatencyMs > 250.000" in sql  # only devices over the threshold come back
    assert seen.offenders == (("slower", "p99_latency_ms", 1500.5), ("slow", "p99_latency_ms", 900.0))
    verdict = evaluate(gate, seen, since_deploy=0, soak_started=None, now=1)
    assert verdict.outcome == "fail" and [o["device"] for o in verdict.offenders] == ["slower", "slow"]
