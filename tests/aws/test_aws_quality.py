"""Quality gates on AWS: what agents file of their requests (CloudWatchMetrics.quality_datums), bounded per ring and
version, and what the gate reads back (AwsHub.ring_summary, summarize) on moto's CloudWatch: the same summary the
local hub computes from the same reports, within the bounds the contract promises."""

from __future__ import annotations

import time

import boto3
import pytest
from aws_testkit import REGION, Clients, moto_percentiles
from moto import mock_aws

from components.aws.hub import PROBED_CLASSES, AwsHub, RingSite
from components.aws.plan import RingJobPolicy
from components.rollout.gate import evaluate
from components.rollout.observe import summarize
from components.rollout.quality import QualityContext
from components.rollout.spec import GateConfig
from components.rollout.types import RingObservation, RingTarget
from edgefleet_agent.contract import greengrass as gg
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import TOP_K, Labelled, Latency, Predictions, Shadow
from edgefleet_agent.transports.greengrass import CloudWatchMetrics

NAMESPACE = "Edgefleet/Agent"
V1 = DesiredModel("detector", "1.0.0", "a" * 64, 1, "s3://b/a", "m", "s")
V2 = DesiredModel("detector", "1.1.0", "b" * 64, 1, "s3://b/b", "m", "s")


@pytest.fixture
def cloudwatch(aws_env, monkeypatch):
    moto_percentiles(monkeypatch)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def report(dev: str, version: DesiredModel, classes: dict[int, int], ms: float, at: float, shadow: DesiredModel | None = None, agree=0.9):
    preds, lat = Predictions("classes", "scores"), Latency()
    for cls, n in classes.items():
        for i in range(n):
            preds.add_class(cls, 0.55 + 0.4 * (i % 2))
            lat.add(ms * (1 + (i % 3) / 10))
    extra = {}
    if shadow is not None:
        compared = sum(classes.values())
        slat = Latency()
        for _ in range(compared):
            slat.add(ms * 2)
        extra["shadow"] = Shadow(shadow.version, shadow.sha256, compared, round(compared * agree), 1, 2, slat, lat).to_json()
    return DeviceReport(
        dev,
        "detector",
        version.version,
        version.sha256,
        "ok",
        inferences=sum(classes.values()),
        reported_at=at,
        predictions=preds.to_json(),
        latency=lat.to_json(),
        labelled=Labelled(10, 9).to_json(),
        **extra,
    )


def hub(cloudwatch, now: float) -> AwsHub:
    site = RingSite("arn", RingJobPolicy(3, 5, 1.0, 1, 30))
    return AwsHub(
        region=REGION,
        stack="aws-dev",
        bucket="b",
        metric_namespace=NAMESPACE,
        rollout="detector",
        model="detector",
        model_component="M",
        agent_component="A",
        agent_version="0.1.0",
        sites={"canary": site, "early": site},
        clients=Clients(cloudwatch=cloudwatch),
        clock=lambda: now,
    )


def publish(cloudwatch, ring: str, reports: list[DeviceReport]) -> list:
    filed = []
    for r in reports:
        m = CloudWatchMetrics(NAMESPACE, "detector", ring, client=cloudwatch)
        filed += m.datums(r)
        assert m.publish(r)
    return filed


def test_a_window_files_bounded_summaries_and_nothing_per_device(cloudwatch):
    many = report("cam-1", V2, {c: 3 + c for c in range(20)}, 4.0, time.time(), shadow=V1)
    datums = CloudWatchMetrics(NAMESPACE, "detector", "canary").datums(many)
    quality = [d for d in datums if d["MetricName"] not in {n for n, _ in gg.COUNT_METRICS} | {gg.LATENCY_METRIC}]
    assert not any(dim["Name"] == gg.DEVICE_DIMENSION for d in quality for dim in d["Dimensions"]), "no quality metric per device"
    classes = [
        next(x["Value"] for x in d["Dimensions"] if x["Name"] == gg.CLASS_DIMENSION) for d in quality if d["MetricName"] == gg.CLASS_METRIC
    ]
    assert len(classes) == TOP_K + 1 and "other" in classes, "top-K classes plus other, whatever the model's classes"
    assert len(quality) <= 1 + (TOP_K + 1) + 10 + 1 + 4 + 2 + 2, "a window's quality datums are bounded"
    latency = next(d for d in quality if d["MetricName"] == gg.REQUEST_LATENCY_METRIC)
    assert len(latency["Values"]) == len(latency["Counts"]) <= 150 and sum(latency["Counts"]) == 21 * 20 / 2 + 40
    assert CloudWatchMetrics(NAMESPACE, "detector", "canary", client=cloudwatch).publish(many), "CloudWatch (moto) accepts them"


def test_the_gate_reads_back_the_summary_the_local_hub_computes_from_the_same_reports(cloudwatch):
    now = time.time()
    reports = [report(f"cam-{i}", V1, {0: 10 + i, 1: 8, 2: 5 + 2 * i}, 3.0 + i, now, shadow=V2) for i in range(4)]
    publish(cloudwatch, "canary", reports)
    got = hub(cloudwatch, now + 60).ring_summary("canary", "1.0.0", now - 120, V2)
    want = summarize(reports)
    assert (got.predictions, dict(got.classes), got.confidence) == (want.predictions, dict(want.classes), want.confidence)
    assert (got.labelled, got.correct, got.latency_n) == (want.labelled, want.correct, want.latency_n)
    assert got.p50_ms == pytest.approx(want.p50_ms), "CloudWatch's p50 over the filed values and counts is the merged histogram's"
    assert got.shadow is not None and want.shadow is not None
    assert (got.shadow.compared, got.shadow.agree, got.shadow.errors, got.shadow.invalid) == (
        want.shadow.compared,
        want.shadow.agree,
        want.shadow.errors,
        want.shadow.invalid,
    )
    assert got.shadow.latency_ratio() == pytest.approx(want.shadow.latency_ratio())


def test_a_control_group_is_read_from_the_later_rings_on_the_previous_version(cloudwatch):
    now = time.time()
    publish(cloudwatch, "canary", [report(f"c{i}", V2, {0: 90, 1: 5, 2: 5}, 3.0, now) for i in range(3)])  # blind-ish
    publish(cloudwatch, "early", [report(f"e{i}", V1, {0: 34, 1: 33, 2: 33}, 3.0, now) for i in range(6)])
    publish(cloudwatch, "early", [report("e9", V2, {0: 1}, 3.0, now)])  # another version in that ring: not the control
    h = hub(cloudwatch, now + 60)
    control = h.summarize((RingTarget("detector", "early", 1, None),), V1, now - 120)
    assert control.predictions == 600 and dict(control.classes) == {"0": 204, "1": 198, "2": 198}
    ring = h.ring_summary("canary", "1.1.0", now - 120, None)
    gate = GateConfig(soak_seconds=0, deadline_seconds=60, max_distribution_shift=0.2, max_confidence_drop=0.2)
    obs = RingObservation(devices=3, adopted=3, failed=0, reporting=3, inferences=300, summary=ring)
    v = evaluate(gate, obs, since_deploy=0, soak_started=0, now=1, ctx=QualityContext(control=control))
    assert v.outcome == "fail" and v.reasons[0].startswith("prediction shift: total variation 0.56")
    assert v.measured["quality"]["control"]["predictions"] == 600


def test_classes_not_yet_listed_are_probed_and_what_they_miss_counts_as_other(cloudwatch):
    now = time.time()
    publish(cloudwatch, "canary", [report("c1", V1, {3: 10, PROBED_CLASSES + 5: 7}, 3.0, now)])
    h = hub(cloudwatch, now + 60)
    h._listed_dimension = lambda *a: []  # CloudWatch has not listed the new metrics yet
    s = h.ring_summary("canary", "1.0.0", now - 120, None)
    assert dict(s.classes) == {"3": 10} and s.class_counts() == {"3": 10, "other": 7}
