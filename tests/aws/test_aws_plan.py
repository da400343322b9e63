"""Pure planning for AWS: ring queries, job policies, deployment payloads, names; and static device groups."""

from __future__ import annotations

import re

import botocore.session
import pytest
import yaml
from aws_testkit import project_copy, synth_graph
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from components.aws.config import AwsConfig
from components.aws.plan import (
    Naming,
    RingComponents,
    components_spec,
    deployment_request,
    deployment_tags,
    fit,
    query_terms,
    ring_job_policy,
    ring_query,
)
from components.rollout.spec import DeviceGroupConfig, GateConfig, RingConfig, RolloutConfig
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import HardwareProfile

HW = HardwareProfile(name="cam", arch="arm64", execution_providers=["CPUExecutionProvider"], memory_mb=512, storage_mb=512)
CREATE = botocore.session.get_session().get_service_model("greengrassv2").operation_model("CreateDeployment").input_shape
NAMING = Naming("aws-dev")


def _rollout(values: list[str]) -> RolloutConfig:
    rings = [RingConfig(name=f"r{i}", group="cams", labels={"ring": v}) for i, v in enumerate(values)]
    return RolloutConfig(name="detector", model="detector", rings=rings)


def matches(query: str, thing: dict) -> bool:
    """Fleet indexing's AND / NOT / parentheses over field:value terms, the subset ring queries use."""
    tokens = re.findall(r"\(|\)|[^\s()]+", query)
    pos = 0

    def expr() -> bool:
        nonlocal pos
        value = factor()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            value = factor() and value
        return value

    def factor() -> bool:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "NOT":
            return not factor()
        if tok == "(":
            value = expr()
            assert tokens[pos] == ")"
            pos += 1
            return value
        field, _, want = tok.partition(":")
        have = thing.get(field)
        return want in have if isinstance(have, list) else have == want

    result = expr()
    assert pos == len(tokens), f"unparsed: {tokens[pos:]}"
    return result


labels = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(labels, min_size=1, max_size=6, unique=True),
    st.lists(st.tuples(st.sampled_from(["tt", "other"]), st.sampled_from(["a", "b"]), labels), max_size=30),
)
def test_each_thing_lands_in_the_first_ring_that_selects_it_and_only_there(values, things):
    groups = {"cams": DeviceGroupConfig(name="cams", hardware=HW, labels={"site": "a"})}
    rollout = _rollout(values)
    queries = [ring_query(rollout, i, groups, "tt", NAMING) for i in range(len(values))]
    for i, query in enumerate(queries):
        assert ring_query(_rollout(values[: i + 1]), i, groups, "tt", NAMING) == query, "a later ring changed an earlier ring's query"
        assert query_terms(query) == 3 + i <= 12
    for ttype, site, ring in [*things, *(("tt", "a", v) for v in values)]:
        thing = {"thingTypeName": ttype, "attributes.site": site, "attributes.ring": ring}
        selected = [i for i, q in enumerate(queries) if matches(q, thing)]
        intended = [values.index(ring)] if ttype == "tt" and site == "a" and ring in values else []
        assert selected == intended, (thing, queries)


def test_a_query_over_fleet_indexings_twelve_terms_is_refused_before_anything_is_declared(tmp_path):
    project = project_copy(tmp_path)
    stack = project / "stacks" / "Pulumi.aws-dev.yaml"
    doc = yaml.safe_load(stack.read_text())
    rollout = doc["config"]["edgefleet:rollouts"][0]
    rings = rollout["rings"]
    extra = [{**rings[0], "name": f"wave{n}", "labels": {"ring": f"wave{n}"}} for n in range(9)]
    rollout["rings"] = [*rings[:-1], *extra, rings[-1]]
    doc["config"]["edgefleet:aws"]["rings"].update({f"wave{n}": {"devices": 5} for n in range(9)})
    stack.write_text(yaml.safe_dump(doc))
    with pytest.raises(EdgefleetError) as info:
        synth_graph(project, "aws-dev")
    assert str(info.value).startswith("stacks/Pulumi.aws-dev.yaml: edgefleet:rollouts[0].rings[10]: ring 'wave8' needs")
    assert "13 terms" in str(info.value) and "at most 12" in str(info.value)


def test_job_policy_derives_from_the_gate_unless_set():
    aws = AwsConfig.model_validate(
        {
            "region": "eu-west-1",
            "rings": {"canary": {"devices": 4}, "broad": {"devices": 9, "abort_failure_percent": 3, "timeout_minutes": 15}},
        }
    )
    gate = GateConfig(soak_seconds=60, deadline_seconds=3601, max_failure_share=0.125)
    derived = ring_job_policy(aws, RingConfig(name="canary", group="g", gate=gate))
    assert (derived.devices, derived.abort_percent, derived.timeout_minutes, derived.max_per_minute) == (4, 12.5, 61, 50)
    explicit = ring_job_policy(aws, RingConfig(name="broad", group="g", gate=gate))
    assert (explicit.abort_percent, explicit.timeout_minutes) == (3, 15)
    strict = ring_job_policy(aws, RingConfig(name="canary", group="g", gate=GateConfig(max_failure_share=0.0)))
    assert strict.abort_percent == 0.01, "a zero-tolerance gate must not become a job that aborts after its first device"
    long_deadline = ring_job_policy(aws, RingConfig(name="canary", group="g", gate=GateConfig(deadline_seconds=10**7)))
    assert long_deadline.timeout_minutes == 10080, "IoT jobs time out after at most 7 days"


def test_every_kind_of_deployment_payload_is_a_valid_create_deployment_request():
    aws = AwsConfig.model_validate({"region": "eu-west-1", "rings": {"canary": {"devices": 4}}})
    policy = ring_job_policy(aws, RingConfig(name="canary", group="g"))
    ring = RingComponents("edgefleet.aws-dev.detector.Model", "edgefleet.aws-dev.Agent", "0.1.0", "detector", "canary")
    target = "arn:aws:iot:eu-west-1:123456789012:thinggroup/edgefleet-aws-dev-detector-canary"
    payloads = [
        components_spec(ring, "1.2.0", "detector@1.2.0+abc"),
        components_spec(ring, "1.1.0", "detector@1.2.0+abc", rollback=('{"format":"edgefleet-rollback/v1"}', '{"sig":"x"}')),
        components_spec(ring, None, "detector@1.2.0+abc"),
    ]
    for components in payloads:
        req = deployment_request(
            target,
            NAMING.deployment_name("detector", "canary", "1.2.0"),
            components,
            policy,
            deployment_tags("detector", "canary", "1.2.0"),
            client_token="a" * 64,
        )
        report = ParamValidator().validate(req, CREATE)
        assert not report.has_errors(), report.generate_report()
    assert payloads[0]["edgefleet.aws-dev.detector.Model"]["configurationUpdate"]["reset"] == ["/RollbackOrder", "/RollbackSignature"]
    assert "reset" not in payloads[1]["edgefleet.aws-dev.detector.Model"]["configurationUpdate"]
    assert payloads[2] == {}


def test_names_fit_aws_limits_stably():
    long = Naming("a" * 100)
    assert len(long.device_role) <= 64 and long.device_role == Naming("a" * 100).device_role
    assert long.device_role != Naming("a" * 99 + "b").device_role
    assert fit("short", 64) == "short"
    assert Naming("Prod.EU_1").prefix == "edgefleet-prod-eu-1", "thing group names allow no dots"


def test_explicit_device_ids_make_a_static_group_the_rings_select_from(tmp_path):
    def edit(config):
        group = config["edgefleet:groups"][0]
        group.pop("labels")
        group["devices"] = ["cam-1", "cam-2"]

    graph = synth_graph(project_copy(tmp_path, edit))
    group = graph.named("cameras-thing-group")
    assert "queryString" not in group["inputs"], "a static thing group"
    members = graph.of_type("aws:iot/thingGroupMembership:ThingGroupMembership")
    assert sorted(m["inputs"]["thingName"] for m in members) == ["cam-1", "cam-2"]
    assert all(m["inputs"]["thingGroupName"] == "edgefleet-aws-dev-cameras" for m in members)
    canary = graph.named("detector-canary-thing-group")["inputs"]["queryString"]
    assert canary == "thingGroupNames:edgefleet-aws-dev-cameras AND attributes.ring:canary"


def test_gate_timeouts_outlast_a_ring_waiting_for_its_maintenance_window():
    """A ring whose group may swap one hour a week can wait 167 h for the opening while its gate legitimately waits:
    the gate's Pulumi timeout (Greengrass's, and IoT Edge's and the local one through the shared ring_gate_timeout) must
    go beyond that. Without windows the timeouts are what they were."""
    from types import SimpleNamespace

    from components.aws.platform import _gate_timeout
    from components.platform import ring_gate_timeout

    def seconds(timeout: str) -> int:
        return int(timeout.removesuffix("s"))

    plain = DeviceGroupConfig(name="cams", hardware=HW, labels={"site": "a"})
    weekly = DeviceGroupConfig(name="cams", hardware=HW, labels={"site": "a"}, maintenance_windows=[{"cron": "0 2 * * 1", "minutes": 60}])
    rings = [RingConfig(name="canary", group="cams", gate=GateConfig(deadline_seconds=600)), RingConfig(name="broad", group="cams")]
    assert seconds(_gate_timeout(rings, {"cams": plain})) == int((600 + 3600 + 3600) * 1.2) + 600
    assert seconds(_gate_timeout(rings, {"cams": weekly})) > 2 * 167 * 3600
    assert seconds(ring_gate_timeout(SimpleNamespace(ring=rings[1], group=plain), 900)) == 3600 * 2 + 900
    assert seconds(ring_gate_timeout(SimpleNamespace(ring=rings[1], group=weekly), 900)) > 167 * 3600 + 3600
