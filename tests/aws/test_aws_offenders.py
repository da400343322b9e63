"""Naming the devices behind a failed metric gate on AWS, end to end on moto: the Greengrass agent's CloudWatch
transport files per-device metrics for bad windows only, AwsHub.observe finds them (ListMetrics, then the ring's
succeeded job executions, since CloudWatch can take 15 minutes to list a new metric) and reads them in one
GetMetricData call, and the gate's failure report names the devices.
"""

from __future__ import annotations

import json
import time

import pytest
import test_aws_gate
from aws_testkit import devices_report
from test_aws_gate import BUCKET, DEVICES, NAMESPACE, OLD, FakeClock, arn, props, pulumi_deploys, save_succeeded

from components.aws.hub import MAX_QUERIES, AwsHub
from components.aws.plan import run_gate
from components.aws.policies import allow_actions, device_role_policy, gate_observation_policy, wildcard_actions
from components.rollout.types import OFFENDERS_PER_METRIC, RingTarget
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.transports.greengrass import CloudWatchMetrics

world = test_aws_gate.world  # the moto-backed fixture, shared

V110 = DesiredModel(
    model="detector", version="1.1.0", sha256="b" * 64, size=10, uri="", manifest="", signature="", rollout="detector@1.1.0+bbbbbbbbbbbb"
)
CANARY = RingTarget("detector", "canary", 0, arn("canary"))


def agent_reports(world, ring: str, windows: dict[str, tuple[int, int, int]], version: str = "1.1.0") -> None:
    """Each device's agent transport files one window: {device: (inferences, errors, invalid outputs)}. No latency:
    moto computes no percentiles, and the ring's p99 query would fail on it."""
    for device, (inferences, errors, invalid) in windows.items():
        metrics = CloudWatchMetrics(NAMESPACE, "detector", ring, client=world.clients.cloudwatch)
        report = DeviceReport(
            device_id=device,
            model="detector",
            version=version,
            sha256="b" * 64,
            status="ok",
            inferences=inferences,
            errors=errors,
            invalid_outputs=invalid,
            reported_at=time.time(),
        )
        assert metrics.publish(report) and metrics.pending == 0


IAM_PREFIX = {"greengrassv2": "greengrass"}


def record_calls(*clients) -> list[str]:
    """Every operation the clients are asked for, as IAM actions (before-parameter-build runs for emulated services too)."""
    calls: list[str] = []
    for client in clients:
        service = client.meta.service_model.service_name
        prefix = IAM_PREFIX.get(service, service)
        client.meta.events.register("before-parameter-build", lambda model, prefix=prefix, **_: calls.append(f"{prefix}:{model.name}"))
    return calls


def canary_all_succeeded(world) -> None:
    devices_report(pulumi_deploys(world, "canary"), {d: "SUCCEEDED" for d in DEVICES})


def test_offenders_travel_from_the_agent_transport_to_observe(world):
    canary_all_succeeded(world)
    agent_reports(world, "canary", {"device-0": (100, 0, 0), "device-1": (100, 0, 100), "device-2": (100, 40, 0)})
    listed = world.clients.cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]
    devices = {(m["MetricName"], d["Value"]) for m in listed for d in m["Dimensions"] if d["Name"] == "Device"}
    assert devices == {("DeviceInvalidOutputShare", "device-1"), ("DeviceErrorRate", "device-2")}, "healthy windows file nothing per device"

    hub = AwsHub.from_props(props(world, 0), clients=world.clients)
    obs = hub.observe(CANARY, V110, since=time.time() - 120)
    assert (obs.adopted, obs.inferences, obs.errors, obs.invalid_outputs) == (3, 300, 40, 100)
    assert obs.offenders == (("device-2", "error_rate", 0.4), ("device-1", "invalid_output_share", 1.0))


def test_a_healthy_ring_costs_no_per_device_call(world):
    canary_all_succeeded(world)
    agent_reports(world, "canary", {"device-0": (100, 1, 0), "device-1": (100, 0, 0), "device-2": (100, 0, 0)})  # 0.33% < 5%
    calls = record_calls(world.clients.cloudwatch)
    obs = AwsHub.from_props(props(world, 0), clients=world.clients).observe(CANARY, V110, since=time.time() - 120)
    assert obs.errors == 1 and obs.offenders == ()
    assert calls == ["cloudwatch:GetMetricData"], "only the ring's aggregates: no ListMetrics, no per-device read"


def test_devices_are_found_while_cloudwatch_does_not_list_their_metrics_yet(world):
    """CloudWatch can take 15 minutes to list a new metric, and a bad canary fails sooner: the ring's succeeded things are read directly."""
    canary_all_succeeded(world)
    agent_reports(world, "canary", {"device-0": (100, 0, 0), "device-1": (50, 0, 50), "device-2": (100, 0, 0)})

    class NotListedYet:
        def __init__(self, cloudwatch) -> None:
            self.cloudwatch = cloudwatch

        def list_metrics(self, **_):
            return {"Metrics": []}

        def get_metric_data(self, **kwargs):
            return self.cloudwatch.get_metric_data(**kwargs)

    clients = type(world.clients)(**{**world.clients.__dict__, "cloudwatch": NotListedYet(world.clients.cloudwatch)})
    obs = AwsHub.from_props(props(world, 0), clients=clients).observe(CANARY, V110, since=time.time() - 120)
    assert obs.offenders == (("device-1", "invalid_output_share", 1.0),)


def test_listmetrics_names_devices_without_reading_job_executions(world):
    """A ring bigger than one page of job executions: ListMetrics finds the devices that filed per-device metrics."""
    agent_reports(world, "canary", {"device-0": (100, 0, 0), "device-1": (100, 0, 0), "device-2": (100, 0, 30)})
    hub = AwsHub.from_props(props(world, 0), clients=world.clients)
    assert hub.device_offenders("canary", "1.1.0", time.time() - 120, ["invalid_output_share"]) == (
        ("device-2", "invalid_output_share", 0.3),
    )


def test_the_latest_window_counts_and_other_versions_rings_and_old_windows_do_not(world):
    now = time.time()
    metrics = CloudWatchMetrics(NAMESPACE, "detector", "canary", client=world.clients.cloudwatch)

    def window(device, at, invalid, version="1.1.0", ring_metrics=metrics):
        ring_metrics.publish(
            DeviceReport(
                device_id=device,
                model="detector",
                version=version,
                sha256="b" * 64,
                status="ok",
                inferences=100,
                invalid_outputs=invalid,
                reported_at=at,
            )
        )

    window("device-0", now - 600, 90)
    window("device-0", now - 120, 20)  # its latest bad window
    window("device-1", now - 3600, 100)  # before the ring was deployed
    window("device-2", now - 60, 70, version="1.0.0")  # another version
    window("device-2", now - 60, 80, ring_metrics=CloudWatchMetrics(NAMESPACE, "detector", "early", client=world.clients.cloudwatch))
    window("device-2", now - 60, 1)
    hub = AwsHub.from_props(props(world, 0), clients=world.clients, clock=lambda: now)
    assert hub.device_offenders("canary", "1.1.0", now - 900, ["invalid_output_share"]) == (
        ("device-0", "invalid_output_share", 0.2),
        ("device-2", "invalid_output_share", 0.01),
    )


def test_offender_reads_stay_within_cloudwatch_limits(world):
    """At most 500 metrics in one GetMetricData call, shared between the breached metrics; at most 20 named per metric."""
    hub = AwsHub.from_props(props(world, 0), clients=world.clients)
    many = [f"thing-{i:04d}" for i in range(400)]
    hub._listed_devices = lambda ring, version, name, limit: many[:limit]
    sent: list[dict] = []

    class Recording:
        def get_metric_data(self, **kwargs):
            sent.append(kwargs)
            return {
                "MetricDataResults": [
                    {
                        "Id": q["Id"],
                        "Timestamps": [kwargs["StartTime"]],
                        "Values": [0.5 + int(q["Id"][1:]) / 10_000],
                        "StatusCode": "Complete",
                    }
                    for q in kwargs["MetricDataQueries"]
                ]
            }

    hub.clients = type(world.clients)(cloudwatch=Recording())
    offenders = hub.device_offenders("canary", "1.1.0", 0.0, ["error_rate", "invalid_output_share"])  # the widest window
    assert len(sent) == 1 and len(sent[0]["MetricDataQueries"]) == MAX_QUERIES == 500
    queries = sent[0]["MetricDataQueries"]
    assert len({q["Id"] for q in queries}) == 500 and all(q["Id"][0].islower() for q in queries)
    by_metric = {
        name: sum(q["MetricStat"]["Metric"]["MetricName"] == name for q in queries)
        for name in ("DeviceErrorRate", "DeviceInvalidOutputShare")
    }
    assert by_metric == {"DeviceErrorRate": 250, "DeviceInvalidOutputShare": 250}
    assert (sent[0]["EndTime"] - sent[0]["StartTime"]).total_seconds() / 60 * 500 <= 100_800, "one page of data points"
    for metric in ("error_rate", "invalid_output_share"):
        named = [o for o in offenders if o[1] == metric]
        assert len(named) == OFFENDERS_PER_METRIC and [v for _, _, v in named] == sorted((v for _, _, v in named), reverse=True)


def test_a_nan_producing_device_is_named_in_the_gates_failure_report(world):
    save_succeeded(world, OLD)
    world.gg.on_create = lambda request, job_id: devices_report(job_id, {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    agent_reports(world, "canary", {"device-0": (120, 0, 0), "device-1": (120, 0, 120), "device-2": (120, 0, 0)})
    with pytest.raises(RuntimeError) as err:
        run_gate(props(world, 0), clients=world.clients, clock=FakeClock())
    message = str(err.value)
    assert "invalid (NaN/Inf) outputs 33.33% > max 0.00%" in message and "to 1.0.0 (rolled_back)" in message
    assert "Offending devices: device-1 NaN/Inf outputs 100.00% (max 0.00%)" in message
    assert "device-0" not in message and "device-2" not in message
    saved = json.loads(world.clients.s3.get_object(Bucket=BUCKET, Key="rollouts/detector/detector@1.1.0+bbbbbbbbbbbb.json")["Body"].read())
    assert saved["report"]["offenders"] == [{"device": "device-1", "metric": "invalid_output_share", "value": 1.0, "max": 0.0}]


def test_a_gate_without_cloudwatch_listmetrics_still_rolls_back_and_names_the_device(world):
    """A deploying role set up before ListMetrics was needed: the gate must not break on the denied call."""
    from botocore.exceptions import ClientError

    save_succeeded(world, OLD)
    world.gg.on_create = lambda request, job_id: devices_report(job_id, {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    agent_reports(world, "canary", {"device-0": (100, 30, 0), "device-1": (100, 0, 0), "device-2": (100, 0, 0)})

    def denied(**_):
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: cloudwatch:ListMetrics"}}, "ListMetrics"
        )

    world.clients.cloudwatch.list_metrics = denied
    with pytest.raises(RuntimeError) as err:
        run_gate(props(world, 0), clients=world.clients, clock=FakeClock())
    assert "error rate 10.00% > max 5.00%" in str(err.value) and "(rolled_back)" in str(err.value)
    assert "Offending devices: device-0 error rate 30.00% (max 5.00%)" in str(err.value)


# -- IAM ----------------------------------------------------------------------------------------------------------------
def test_the_device_role_may_publish_per_device_metrics_in_the_agents_namespace_only(world):
    calls: list[dict] = []
    world.clients.cloudwatch.meta.events.register(
        "provide-client-params.cloudwatch.PutMetricData", lambda params, **_: calls.append(params)
    )
    agent_reports(world, "canary", {"device-1": (10, 2, 3)})
    policy = device_role_policy(
        "arn:aws:s3:::b",
        "arn:aws:kms:eu-west-1:123456789012:key/k",
        "eu-west-1",
        "arn:aws:ecr:eu-west-1:123456789012:repository/r",
        NAMESPACE,
    )
    publish = [s for s in policy["Statement"] if "cloudwatch:PutMetricData" in s["Action"]]
    assert len(publish) == 1 and publish[0]["Condition"] == {"StringEquals": {"cloudwatch:namespace": NAMESPACE}}
    assert {c["Namespace"] for c in calls} == {NAMESPACE}
    assert {d["MetricName"] for c in calls for d in c["MetricData"]} >= {"DeviceErrorRate", "DeviceInvalidOutputShare"}


def test_the_gate_observation_policy_grants_every_call_observe_makes(world):
    canary_all_succeeded(world)
    agent_reports(world, "canary", {"device-0": (100, 50, 100)})
    calls = record_calls(world.clients.greengrass, world.clients.iot, world.clients.cloudwatch)
    obs = AwsHub.from_props(props(world, 0), clients=world.clients).observe(CANARY, V110, since=time.time() - 120)
    assert obs.offenders, "the per-device path ran"
    policy = gate_observation_policy("aws", "eu-west-1", "123456789012")
    needed = set(calls)
    assert "cloudwatch:ListMetrics" in needed and needed <= set(allow_actions(policy)), needed - set(allow_actions(policy))
    assert not wildcard_actions(policy)
    jobs = [s for s in policy["Statement"] if "iot:DescribeJob" in s["Action"]]
    assert jobs[0]["Resource"] == "arn:aws:iot:eu-west-1:123456789012:job/*"
