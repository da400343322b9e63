"""`edgefleet status --stack aws-dev`: aggregate reads only (fleet indexing over the agents' status shadow, the rings'
latest Greengrass deployments, the rollout record in S3), paging, throttling, and clouds that cannot be reached.

STS, S3 and the tagging API are moto's; fleet indexing's aggregations and Greengrass v2 (which moto does not have) are
answered by aws_fleet_index, with every request and response checked against botocore's service models."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import boto3
import pytest
from aws_fleet_index import Deployments, FleetIndex
from aws_testkit import ACCOUNT, PROJECT, REGION, STACK
from botocore.exceptions import NoCredentialsError

from components.aws import status as aws_status
from edgefleet.config import load_stack
from edgefleet_agent.contract import greengrass as gg

MODEL_COMPONENT = "edgefleet.aws-dev.detector.Model"
THING_TYPE = "edgefleet-aws-dev-device"
SIZES = {"canary": 5, "early": 50, "broad": 500}


def arn(ring: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/edgefleet-aws-dev-detector-{ring}"


def record(status: str = "rolled_back") -> dict:
    return {
        "rollout": "detector",
        "rollout_id": "detector@1.1.0+abc",
        "model": "detector",
        "version": "1.1.0",
        "status": status,
        "started_at": 1000.0,
        "rings": [
            {
                "name": "canary",
                "index": 0,
                "state": "failed",
                "finished_at": 1500.0,
                "verdict": {"outcome": "fail", "reasons": ["error rate 5.00% > 1.00%"], "measured": {"error_rate": 0.05}},
            },
            {"name": "early", "index": 1, "state": "pending", "verdict": None},
        ],
    }


class Clients:
    def __init__(self, **clients) -> None:
        self.clients = clients

    def get(self, service: str):
        return self.clients[service]


@pytest.fixture
def cloud(aws_env, monkeypatch):
    from moto import mock_aws

    monkeypatch.delenv(aws_status.BUCKET_ENV, raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="models-1234", CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_tagging(Bucket="models-1234", Tagging={"TagSet": [{"Key": "edgefleet:stack", "Value": STACK}]})
        s3.put_object(
            Bucket="models-1234",
            Key="rollouts/detector/detector@1.0.0+old.json",
            Body=json.dumps(record("succeeded") | {"version": "1.0.0"}),
        )
        s3.put_object(Bucket="models-1234", Key="rollouts/detector/detector@1.1.0+abc.json", Body=json.dumps(record()))
        iot, greengrass = boto3.client("iot", region_name=REGION), boto3.client("greengrassv2", region_name=REGION)
        index, deployments = FleetIndex(), Deployments()
        index.attach(iot)
        deployments.attach(greengrass)
        clients = Clients(
            sts=boto3.client("sts", region_name=REGION),
            s3=s3,
            resourcegroupstaggingapi=boto3.client("resourcegroupstaggingapi", region_name=REGION),
            iot=iot,
            greengrassv2=greengrass,
        )
        yield clients, index, deployments


def fleet(index: FleetIndex, deployments: Deployments, scale: int = 1) -> None:
    shadow = gg.status_shadow("detector")
    for ring, size in SIZES.items():
        deployments.set(arn(ring), {MODEL_COMPONENT: {"componentVersion": "1.0.0"}})
        for i in range(size * scale):
            attrs = {"site": "plant-a", **({"ring": ring} if ring != "broad" else {})}
            if i % 10 == 9:  # one in ten never reported
                index.add(f"{ring}-{i}", THING_TYPE, attrs)
                continue
            version = "0.9.0" if i % 10 == 8 else "1.0.0"  # one in ten still on the old version: drift
            doc = gg.status_shadow_document(version, "sha", "ok", "detector@x", ring, 0)["state"]["reported"]
            index.add(f"{ring}-{i}", THING_TYPE, attrs, shadows={shadow: doc}, connected=i % 10 != 7)


def read(graph, clients, **kwargs):
    cfg, source = load_stack(PROJECT, STACK)
    caller = aws_status.Caller(sleep=lambda s: None)
    return aws_status.read_status(PROJECT, cfg, source, STACK, graph.raw, clients=clients, caller=caller, **kwargs), caller


def test_rings_come_from_the_declared_thing_groups(graph):
    [spec] = aws_status.rings_of(graph.raw, STACK)
    assert (spec.rollout, spec.model, spec.declared, spec.model_component) == ("detector", "detector", "1.0.0", MODEL_COMPONENT)
    assert [r.name for r in spec.rings] == ["canary", "early", "broad"]
    assert spec.rings[2].query.endswith("AND NOT attributes.ring:canary AND NOT attributes.ring:early")


def test_status_counts_devices_per_version_per_ring_with_aggregate_calls(graph, cloud):
    clients, index, deployments = cloud
    fleet(index, deployments)
    deployments.set(
        arn("canary"), {MODEL_COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"RollbackOrder": "o"}'}}}
    )
    out, caller = read(graph, clients)
    assert out["gaps"] == []
    rows = {r["ring"]: r for r in out["rings"]}
    assert rows["canary"]["desired"] == "1.0.0 (rollback)"
    broad = rows["broad"]
    # 500 devices: 50 never reported, 50 disconnected (not counted), 50 on 0.9.0 of which 0 are disconnected
    assert broad["devices"] == 500 and broad["reported"] == {"0.9.0": 50, "1.0.0": 350}
    assert (broad["drift"], broad["silent"], broad["partial"]) == (50, 100, False)
    [ro] = out["rollouts"]
    assert (ro["declared"], ro["version"], ro["status"]) == ("1.0.0", "1.1.0", "rolled_back")
    assert ro["last_gate"] == {
        "ring": "canary",
        "state": "failed",
        "outcome": "fail",
        "reasons": ["error rate 5.00% > 1.00%"],
        "measured": {"error_rate": 0.05},
    }
    # one identity check, one tag look-up, records listed and read once; per ring: deployment (2), size, versions, and
    # for a ring with drift (early, broad: the canary's 5 devices all run 1.0.0) its held devices
    assert caller.calls == {
        "get_caller_identity": 1,
        "get_resources": 1,
        "list_objects_v2": 1,
        "get_object": caller.calls["get_object"],  # 1, or 2 when both records were written within the same second
        "list_deployments": 3,
        "get_deployment": 3,
        "get_statistics": 3,
        "get_buckets_aggregation": 3 + 2,
    }


def test_held_devices_show_per_ring_with_their_reason_and_stop_showing_once_released(graph, cloud, capsys, monkeypatch):
    """What the agents wrote into their status shadows' `deferred`, counted per reason with one aggregation a ring."""
    from edgefleet_agent.contract.state import DEFERRED_BY_APPLICATION, outside_window

    clients, index, deployments = cloud
    fleet(index, deployments)
    window = outside_window("0 2 * * 1-5 for 120 min (Europe/Berlin)")
    shadow = gg.status_shadow("detector")

    def hold(thing: str, version: str, why: str | None) -> None:
        doc = gg.status_shadow_document(version, "sha", "ok", "detector@x", "broad", 0, why)["state"]["reported"]
        index.things[thing]["shadows"][shadow] = {"reported": {k: v for k, v in doc.items() if v is not None}}

    for i in (8, 18, 28):
        hold(f"broad-{i}", "0.9.0", window)
    hold("broad-38", "0.9.0", DEFERRED_BY_APPLICATION)
    hold("broad-0", "1.0.0", DEFERRED_BY_APPLICATION)  # on the ring's version: held for another model's deployment
    older = gg.status_shadow_document("0.9.0", "sha", "ok", "detector@x", "broad", 0)["state"]["reported"]
    index.things["broad-48"]["shadows"][shadow] = {
        "reported": {k: older[k] for k in ("version", "sha256", "status", "rollout", "ring", "at")}
    }
    out, caller = read(graph, clients)
    rows = {r["ring"]: r for r in out["rings"]}
    assert (rows["broad"]["held"], rows["broad"]["held_reasons"]) == (4, {window: 3, DEFERRED_BY_APPLICATION: 1})
    assert rows["broad"]["reported"] == {"0.9.0": 50, "1.0.0": 350}, "an agent's shadow from before `deferred` still counts"
    assert (rows["early"]["held"], rows["early"]["held_reasons"]) == (0, {})
    assert out["gaps"] == [] and not rows["broad"]["partial"]

    monkeypatch.setattr(aws_status, "Clients", lambda region: clients)
    code, text, _ = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT))
    text = " ".join(text.split())
    assert code == 0 and f"detector/broad: 3 held: {window}" in text and f"detector/broad: 1 held: {DEFERRED_BY_APPLICATION}" in text
    code, doc, _ = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT), "--json")
    broad = next(r for r in json.loads(doc)["rings"] if r["ring"] == "broad")
    assert (code, broad["held"], broad["held_reasons"]) == (0, 4, {window: 3, DEFERRED_BY_APPLICATION: 1})

    for i in (8, 18, 28, 38):  # swapped: the agent writes null, and the shadow drops the field
        hold(f"broad-{i}", "1.0.0", None)
    code, text, _ = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT))
    assert code == 0 and "held" not in text
    code, doc, _ = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT), "--json")
    broad = next(r for r in json.loads(doc)["rings"] if r["ring"] == "broad")
    assert (broad["held"], broad["held_reasons"]) == (0, {})


@pytest.mark.parametrize("desired", ["1.1.0", "1.1.0-rc.1", "2.0.0-rc.1+build.7", "1.1.0-x-y"])
def test_held_query_leaves_out_devices_already_on_the_desired_version_whatever_its_semver_form(desired):
    """A device on the ring's version is held for another model's deployment, not this one's: with a pre-release or
    build version (`-`, `+`) the term is a quoted phrase, so the query still excludes it rather than dropping the term."""
    from aws_fleet_index import Query

    shadow = gg.status_shadow("detector")
    things = {
        name: {"attributes": {"ring": "early"}, "connectivity": {"connected": True}, "shadows": {shadow: {"reported": {"version": v}}}}
        for name, v in (("on-desired", desired), ("behind", "1.0.0"))
    }
    query = aws_status.held_query("attributes.ring:early", "detector", desired)
    assert f'"{desired}"' in query if "-" in desired or "+" in desired else f":{desired}" in query
    assert [n for n, t in things.items() if Query(query).match(t)] == ["behind"]


def test_calls_do_not_grow_with_devices(graph, cloud):
    clients, index, deployments = cloud
    fleet(index, deployments, scale=4)
    _, caller = read(graph, clients)
    assert caller.total - caller.calls["get_object"] == 18
    assert sum(r["devices"] for r in read(graph, clients)[0]["rings"]) == 4 * sum(SIZES.values())


def test_throttling_is_retried_with_backoff_then_reported_as_a_partial_answer(graph, cloud):
    clients, index, deployments = cloud
    fleet(index, deployments)
    index.fail("GetBucketsAggregation", "ThrottlingException", times=2)
    out, caller = read(graph, clients)
    assert out["gaps"] == [] and caller.calls["get_buckets_aggregation"] == 3 + 2 + 2, "two throttled calls retried"

    index.fail("GetBucketsAggregation", "ThrottlingException", times=4)  # every attempt of the first ring
    out, caller = read(graph, clients)
    canary = out["rings"][0]
    assert canary["partial"] and canary["reported"] is None and canary["drift"] is None and canary["silent"] is None
    [g] = out["gaps"]
    assert "throttled" in g["problem"] and "iot:GetBucketsAggregation" in g["problem"] and "run it again" in g["fix"]
    assert not out["rings"][1]["partial"]


def test_a_5xx_on_deployments_leaves_the_desired_version_unknown_not_none(graph, cloud):
    clients, index, deployments = cloud
    fleet(index, deployments)
    deployments.faults["ListDeployments"] = ["InternalFailureException"] * 4
    out, _ = read(graph, clients)
    assert out["rings"][0]["partial"] and out["rings"][0]["desired"] is None
    assert "answered" in out["gaps"][0]["problem"] and "500" in out["gaps"][0]["problem"]


def test_no_credentials_and_an_expired_token_stop_with_the_cause_and_the_fix(graph, cloud):
    clients, index, deployments = cloud

    class Anonymous:
        def get_caller_identity(self):
            raise NoCredentialsError()

    with pytest.raises(aws_status.CloudError) as err:
        read(graph, Clients(sts=Anonymous()))
    assert err.value.kind == "credentials" and "aws sso login" in err.value.fix and "AWS eu-west-1" in err.value.where

    from botocore.exceptions import ClientError

    class Expired:
        def get_caller_identity(self):
            raise ClientError(
                {"Error": {"Code": "ExpiredToken", "Message": "expired"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetCallerIdentity"
            )

    with pytest.raises(aws_status.CloudError) as err:
        read(graph, Clients(sts=Expired()))
    assert err.value.kind == "expired" and "refresh" in err.value.fix


def test_without_a_tagged_bucket_the_rollout_state_is_a_named_gap(graph, cloud, monkeypatch):
    clients, index, deployments = cloud
    fleet(index, deployments)
    clients.get("s3").delete_bucket_tagging(Bucket="models-1234")
    out, _ = read(graph, clients)
    assert out["rollouts"][0]["status"] is None and aws_status.BUCKET_ENV in out["gaps"][0]["fix"]
    monkeypatch.setenv(aws_status.BUCKET_ENV, "models-1234")
    out, _ = read(graph, clients)
    assert out["gaps"] == [] and out["rollouts"][0]["status"] == "rolled_back"


def test_records_are_paged(graph, cloud):
    clients, index, deployments = cloud
    fleet(index, deployments)
    s3 = clients.get("s3")
    for i in range(1005):
        s3.put_object(Bucket="models-1234", Key=f"rollouts/detector/detector@0.{i}.0+x.json", Body=b"{}")
    s3.put_object(
        Bucket="models-1234",
        Key="rollouts/detector/detector@1.2.0+new.json",
        Body=json.dumps(record("running") | {"version": "1.2.0", "started_at": 2000.0}),
    )
    out, caller = read(graph, clients)
    assert caller.calls["list_objects_v2"] == 2 and out["rollouts"][0]["version"] == "1.2.0"


def test_classify_names_each_cause():
    class E(Exception):
        def __init__(self, code, status):
            super().__init__(code)
            self.response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}

    kinds = {
        c: aws_status.classify(E(c, s), "iot:GetStatistics")
        for c, s in [("ThrottlingException", 400), ("X", 503), ("AccessDeniedException", 403), ("ExpiredTokenException", 400)]
    }
    assert [k.kind for k in kinds.values()] == ["throttled", "unavailable", "denied", "expired"]
    assert [k.retry for k in kinds.values()] == [True, True, False, False]
    assert "iot:GetStatistics" in kinds["AccessDeniedException"].fix
    assert datetime.now(timezone.utc)  # keep the import honest for timestamps in records


# -- the command line ---------------------------------------------------------------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str, str]:
    from edgefleet.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_unreachable_cloud_exits_5_with_the_cause_and_the_fix_as_text_or_json(aws_env, monkeypatch, capsys):
    class Anonymous:
        def get_caller_identity(self):
            raise NoCredentialsError()

    monkeypatch.setattr(aws_status, "Clients", lambda region: Clients(sts=Anonymous()))
    code, out, err = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT))
    assert code == 5 and "Traceback" not in err and "no AWS credentials found" in err and "fix: sign in" in " ".join(err.split())
    code, out, err = cli(capsys, "status", "--stack", STACK, "--project-dir", str(PROJECT), "--json")
    doc = json.loads(out)
    assert code == 5 and doc["error"]["exit_code"] == 5 and "aws sso login" in doc["error"]["fix"]


def test_json_keys_partial_exit_and_watch_as_json_lines(monkeypatch, capsys):
    import edgefleet.status
    from components.rollout.status import document, gap, ring_row

    reads = iter(range(100))

    def reader(project_dir, stack):
        def read():
            n = next(reads)
            rows = [
                ring_row(platform="aws", rollout="detector", ring="canary", desired="1.0.0", devices=5, reported={"1.0.0": 4 + (n > 0)})
            ]
            gaps = [gap("aws", "ring detector/canary", "devices per version not read: throttled")] if n <= 1 else []
            return document(stack, [{"rings": rows, "gaps": gaps}], 1000.0 + n)

        return read

    monkeypatch.setattr(edgefleet.status, "status_reader", reader)
    code, out, _ = cli(capsys, "status", "--stack", STACK, "--json")
    doc = json.loads(out)
    assert code == 6 and doc["partial"] is True, "a partial answer exits 6, never 0"
    assert set(doc) == {"format", "stack", "at", "partial", "rings", "rollouts", "declared", "gaps"}
    assert set(doc["rings"][0]) == {
        "platform", "rollout", "ring", "desired", "devices", "reported", "drift", "drift_devices", "silent", "failures", "stale",
        "notices", "partial", "held", "held_reasons"
    }  # fmt: skip
    code, out, _ = cli(capsys, "status", "--stack", STACK)
    assert code == 6 and "PARTIAL" in out and "partial: ring detector/canary: devices per version not read: throttled" in out

    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    code, out, _ = cli(capsys, "status", "--stack", STACK, "--watch", "--json", "--interval", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 3 and sleeps == [2.0, 2.0, 2.0], "Ctrl-C ends the watch cleanly"
    assert [d["rings"][0]["reported"] for d in lines] == [{"1.0.0": 5}] * 3 and not lines[0]["partial"]


def test_fleet_indexing_takes_at_most_ten_status_shadows_so_the_stack_check_refuses_more_models():
    from components.aws.checks import check_stack
    from components.aws.platform import status_shadow_names

    cfg, _ = load_stack(PROJECT, STACK)
    assert status_shadow_names(cfg) == ("edgefleet-detector",)
    many = cfg.model_copy(update={"rollouts": [r.model_copy(update={"model": f"m{i:02d}"}) for r in cfg.rollouts for i in range(11)]})
    problems = [p for p in check_stack(many) if "named shadows" in p[1]]
    assert len(problems) == 1 and problems[0][0] == "edgefleet:rollouts" and "at most 10" in problems[0][2]
    assert len(status_shadow_names(many)) == 10
