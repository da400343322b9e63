"""The rules on the real synthesized graphs of the stacks in stacks/: as declared, and with one fact changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.plan import run_policy

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def graph_of(stack: str) -> dict:
    """A stack that no longer synthesizes fails these tests: a skip would hide a broken stack."""
    from edgefleet.synth import synth

    return synth(ROOT, stack)


def rule(report, name):
    return next(r for r in report.results if r.name == name)


@pytest.mark.parametrize("stack", STACKS)
def test_declared_stacks_pass_every_mandatory_rule(stack):
    report = run_policy(graph_of(stack), project_dir=ROOT)
    assert not report.blocking, [(r.name, [f.message for f in r.violations]) for r in report.blocking]
    assert rule(report, "model-signed-by-stack-key").status == "passed"
    assert rule(report, "hardware-can-run-model").status == "passed"


def make_public(graph: dict) -> list[str]:
    """Flips every public-access fact the stack declares; returns what was flipped."""
    flipped = []
    for r in graph["resources"]:
        if r["type"] == "edgefleet:storage:ModelStore" and r.get("outputs", {}).get("publicAccessBlocked") is not None:
            r["outputs"]["publicAccessBlocked"] = False
            flipped.append(r["name"])
        elif r["type"] == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":
            r["inputs"]["blockPublicPolicy"] = False
            flipped.append(r["name"])
        elif r["type"] == "azure-native:storage:StorageAccount":
            r["inputs"]["allowBlobPublicAccess"] = True
            flipped.append(r["name"])
    return flipped


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "local"])
def test_a_store_made_public_fails(stack):
    graph = graph_of(stack)
    assert make_public(graph), f"stack {stack} declares no store facts to flip"
    r = rule(run_policy(graph, project_dir=ROOT), "store-private-encrypted")
    assert r.status == "failed" and r.blocking
    text = " | ".join(f.message for f in r.violations)
    assert "not blocked from public access" in text
    assert "leaves blockPublicPolicy off" in text or "allowBlobPublicAccess: true" in text


def test_the_local_store_is_exempt_until_the_stack_is_production():
    graph = graph_of("local")
    assert rule(run_policy(graph), "store-private-encrypted").status == "not-applicable"
    graph["config"].setdefault("policy", {})["production"] = True
    r = rule(run_policy(graph), "store-private-encrypted")
    assert r.status == "failed" and "is not encrypted at rest" in r.violations[0].message


def test_the_local_sandbox_allows_declared_metrics_and_a_production_stack_does_not():
    graph = graph_of("local")  # models/detector declares its accuracy (typed in)
    assert rule(run_policy(graph), "metrics-measured").status == "not-applicable"
    graph["config"].setdefault("policy", {})["production"] = True
    r = rule(run_policy(graph), "metrics-measured")
    assert r.status == "failed" and r.blocking and "only declared metrics (accuracy, typed in)" in r.violations[0].message


def test_a_stack_that_does_not_synthesize_fails_instead_of_skipping(monkeypatch):
    from edgefleet import synth
    from edgefleet_agent.contract.errors import EdgefleetError

    def broken(project_dir, stack):
        raise EdgefleetError(f"stacks/Pulumi.{stack}.yaml", "broken on purpose")

    monkeypatch.setattr(synth, "synth", broken)
    with pytest.raises(EdgefleetError, match="broken on purpose"):
        graph_of("aws-dev")


def test_aws_declared_ring_sizes_let_the_canary_rule_fail():
    """AWS rings select by thing attributes; the sizes the stack declares (aws.rings.<ring>.devices) still count."""
    graph = graph_of("aws-dev")
    graph["config"]["policy"] = {"production": True, "canary_max_share": 0.001}
    r = rule(run_policy(graph, project_dir=ROOT), "production-canary-ring")
    assert r.status == "failed" and r.blocking
    assert "covering 0.9% (5 of 555 devices, as declared in edgefleet:aws.rings.<ring>.devices)" in r.violations[0].message
    graph["config"]["policy"]["canary_max_share"] = 0.01
    r = rule(run_policy(graph, project_dir=ROOT), "production-canary-ring")
    assert r.status == "passed" and not r.findings


def test_the_aws_key_and_bucket_policies_are_checked_for_wildcards():
    """The store's deny-non-TLS statement (Deny s3:*) is fine; an Allow kms:* in the signing key's policy is not."""
    graph = graph_of("aws-dev")
    bucket_policy = next(r for r in graph["resources"] if r["type"] == "aws:s3/bucketPolicy:BucketPolicy")
    assert '"s3:*"' in bucket_policy["inputs"]["policy"] and '"Deny"' in bucket_policy["inputs"]["policy"]
    assert rule(run_policy(graph, project_dir=ROOT), "iam-no-wildcard-actions").status == "passed"

    key = next(r for r in graph["resources"] if r["type"] == "aws:kms/key:Key" and "sign" in r["inputs"]["description"].lower())
    doc = json.loads(key["inputs"]["policy"])
    doc["Statement"].append(
        {"Sid": "Everything", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}
    )
    key["inputs"]["policy"] = json.dumps(doc)
    r = rule(run_policy(graph, project_dir=ROOT), "iam-no-wildcard-actions")
    assert r.status == "failed" and r.blocking
    assert f"KMS key policy {key['name']!r} allows wildcard actions: kms:*" in r.violations[0].message
