"""The CrossGuard adapter, driven the way the engine drives a pack: Analyze (inputs) per resource, then
AnalyzeStack (outputs). Calls each policy's `validate` directly; never imports policies/__main__.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from policy_graphs import PI, fleet, manifest, rec
from pulumi_policy import (
    EnforcementLevel,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import PolicyCustomTimeouts, _NotApplicableError
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policies import pack, rules
from policies.compatibility import parse_version
from policies.settings import DEFAULT_CANARY_MAX_SHARE, Settings

ROOT = Path(__file__).resolve().parents[2]


def opts(parent=None):
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def engine_view(graph):
    """What the engine sends: Analyze gets inputs; AnalyzeStack gets outputs (a component's registered outputs only)."""
    provider = PolicyProviderResource("pulumi:providers:aws", {}, "urn:pulumi:prod::edgefleet::pulumi:providers:aws::default", "default")
    resources = {}
    for r in graph:
        props = r.get("outputs", {}) if not r.get("custom") else {**r["inputs"], **r.get("outputs", {})}
        resources[r["urn"]] = PolicyResource(
            r["type"],
            unknown_checking_proxy(props),
            r["urn"],
            r["name"],
            opts(r.get("parent")),
            provider if r.get("custom") else None,
            None,
            [],
            {},
        )
    for r in graph:
        res = resources[r["urn"]]
        res.parent = resources.get(r.get("parent"))
        res.dependencies = [resources[d] for d in r["dependencies"] if d in resources]
        res.property_dependencies = {k: [resources[d] for d in v if d in resources] for k, v in r["property_dependencies"].items()}
    analyze = [
        ResourceValidationArgs(
            r["type"],
            unknown_checking_proxy(r["inputs"]),
            r["urn"],
            r["name"],
            opts(r.get("parent")),
            provider if r.get("custom") else None,
        )
        for r in graph
    ]
    return analyze, list(resources.values())


def run_pack(graph, settings=None, config=None, analyze_inputs=True):
    """-> {policy name: [(message, urn)]}; not-applicable policies map to their reason."""
    policies = pack.build_policies(settings or Settings())
    analyze, stack = engine_view(graph)
    out = {}
    for p in policies:
        if isinstance(p, ResourceValidationPolicy):
            if analyze_inputs:
                for args in analyze:
                    p.validate(args, lambda m, u=None: pytest.fail(f"the collector reported {m}"))
            continue
        found = []
        try:
            p.validate(StackValidationArgs(stack, (config or {}).get(p.name)), lambda m, u=None, found=found: found.append((m, u)))
            out[p.name] = found
        except _NotApplicableError as exc:
            out[p.name] = f"n/a: {exc.reason}"
    return out


def test_pack_has_the_collector_every_rule_and_the_unverified_advisory():
    policies = pack.build_policies(Settings(enforcement={"metric-floor": "advisory", "registry-hardened": "disabled"}))
    assert isinstance(policies[0], ResourceValidationPolicy) and policies[0].name == pack.COLLECTOR
    stack = [p for p in policies if isinstance(p, StackValidationPolicy)]
    assert [p.name for p in stack] == [r.name for r in rules.RULES] + [pack.UNVERIFIED]
    level = {p.name: p.enforcement_level for p in policies}
    assert level["metric-floor"] == EnforcementLevel.ADVISORY and level["registry-hardened"] == EnforcementLevel.DISABLED
    assert level["hardware-can-run-model"] == EnforcementLevel.MANDATORY and level[pack.UNVERIFIED] == EnforcementLevel.ADVISORY
    schema = next(p for p in policies if p.name == "production-canary-ring").config_schema.properties
    assert schema["canary_max_share"]["type"] == "number" and "enforcementLevel" not in schema
    assert "policies.__main__" not in sys.modules


def test_violations_reach_report_violation_with_the_resource_urn():
    graph = fleet(hardware=PI)
    found = run_pack(graph)
    ring_urn = next(r["urn"] for r in graph if r["name"] == "detector-canary")
    (message, urn), *_ = found["hardware-can-run-model"]
    assert urn == ring_urn and "can run none of its targets" in message
    assert found["model-signed-by-stack-key"] == [] and found["store-private-encrypted"] == []
    assert found["metric-regression"].startswith("n/a: needs the version each model replaces")


def test_component_inputs_come_only_from_the_collector():
    """AnalyzeStack alone has no manifest or hardware (component outputs): the facts are reported as unverifiable, not failed."""
    found = run_pack(fleet(hardware=PI), analyze_inputs=False)
    assert found["hardware-can-run-model"] == []
    assert any("model or group facts not visible" in m for m, _ in found[pack.UNVERIFIED])


def test_policy_config_overrides_the_stack_settings():
    graph = fleet(rings=[{"ring": "canary", "percent": 30}, {"ring": "broad", "percent": 100}], platform="local")
    assert run_pack(graph)["production-canary-ring"].startswith("n/a: not a production stack")
    found = run_pack(graph, config={"production-canary-ring": {"production": True, "canary_max_share": 0.1}})
    assert "covering 30%" in found["production-canary-ring"][0][0]
    base = {"detector": manifest(accuracy=0.95)}
    found = run_pack(fleet(m=manifest(version="1.1.0", sha="c" * 64, accuracy=0.90)), config={"metric-regression": {"base_models": base}})
    assert "regresses 0.95 -> 0.9" in found["metric-regression"][0][0]


def test_unknown_values_during_preview_are_unverified_not_violations():
    policy = rec("aws:iam/policy:Policy", "publisher", inputs={"policy": UNKNOWN_STRING_VALUE})
    found = run_pack([policy])
    assert found["iam-no-wildcard-actions"] == []
    assert any("policy document not known before deploy" in m for m, _ in found[pack.UNVERIFIED])


def test_plain_turns_proxies_unknowns_and_secrets_into_data():
    from pulumi_policy import Secret

    value = unknown_checking_proxy({"a": [1, {"b": UNKNOWN_STRING_VALUE}], "c": "x"})
    assert pack.plain(value) == {"a": [1, {"b": "[unknown]"}], "c": "x"}
    assert pack.plain({"s": Secret("hunter2")}) == {"s": "[secret]"}


def test_settings_come_from_pulumi_config_like_the_program_gets_them():
    env = {
        "PULUMI_STACK": "prod",
        "PULUMI_CONFIG": json.dumps(
            {
                "edgefleet:policy": json.dumps({"production": True, "enforcement": {"metric-floor": "advisory"}}),
                "edgefleet:aws": json.dumps({"region": "eu-west-1", "agent_version": "0.3.0"}),
                "aws:region": "eu-west-1",
            }
        ),
    }
    s = pack.settings_from_environment(env)
    assert s.stack == "prod" and s.production and s.agent_versions["aws"] == "0.3.0"
    assert s.level(rules.RULES_BY_NAME["metric-floor"]) == "advisory"
    empty = pack.settings_from_environment({})
    assert (empty.production, empty.enforcement, empty.canary_max_share) == (False, {}, DEFAULT_CANARY_MAX_SHARE)


def test_the_real_local_graph_passes_through_the_adapter():
    from edgefleet.synth import synth

    graph = synth(ROOT, "local")["resources"]
    found = run_pack(graph)
    violations = {name: v for name, v in found.items() if isinstance(v, list) and v and name != pack.UNVERIFIED}
    assert violations == {}
    assert found["model-signed-by-stack-key"] == [] and found["hardware-can-run-model"] == []


def test_pack_files_are_laid_out_as_pulumi_expects():
    import yaml

    project = yaml.safe_load((ROOT / "policies" / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python" and project["runtime"]["options"]["virtualenv"] == "venv"
    assert parse_version(project["version"])
    assert "pulumi-policy" in (ROOT / "policies" / "requirements.txt").read_text()
    main_py = (ROOT / "policies" / "__main__.py").read_text()
    assert "PolicyPack(" in main_py and "build_policies()" in main_py
