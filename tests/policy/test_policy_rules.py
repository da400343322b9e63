"""Each rule on small hand-built graphs: one that passes and ones that fail, with the message a reviewer reads."""

from __future__ import annotations

import copy
import json

import pytest
from policy_graphs import PI, SHA2, find, fleet, manifest, measured, rec

from policies import local, rules
from policies.compatibility import compare_io
from policies.crossguard import crossguard_config
from policies.engine import LEVELS
from policies.rules import evaluate
from policies.settings import Settings, settings_from_pulumi_config


def result(graph, name, **settings):
    report = evaluate(graph, Settings(**settings))
    return next(r for r in report.results if r.name == name)


def messages(r):
    return " | ".join(f.message for f in r.findings)


# -- signing and digests ----------------------------------------------------------------------------------------------
def test_signed_model_passes():
    assert result(fleet(), "model-signed-by-stack-key").status == "passed"


def test_model_signed_with_a_foreign_key_fails():
    g = fleet()
    find(g, "detector")["inputs"]["signingKeys"] = ["urn:pulumi:other::edgefleet::edgefleet:signing:SigningKey::someone-else"]
    r = result(g, "model-signed-by-stack-key")
    assert r.status == "failed" and "not a signing key declared by this stack" in messages(r)


def test_model_without_key_or_whose_publication_ignores_the_key_fails():
    g = fleet()
    find(g, "detector")["inputs"]["signingKeys"] = []
    assert "names no signing key" in messages(result(g, "model-signed-by-stack-key"))
    g = fleet()
    find(g, "detector-artifact")["dependencies"] = []
    r = result(g, "model-signed-by-stack-key")
    assert r.status == "failed" and "depends on that key" in messages(r)


def test_digest_mismatch_between_manifest_and_ring_fails():
    m = manifest()
    m["ring_sha"] = SHA2
    r = result(fleet(m=m), "model-digest-matches-artifact")
    assert r.status == "failed" and "ships sha256 bbbbbbbbbbbb" in messages(r)
    assert result(fleet(), "model-digest-matches-artifact").status == "passed"


def test_digest_rule_rehashes_the_artifact_file(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "detector.onnx").write_bytes(b"not the pinned model")
    g = fleet()
    find(g, "detector-artifact")["inputs"]["source"] = "models/detector.onnx"
    r = result(g, "model-digest-matches-artifact", project_dir=str(tmp_path))
    assert r.status == "failed" and "models/detector.onnx has sha256" in messages(r) and "edgefleet model add" in messages(r)


# -- production canary ------------------------------------------------------------------------------------------------
def test_canary_rule_is_not_applicable_outside_production():
    r = result(fleet(), "production-canary-ring")
    assert r.status == "not-applicable" and "not a production stack" in r.note


def test_production_canary_by_percent_passes_and_a_big_first_ring_fails():
    small = fleet(platform="local", rings=[{"ring": "canary", "percent": 5}, {"ring": "broad", "percent": 100}])
    assert result(small, "production-canary-ring", production=True, canary_max_share=0.1).status == "passed"
    big = fleet(platform="local", rings=[{"ring": "canary", "percent": 30}, {"ring": "broad", "percent": 100}])
    r = result(big, "production-canary-ring", production=True, canary_max_share=0.1)
    assert r.status == "failed" and "covering 30%" in messages(r) and "at most 10%" in messages(r)


def test_production_canary_uses_membership_counts_when_known():
    g = fleet(platform="local", rings=[{"ring": "canary", "percent": 5}, {"ring": "broad", "percent": 100}])
    r = result(
        g,
        "production-canary-ring",
        production=True,
        ring_devices={"detector": {"canary": 30, "broad": 70}},
        rollout_devices={"detector": 100},
    )
    assert r.status == "failed" and "30 of 100 devices" in messages(r)


def test_production_canary_soak_too_short_fails():
    g = fleet(rings=[{"ring": "canary", "labels": {"ring": "canary"}, "gate": {"soak_seconds": 30}}, {"ring": "broad"}])
    r = result(g, "production-canary-ring", production=True, min_canary_soak_seconds=300)
    assert r.status == "failed" and "soaks 30s" in messages(r)


def test_production_canary_by_labels_is_unverified_not_failed():
    r = result(fleet(), "production-canary-ring", production=True)
    assert r.status == "passed" and r.findings and all(f.unverified for f in r.findings)


def test_production_canary_uses_declared_cloud_ring_sizes():
    declared = {"aws": {"canary": 5, "broad": 495}}
    r = result(fleet(), "production-canary-ring", production=True, canary_max_share=0.001, declared_ring_devices=declared)
    assert r.status == "failed" and "covering 1% (5 of 500 devices, as declared in edgefleet:aws.rings.<ring>.devices)" in messages(r)
    r = result(fleet(), "production-canary-ring", production=True, canary_max_share=0.05, declared_ring_devices=declared)
    assert r.status == "passed" and not r.findings
    partial = {"aws": {"canary": 5}}
    r = result(fleet(), "production-canary-ring", production=True, canary_max_share=0.001, declared_ring_devices=partial)
    assert r.status == "passed" and r.findings[0].unverified, "a ring without a declared size leaves the total unknown"
    r = result(fleet(), "production-canary-ring", production=True, canary_max_share=0.001, declared_ring_devices={"azure": declared["aws"]})
    assert r.status == "passed" and r.findings[0].unverified, "another platform's sizes say nothing about these rings"


def test_declared_ring_sizes_come_from_the_stack_config_and_reach_crossguard():
    config = {"aws": {"region": "eu-west-1", "rings": {"canary": {"devices": 5, "max_per_minute": 5}, "broad": {"devices": 500}}}}
    settings = Settings.from_config(config)
    assert settings.declared_ring_devices == {"aws": {"canary": 5, "broad": 500}}
    assert settings_from_pulumi_config({f"edgefleet:{k}": json.dumps(v) for k, v in config.items()}) == settings
    assert crossguard_config(settings)["production-canary-ring"]["declared_ring_devices"] == {"aws": {"canary": 5, "broad": 500}}


def test_single_ring_production_rollout_fails():
    r = result(fleet(rings=[{"ring": "everyone"}]), "production-canary-ring", production=True)
    assert r.status == "failed" and "covering 100%" in messages(r)


# -- production quality gates ----------------------------------------------------------------------------------------
def test_quality_rule_is_not_applicable_outside_production_and_advisory_in_it():
    assert result(fleet(), "production-quality-gates").status == "not-applicable"
    r = result(fleet(), "production-quality-gates", production=True)
    assert r.status == "failed" and r.level == "advisory"
    assert "judge only health" in messages(r) and "min_agreement" in messages(r)
    report = evaluate(fleet(), Settings(production=True, canary_max_share=1.0))
    assert "production-quality-gates" not in [b.name for b in report.blocking], "advisory: it reports, it does not block"


@pytest.mark.parametrize(
    "gate",
    [
        {"shadow_soak_seconds": 600, "min_agreement": 0.9},
        {"max_distribution_shift": 0.1},
        {"max_confidence_drop": 0.05},
        {"max_latency_ratio": 1.5},
        {"min_live_accuracy": 0.9},
    ],
)
def test_any_quality_criterion_on_any_ring_satisfies_the_quality_rule(gate):
    g = fleet(rings=[{"ring": "canary", "labels": {"ring": "canary"}}, {"ring": "broad", "gate": gate}])
    assert result(g, "production-quality-gates", production=True).status == "passed"


def test_the_quality_rules_criteria_are_the_gates():
    from components.rollout.spec import QUALITY_CRITERIA
    from policies.rollouts import QUALITY_CRITERIA as RULE_CRITERIA

    assert RULE_CRITERIA == QUALITY_CRITERIA


# -- metrics --------------------------------------------------------------------------------------------------------
def test_metric_floor_pass_fail_and_missing():
    assert result(fleet(), "metric-floor", metric_floors={"accuracy": 0.85}).status == "passed"
    r = result(fleet(m=manifest(accuracy=0.8)), "metric-floor", metric_floors={"accuracy": 0.85})
    assert r.status == "failed" and "accuracy 0.8 is below the stack's floor 0.85" in messages(r)
    r = result(fleet(m=manifest(accuracy=None)), "metric-floor", metric_floors={"accuracy": 0.85})
    assert "declares no 'accuracy' evaluation" in messages(r)
    assert result(fleet(), "metric-floor").status == "not-applicable"


def test_metric_regression_needs_a_base():
    r = result(fleet(), "metric-regression")
    assert r.status == "not-applicable" and "--base" in r.note and "CrossGuard" in r.note


def test_metric_regression_beyond_the_allowance_fails():
    base = {"detector": manifest(version="1.0.0", accuracy=0.90)}
    g = fleet(m=manifest(version="1.1.0", sha=SHA2, accuracy=0.87))
    r = result(g, "metric-regression", base_models=base, max_metric_regression=0.02)
    assert r.status == "failed" and "regresses 0.9 -> 0.87" in messages(r)
    ok = fleet(m=manifest(version="1.1.0", sha=SHA2, accuracy=0.89))
    assert result(ok, "metric-regression", base_models=base, max_metric_regression=0.02).status == "passed"


def test_metric_on_a_different_dataset_is_unverified():
    new = manifest(version="1.1.0", sha=SHA2)
    new["metrics"][0]["dataset"] = "eval-v2"
    r = result(fleet(m=new), "metric-regression", base_models={"detector": manifest()})
    assert r.status == "passed" and r.findings[0].unverified and "not comparable" in r.findings[0].message


def test_metric_floor_reads_measured_metrics_and_says_how_each_was_obtained():
    r = result(fleet(m=measured(manifest(), accuracy=0.8)), "metric-floor", metric_floors={"accuracy": 0.85})
    assert (
        r.status == "failed"
        and "accuracy 0.8 is below the stack's floor 0.85 (measured on channel-dominance-eval (sha256 dddd" in messages(r)
    )
    r = result(fleet(m=manifest(accuracy=0.8)), "metric-floor", metric_floors={"accuracy": 0.85})
    assert "(declared on eval-v1)" in messages(r)
    assert result(fleet(m=measured(manifest(), accuracy=0.9)), "metric-floor", metric_floors={"accuracy": 0.85}).status == "passed"


def test_metric_regression_compares_measurements_on_the_same_pinned_set():
    base = {"detector": measured(manifest(version="1.0.0"), accuracy=0.90)}
    worse = fleet(m=measured(manifest(version="1.1.0", sha=SHA2), accuracy=0.85))
    r = result(worse, "metric-regression", base_models=base, max_metric_regression=0.02)
    assert r.status == "failed" and "regresses 0.9 -> 0.85" in messages(r)
    other_set = fleet(m=measured(manifest(version="1.1.0", sha=SHA2), accuracy=0.85, dataset_sha256="e" * 64))
    r = result(other_set, "metric-regression", base_models=base)
    assert r.status == "passed" and r.findings[0].unverified and "not comparable" in messages(r), "another set (digest) is not comparable"


def test_declared_then_measured_is_not_comparable():
    r = result(fleet(m=measured(manifest(version="1.1.0", sha=SHA2))), "metric-regression", base_models={"detector": manifest()})
    assert r.status == "passed" and r.findings[0].unverified
    assert "accuracy is measured on 'channel-dominance-eval (sha256 dddddddddddd)', the old one was declared on 'eval-v1'" in messages(r)


# -- measured metrics on production stacks ----------------------------------------------------------------------------
def test_metrics_measured_is_not_applicable_outside_production():
    r = result(fleet(), "metrics-measured")
    assert r.status == "not-applicable" and "declared metrics are allowed" in r.note


def test_production_refuses_declared_only_metrics():
    r = result(fleet(), "metrics-measured", production=True)
    assert (r.status, r.level, r.blocking) == ("failed", "mandatory", True)
    assert "model detector 1.0.0 has only declared metrics (accuracy, typed in)" in messages(r)
    assert "edgefleet model evaluate models/detector --dataset models/datasets/<set>.yaml" in messages(r)
    r = result(fleet(m=manifest(accuracy=None)), "metrics-measured", production=True)
    assert r.status == "failed" and "has no metrics" in messages(r)


def test_production_passes_measured_metrics():
    assert result(fleet(m=measured(manifest())), "metrics-measured", production=True).status == "passed"


def test_production_refuses_a_declared_metric_beside_measured_ones():
    m = measured(manifest())
    m["metrics"] = [{"name": "f1", "value": 0.8, "dataset": "eval-v1", "higher_is_better": True}]
    r = result(fleet(m=m), "metrics-measured", production=True)
    assert r.status == "failed" and "f1 is declared (typed in), not measured" in messages(r)


def test_production_can_lower_the_rule_for_tasks_not_measured_yet():
    r = result(fleet(), "metrics-measured", production=True, enforcement={"metrics-measured": "advisory"})
    assert (r.status, r.level, r.blocking) == ("failed", "advisory", False)


# -- I/O and agent ---------------------------------------------------------------------------------------------------
RENAMED = [{"name": "pixels", "element_type": "float32", "shape": ["batch", 3, 224, 224]}]


def test_breaking_io_without_agent_bump_fails_and_with_bump_passes():
    base = {"detector": manifest()}
    r = result(
        fleet(m=manifest(version="2.0.0", sha=SHA2, inputs=RENAMED)),
        "breaking-io-needs-agent",
        base_models=base,
        agent_versions={"aws": "0.2.0"},
    )
    assert r.status == "failed" and "input 'image': renamed to 'pixels'" in messages(r) and "min_agent_version stays 0.1.0" in messages(r)
    ok = fleet(m=manifest(version="2.0.0", sha=SHA2, inputs=RENAMED, min_agent="0.2.0"))
    assert result(ok, "breaking-io-needs-agent", base_models=base, agent_versions={"aws": "0.2.0"}).status == "passed"


def test_model_needing_a_newer_agent_than_the_fleet_runs_fails():
    r = result(fleet(m=manifest(min_agent="0.3.0")), "breaking-io-needs-agent", agent_versions={"aws": "0.2.0"})
    assert r.status == "failed" and "the aws fleet runs 0.2.0" in messages(r) and "edgefleet:aws.agent_version" in messages(r)


def test_adding_an_output_is_compatible_and_removing_one_breaks():
    old = manifest()
    more = manifest(outputs=old["outputs"] + [{"name": "boxes", "element_type": "float32", "shape": ["batch", 4]}])
    verdict = compare_io(old, more)
    assert verdict.verdict == "compatible" and not verdict.reasons
    assert compare_io(more, old).verdict == "breaking"


@pytest.mark.parametrize(
    "new_input,reason",
    [
        ({"name": "image", "element_type": "float16", "shape": ["batch", 3, 224, 224]}, "dtype changed float32 -> float16"),
        ({"name": "image", "element_type": "float32", "shape": ["batch", 3, 320, 320]}, "fixed dim 2 changed 224 -> 320"),
        ({"name": "image", "element_type": "float32", "shape": [1, 3, 224, 224]}, "dim 0 symbolic 'batch' -> fixed 1"),
        ({"name": "image", "element_type": "float32", "shape": ["batch", 224, 224]}, "rank changed"),
    ],
)
def test_io_breaking_reasons(new_input, reason):
    verdict = compare_io(manifest(), manifest(inputs=[new_input]))
    assert verdict.verdict == "breaking" and any(reason in r for r in verdict.reasons)


def test_relaxing_an_input_dim_is_compatible():
    old = manifest(inputs=[{"name": "image", "element_type": "float32", "shape": [1, 3, 224, 224]}])
    assert compare_io(old, manifest()).verdict == "compatible"


# -- hardware -------------------------------------------------------------------------------------------------------
def test_model_sent_to_hardware_that_cannot_run_it_fails():
    assert result(fleet(), "hardware-can-run-model").status == "passed"
    r = result(fleet(hardware=PI), "hardware-can-run-model")
    assert r.status == "failed"
    assert "ring 'canary' sends detector 1.0.0 to group 'cameras' (pi-zero)" in messages(r)
    assert "arch amd64 != armv7" in messages(r) and "needs 256 MB memory; device budget 128 MB" in messages(r)


def test_model_larger_than_the_group_budget_fails():
    hw = {**PI, "arch": "amd64", "memory_mb": 256, "storage_mb": 64}
    r = result(fleet(m=manifest(size=80 * 1024 * 1024), hardware=hw), "hardware-can-run-model")
    assert "over the group's storage_mb budget of 64 MB" in messages(r)


# -- platform hardening ---------------------------------------------------------------------------------------------------
def bucket_graph(acl=None, pab=True, sse=True, flags=None):
    bucket = rec("aws:s3/bucket:Bucket", "models-bucket", inputs={"acl": acl} if acl else {})
    g = [bucket]
    if pab:
        g.append(
            rec(
                "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
                "models-pab",
                inputs={
                    "bucket": "models-bucket-id",
                    **(flags or {k: True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")}),
                },
                prop_deps={"bucket": [bucket["urn"]]},
            )
        )
    if sse:
        g.append(
            rec(
                "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                "models-sse",
                inputs={"bucket": "models-bucket-id", "rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]},
                prop_deps={"bucket": [bucket["urn"]]},
            )
        )
    return g


def test_private_encrypted_bucket_passes():
    assert result(bucket_graph(), "store-private-encrypted").status == "passed"


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"acl": "public-read"}, "public ACL 'public-read'"),
        ({"pab": False}, "no aws.s3.BucketPublicAccessBlock"),
        (
            {"flags": {"blockPublicAcls": True, "blockPublicPolicy": False, "ignorePublicAcls": True, "restrictPublicBuckets": False}},
            "leaves blockPublicPolicy, restrictPublicBuckets off",
        ),
        ({"sse": False}, "declares no server-side encryption"),
    ],
)
def test_public_or_unencrypted_bucket_fails(kwargs, needle):
    r = result(bucket_graph(**kwargs), "store-private-encrypted")
    assert r.status == "failed" and needle in messages(r)


def test_public_bucket_policy_fails():
    policy = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}]}
    )
    g = bucket_graph() + [rec("aws:s3/bucketPolicy:BucketPolicy", "models-policy", inputs={"policy": policy})]
    assert "allows anyone (s3:GetObject)" in messages(result(g, "store-private-encrypted"))


def test_generic_model_store_facts_fail_when_public_or_unencrypted_and_local_is_exempt():
    r = result(fleet(encrypted=False, blocked=False), "store-private-encrypted")
    assert r.status == "failed" and "not encrypted at rest" in messages(r) and "not blocked from public access" in messages(r)
    local = fleet(platform="local", encrypted=False)
    assert result(local, "store-private-encrypted").status == "not-applicable"
    assert result(local, "store-private-encrypted", production=True).status == "failed"


def test_azure_storage_account_and_container():
    good = [
        rec("azure-native:storage:StorageAccount", "models", inputs={"allowBlobPublicAccess": False}),
        rec("azure-native:storage:BlobContainer", "models-c", inputs={"publicAccess": "None"}),
    ]
    assert result(good, "store-private-encrypted").status == "passed"
    bad = [
        rec("azure-native:storage:StorageAccount", "models", inputs={"allowBlobPublicAccess": True, "enableHttpsTrafficOnly": False}),
        rec("azure-native:storage:BlobContainer", "models-c", inputs={"publicAccess": "Container"}),
    ]
    text = messages(result(bad, "store-private-encrypted"))
    assert "allowBlobPublicAccess: true" in text and "plain HTTP" in text and "anonymous reads (publicAccess: Container)" in text


def test_registries():
    assert (
        result([rec("aws:ecr/repository:Repository", "agent", inputs={"imageTagMutability": "IMMUTABLE"})], "registry-hardened").status
        == "passed"
    )
    r = result([rec("aws:ecr/repository:Repository", "agent", inputs={})], "registry-hardened")
    assert r.status == "failed" and "imageTagMutability MUTABLE" in messages(r)
    r = result([rec("azure-native:containerregistry:Registry", "acr", inputs={"adminUserEnabled": True})], "registry-hardened")
    assert "admin user" in messages(r)
    assert result(fleet(platform="local"), "registry-hardened").status == "not-applicable"


def test_signing_keys():
    assert result(fleet(), "signing-key-not-exportable").status == "passed"
    r = result(fleet(exportable=True), "signing-key-not-exportable")
    assert r.status == "failed" and "is exportable" in messages(r)
    assert result(fleet(platform="local", exportable=True), "signing-key-not-exportable").status == "not-applicable"
    r = result([rec("aws:kms/externalKey:ExternalKey", "imported")], "signing-key-not-exportable")
    assert "imported key material" in messages(r)
    r = result(
        [rec("azure-native:keyvault:Key", "k", inputs={"properties": {"kty": "EC", "attributes": {"exportable": True}}})],
        "signing-key-not-exportable",
    )
    assert "Key Vault key 'k' is exportable" in messages(r)


def doc(*actions, effect="Allow"):
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": list(actions), "Resource": "*"}]})


def test_iam_wildcards():
    ok = [rec("aws:iam/policy:Policy", "publisher", inputs={"policy": doc("s3:PutObject", "kms:Sign")})]
    assert result(ok, "iam-no-wildcard-actions").status == "passed"
    r = result([rec("aws:iam/rolePolicy:RolePolicy", "p", inputs={"policy": doc("s3:*")})], "iam-no-wildcard-actions")
    assert r.status == "failed" and "wildcard actions: s3:*" in messages(r)
    role = rec(
        "aws:iam/role:Role",
        "gg",
        inputs={
            "assumeRolePolicy": doc("sts:AssumeRole"),
            "inlinePolicies": [{"name": "all", "policy": doc("*")}],
            "managedPolicyArns": ["arn:aws:iam::aws:policy/AdministratorAccess"],
        },
    )
    text = messages(result([role], "iam-no-wildcard-actions"))
    assert "inline policy 'all' allows wildcard actions: *" in text and "AdministratorAccess" in text
    assert (
        result([rec("aws:iam/policy:Policy", "deny", inputs={"policy": doc("*", effect="Deny")})], "iam-no-wildcard-actions").status
        == "passed"
    )
    unknown = result([rec("aws:iam/policy:Policy", "p", inputs={"policy": "[unknown]"})], "iam-no-wildcard-actions")
    assert unknown.status == "passed" and unknown.findings[0].unverified


@pytest.mark.parametrize(
    "type_,label",
    [
        ("aws:kms/key:Key", "KMS key policy"),
        ("aws:kms/keyPolicy:KeyPolicy", "KMS key policy"),
        ("aws:s3/bucketPolicy:BucketPolicy", "S3 bucket policy"),
        ("aws:ecr/repositoryPolicy:RepositoryPolicy", "ECR repository policy"),
    ],
)
def test_resource_policies_allow_no_wildcard_actions(type_, label):
    service = "s3" if "s3" in type_ else type_.split(":")[1].split("/")[0]
    ok = result([rec(type_, "res", inputs={"policy": doc(f"{service}:Describe")})], "iam-no-wildcard-actions")
    assert ok.status == "passed"
    r = result([rec(type_, "res", inputs={"policy": doc(f"{service}:*")})], "iam-no-wildcard-actions")
    assert r.status == "failed" and f"{label} 'res' allows wildcard actions: {service}:*" in messages(r)


def test_deny_statements_may_use_wildcards_in_resource_policies():
    deny_non_tls = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )
    assert (
        result([rec("aws:s3/bucketPolicy:BucketPolicy", "tls-only", inputs={"policy": deny_non_tls})], "iam-no-wildcard-actions").status
        == "passed"
    )


def test_kms_key_without_a_declared_policy_or_with_an_unknown_one():
    assert result([rec("aws:kms/key:Key", "k", inputs={"keyUsage": "SIGN_VERIFY"})], "iam-no-wildcard-actions").status == "not-applicable"
    r = result([rec("aws:kms/key:Key", "k", inputs={"policy": "[unknown]"})], "iam-no-wildcard-actions")
    assert r.status == "passed" and r.findings[0].unverified and "KMS key policy 'k'" in r.findings[0].message


# -- enforcement levels ---------------------------------------------------------------------------------------------------
def test_enforcement_levels_decide_what_blocks():
    g = fleet(hardware=PI)
    sized = {"aws": {r["inputs"]["ring"]: 5 for r in g if r["type"] == "edgefleet:rollout:Ring"}}  # every ring declares its size
    mandatory = evaluate(g, Settings(declared_ring_devices=sized))
    assert [r.name for r in mandatory.blocking] == ["hardware-can-run-model"]
    advisory = evaluate(g, Settings(declared_ring_devices=sized, enforcement={"hardware-can-run-model": "advisory"}))
    assert not advisory.blocking and [r.name for r in advisory.advisories] == ["hardware-can-run-model"]
    disabled = evaluate(g, Settings(declared_ring_devices=sized, enforcement={"hardware-can-run-model": "disabled"}))
    r = next(r for r in disabled.results if r.name == "hardware-can-run-model")
    assert r.status == "disabled" and not r.findings and not disabled.blocking


def test_every_rule_has_a_valid_default_level_and_unknown_rule_names_are_errors():
    assert all(r.default_level in LEVELS for r in rules.RULES)
    assert len(rules.RULES_BY_NAME) == len(rules.RULES)
    with pytest.raises(ValueError, match="names no rule 'no-such-rule'"):
        evaluate([], Settings(enforcement={"no-such-rule": "advisory"}))
    with pytest.raises(ValueError, match="levels are"):
        evaluate([], Settings(enforcement={"metric-floor": "strict"}))


def test_settings_from_stack_config_and_pulumi_config_agree():
    config = {
        "platforms": ["aws"],
        "aws": {"region": "us-east-1", "agent_version": "0.4.0"},
        "policy": {
            "production": True,
            "canary_max_share": 0.05,
            "metric_floors": {"accuracy": 0.8},
            "enforcement": {"metric-floor": "advisory"},
        },
    }
    a = Settings.from_config(config, stack="prod")
    b = settings_from_pulumi_config({f"edgefleet:{k}": json.dumps(v) for k, v in config.items()} | {"aws:region": "us-east-1"}, "prod")
    assert a == b
    assert a.production and a.canary_max_share == 0.05 and a.agent_versions == {"local": local.AGENT_VERSION, "aws": "0.4.0"}
    assert a.level(rules.RULES_BY_NAME["metric-floor"]) == "advisory"


def test_crossguard_config_carries_levels_and_each_rules_settings():
    settings = Settings(enforcement={"metric-floor": "advisory"}, metric_floors={"accuracy": 0.8}, base_models={"detector": manifest()})
    config = crossguard_config(settings)
    assert config["metric-floor"] == {"enforcementLevel": "advisory", "metric_floors": {"accuracy": 0.8}}
    assert config["metric-regression"]["base_models"]["detector"]["version"] == "1.0.0"
    assert config["hardware-can-run-model"] == {"enforcementLevel": "mandatory"}
    json.dumps(config)  # a --policy-pack-config file is JSON


def test_rules_do_not_mutate_the_graph():
    g = fleet(hardware=PI)
    before = copy.deepcopy(g)
    evaluate(g, Settings(production=True, metric_floors={"accuracy": 0.99}, base_models={"detector": manifest()}))
    assert g == before


# -- device credentials ---------------------------------------------------------------------------------------------
def test_a_device_sas_close_to_expiry_is_an_advisory_warning_and_a_distant_one_passes():
    near = result(fleet(), "device-credentials-fresh", azure_sas_expiry="2026-12-10", today="2026-11-25")
    assert (near.status, near.level) == ("failed", "advisory") and not near.blocking
    assert "ends 2026-12-10, 15 day(s) away" in messages(near) and "move it at least 30 days ahead" in messages(near)
    far = result(fleet(), "device-credentials-fresh", azure_sas_expiry="2027-06-30", today="2026-11-25")
    assert far.status == "passed"
    mandatory = result(
        fleet(),
        "device-credentials-fresh",
        azure_sas_expiry="2026-12-10",
        today="2026-11-25",
        enforcement={"device-credentials-fresh": "mandatory"},
    )
    assert mandatory.blocking
    assert result(fleet(), "device-credentials-fresh").status == "not-applicable"


def test_the_sas_expiry_reaches_the_rule_from_the_stack_config():
    settings = Settings.from_config({"azure": {"device_sas_expiry": "2027-06-30"}})
    assert settings.azure_sas_expiry == "2027-06-30"


# -- variants (manifest format 3) ------------------------------------------------------------------------------------------
def with_variant(delta: float, agreement: float = 0.99, dataset_sha256: str = "d" * 64) -> dict:
    m = measured(manifest(), accuracy=0.82)
    variant = {
        "kind": "int8",
        "file": "detector.int8.onnx",
        "sha256": "e" * 64,
        "size": 1000,
        "execution_providers": ["CPUExecutionProvider"],
        "requires": {"arch": ["amd64"], "min_memory_mb": 64, "providers": ["CPUExecutionProvider"]},
        "built_with": "onnxruntime 1.32.0 quantization.quantize_dynamic",
        "comparison": {
            "dataset": "channel-dominance-eval",
            "dataset_sha256": dataset_sha256,
            "samples": 128,
            "output": "scores",
            "top1_agreement": agreement,
            "max_abs_diff": 0.03,
            "metric": "accuracy",
            "reference": 0.82,
            "value": round(0.82 + delta, 4),
            "delta": delta,
            "higher_is_better": True,
            "measured_with": "onnxruntime 1.32.0",
        },
    }
    return {**m, "variants": [variant], "min_agent_version": "0.4.0", "format": 3}


def test_a_variant_within_the_stacks_bound_passes():
    assert result(fleet(m=with_variant(-0.008)), "variant-quality").status == "passed"
    assert result(fleet(m=manifest()), "variant-quality").status == "passed", "a version without variants has nothing to judge"


def test_a_variant_that_drops_more_than_the_bound_is_refused_with_the_numbers_and_the_fix():
    r = result(fleet(m=with_variant(-0.03)), "variant-quality")
    assert r.status == "failed" and r.level == "mandatory"
    text = messages(r)
    assert "the int8 variant (detector.int8.onnx) measures accuracy 0.79 against the reference's 0.82" in text
    assert "0.03 worse; the stack allows policy.max_variant_drop 0.01" in text and "--calibration PATH" in text
    assert result(fleet(m=with_variant(-0.03)), "variant-quality", max_variant_drop=0.05).status == "passed"


def test_a_variant_that_disagrees_with_the_reference_or_was_compared_on_another_set_is_refused():
    r = result(fleet(m=with_variant(0.0, agreement=0.9)), "variant-quality")
    assert r.status == "failed" and "picks the reference's top-1 class on 90.00% of 128 frames" in messages(r)
    r = result(fleet(m=with_variant(0.0, dataset_sha256="f" * 64)), "variant-quality")
    assert r.status == "failed" and "not comparable; measure it again with `edgefleet model variant add" in messages(r)


def test_the_variant_bounds_come_from_the_stack_policy_section():
    s = Settings.from_config({"policy": {"max_variant_drop": 0.002, "min_variant_agreement": 0.99}})
    assert (s.max_variant_drop, s.min_variant_agreement) == (0.002, 0.99)
