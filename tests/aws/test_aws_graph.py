"""The aws-dev graph as `edgefleet synth --stack aws-dev` evaluates it under Pulumi's mocks: every resource a
Greengrass fleet needs, the properties a security reviewer checks, parents, and the ring ordering."""

from __future__ import annotations

import json
import re
from collections import Counter

import botocore.session
import pytest
import yaml
from aws_testkit import PROJECT, Graph, project_copy, synth_graph
from botocore.validate import ParamValidator

RING_NAMES = ("canary", "early", "broad")
SHA = yaml.safe_load((PROJECT / "models/detector/model.yaml").read_text())["sha256"]
DEPLOYER = "arn:aws:iam::123456789012:role/edgefleet-deployer"  # what the mocked caller identity resolves to


def doc(text: str) -> dict:
    return json.loads(text)


def statements(policy: dict) -> list[dict]:
    return policy["Statement"]


def allowed(policy: dict) -> list[str]:
    out = []
    for st in statements(policy):
        if st["Effect"] == "Allow":
            out += [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
    return out


def test_the_stack_declares_a_whole_greengrass_fleet(graph: Graph):
    counts = Counter(r["type"] for r in graph.resources)
    assert counts == {
        # generic components and the AWS fleet component
        "edgefleet:signing:SigningKey": 1,
        "edgefleet:storage:ModelStore": 1,
        "edgefleet:registry:AppRegistry": 1,
        "edgefleet:fleet:DeviceGroup": 1,
        "edgefleet:models:ModelVersion": 1,
        "edgefleet:rollout:Rollout": 1,
        "edgefleet:rollout:Ring": 3,
        "edgefleet:aws:Fleet": 1,
        "pulumi:providers:aws": 1,
        "pulumi:providers:aws-native": 1,
        # signing key and model store
        "aws:kms/key:Key": 2,
        "aws:kms/alias:Alias": 2,
        "aws:s3/bucket:Bucket": 1,
        "aws:s3/bucketVersioning:BucketVersioning": 1,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": 1,
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 1,
        "aws:s3/bucketPolicy:BucketPolicy": 1,
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": 1,
        # app registry and device access
        "aws:ecr/repository:Repository": 1,
        "aws:ecr/lifecyclePolicy:LifecyclePolicy": 1,
        "aws:iam/role:Role": 1,
        "aws:iam/rolePolicy:RolePolicy": 1,
        "aws:iot/roleAlias:RoleAlias": 1,
        "aws:iot/policy:Policy": 1,
        "aws:iot/thingType:ThingType": 1,
        "aws:iot/indexingConfiguration:IndexingConfiguration": 1,
        # device group + one thing group per ring
        "aws-native:iot:ThingGroup": 4,
        # the model version: artifact, manifest, signature, model and agent components
        "pulumi-python:dynamic/edgefleet-aws:ModelArtifact": 1,
        "pulumi-python:dynamic/edgefleet-aws:ManifestSignature": 1,
        "aws:s3/bucketObjectv2:BucketObjectv2": 2,
        "aws-native:greengrassv2:ComponentVersion": 2,
        # per ring: deployment, alarms (error rate, invalid outputs, p99), gate
        "aws-native:greengrassv2:Deployment": 3,
        "aws:cloudwatch/metricAlarm:MetricAlarm": 9,
        "pulumi-python:dynamic/edgefleet-aws:RingGate": 3,
    }


def test_every_cloud_resource_names_the_stacks_explicit_provider(graph: Graph):
    """The region comes from the stack's own provider, never an ambient default; the plan follows these references."""
    providers = {
        r["type"].removeprefix("pulumi:providers:"): r["urn"] for r in graph.resources if r["type"].startswith("pulumi:providers:")
    }
    cloud = [r for r in graph.resources if r["custom"] and r["type"].split(":", 1)[0] in providers]
    assert cloud and all(r["options"].get("provider") == providers[r["type"].split(":", 1)[0]] for r in cloud)


def test_model_store_is_versioned_kms_encrypted_private_and_tls_only(graph: Graph):
    bucket = graph.one("aws:s3/bucket:Bucket")
    assert graph.parent(bucket)["type"] == "edgefleet:storage:ModelStore"
    assert bucket["inputs"]["forceDestroy"] is False
    name = _bucket(graph)
    versioning = graph.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["inputs"]["versioningConfiguration"] == {"status": "Enabled"}
    store_key = graph.named("aws-models-kms-key")
    assert store_key["inputs"]["keyUsage"] == "ENCRYPT_DECRYPT" and store_key["inputs"]["enableKeyRotation"] is True
    rule = graph.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")["inputs"]["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:eu-west-1:")
    assert rule["bucketKeyEnabled"] is True
    block = graph.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")["inputs"]
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    policy = doc(graph.one("aws:s3/bucketPolicy:BucketPolicy")["inputs"]["policy"])
    tls = [s for s in statements(policy) if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1 and tls[0]["Effect"] == "Deny" and tls[0]["Principal"] == "*"
    assert sorted(tls[0]["Resource"]) == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]


def _bucket(graph: Graph) -> str:
    uri = graph.one("edgefleet:storage:ModelStore")["outputs"]["uri"]
    return uri.removeprefix("s3://").split("/")[0]


def test_model_files_are_content_addressed_and_never_deleted(graph: Graph):
    bucket = _bucket(graph)
    art = graph.one("pulumi-python:dynamic/edgefleet-aws:ModelArtifact")["inputs"]
    assert art["key"] == f"models/detector/{SHA}.onnx" and art["sha256"] == SHA and art["source"] == "models/detector/detector.onnx"
    assert art["bucket"] == bucket and art["kms_key"].startswith("arn:aws:kms:")
    objects = {r["name"]: r for r in graph.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    manifest, signature = objects["detector-manifest"], objects["detector-signature"]
    assert manifest["inputs"]["key"] == f"models/detector/{SHA}.yaml"
    assert manifest["inputs"]["content"] == (PROJECT / "models/detector/model.yaml").read_text()
    assert signature["inputs"]["key"] == f"models/detector/{SHA}.yaml.sig"
    sig = graph.one("pulumi-python:dynamic/edgefleet-aws:ManifestSignature")
    assert signature["property_dependencies"]["content"] == [sig["urn"]], "the signature object holds the KMS signature"
    for r in (manifest, signature, graph.one("pulumi-python:dynamic/edgefleet-aws:ModelArtifact")):
        assert r["options"].get("retain_on_delete") is True, r["name"]
    for r in (manifest, signature):
        assert r["inputs"]["serverSideEncryption"] == "aws:kms"


def test_signing_key_is_p256_and_only_the_deploying_role_signs(graph: Graph):
    key = graph.named("aws-signing-kms-key")
    assert graph.parent(key)["type"] == "edgefleet:signing:SigningKey"
    assert key["inputs"]["customerMasterKeySpec"] == "ECC_NIST_P256" and key["inputs"]["keyUsage"] == "SIGN_VERIFY"
    policy = doc(key["inputs"]["policy"])
    signers = [s["Principal"]["AWS"] for s in statements(policy) if s["Effect"] == "Allow" and "kms:Sign" in s["Action"]]
    assert signers == [DEPLOYER]
    assert not any(a.endswith("*") for a in allowed(policy))
    signing = graph.one("edgefleet:signing:SigningKey")
    assert signing["outputs"]["exportable"] is False
    assert signing["outputs"]["keyRef"].startswith("arn:aws:kms:eu-west-1:123456789012:key/")


def test_agent_registry_is_immutable_scanned_and_pruned(graph: Graph):
    repo = graph.one("aws:ecr/repository:Repository")
    assert repo["inputs"]["imageTagMutability"] == "IMMUTABLE"
    assert repo["inputs"]["imageScanningConfiguration"] == {"scanOnPush": True}
    lifecycle = graph.one("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle["property_dependencies"]["repository"] == [repo["urn"]]
    rules = doc(lifecycle["inputs"]["policy"])["rules"]
    assert {r["selection"]["tagStatus"] for r in rules} == {"untagged", "any"}


def test_device_role_reads_only_the_model_prefix_and_the_agent_image(graph: Graph):
    role = graph.one("aws:iam/role:Role")
    assert graph.parent(role)["type"] == "edgefleet:aws:Fleet"
    trust = doc(role["inputs"]["assumeRolePolicy"])
    assert statements(trust)[0]["Principal"] == {"Service": "credentials.iot.amazonaws.com"}
    policy = doc(graph.one("aws:iam/rolePolicy:RolePolicy")["inputs"]["policy"])
    actions = allowed(policy)
    assert not [a for a in actions if "*" in a], "no wildcard actions"
    by_action = {a: s for s in statements(policy) for a in s["Action"]}
    assert by_action["s3:GetObject"]["Resource"] == f"arn:aws:s3:::{_bucket(graph)}/models/*"
    assert {a for a in actions if a.startswith("s3:")} == {"s3:GetObject", "s3:GetBucketLocation"}
    assert by_action["ecr:BatchGetImage"]["Resource"] == by_action["ecr:GetDownloadUrlForLayer"]["Resource"]
    assert by_action["ecr:BatchGetImage"]["Resource"].endswith(":repository/edgefleet-aws-dev/agent")
    assert by_action["cloudwatch:PutMetricData"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Edgefleet/Agent"}}
    assert by_action["kms:Decrypt"]["Condition"]["StringEquals"]["kms:ViaService"] == "s3.eu-west-1.amazonaws.com"
    assert not any(a.startswith(("s3:Put", "s3:Delete", "ecr:Put", "iam:", "greengrass:")) for a in actions)
    alias = graph.one("aws:iot/roleAlias:RoleAlias")
    assert alias["property_dependencies"]["roleArn"] == [role["urn"]]
    iot = doc(graph.one("aws:iot/policy:Policy")["inputs"]["policy"])
    assert not [a for a in allowed(iot) if "*" in a]
    assume = [s for s in statements(iot) if "iot:AssumeRoleWithCertificate" in s["Action"]]
    assert assume[0]["Resource"] == "arn:aws:iot:eu-west-1:123456789012:rolealias/edgefleet-aws-dev-device-role-alias"


def test_device_role_may_locate_the_model_bucket_before_downloading(graph: Graph):
    """The nucleus calls GetBucketLocation before every S3 artifact download; without it every model deployment
    fails with S3_GET_BUCKET_LOCATION_ACCESS_DENIED. Granted on this bucket, not on every bucket."""
    policy = doc(graph.one("aws:iam/rolePolicy:RolePolicy")["inputs"]["policy"])
    locate = [s for s in statements(policy) if "s3:GetBucketLocation" in s["Action"]]
    assert len(locate) == 1 and locate[0]["Effect"] == "Allow" and locate[0]["Action"] == ["s3:GetBucketLocation"]
    assert locate[0]["Resource"] == f"arn:aws:s3:::{_bucket(graph)}"
    model = json.loads(graph.named("detector-model-component")["inputs"]["inlineRecipe"])
    buckets = {a["URI"].removeprefix("s3://").split("/")[0] for m in model["Manifests"] for a in m["Artifacts"]}
    assert buckets == {_bucket(graph)}, "the bucket the role may locate is the one the recipe downloads from"


def test_no_allow_statement_anywhere_grants_a_wildcard_action(graph: Graph):
    policies = [
        graph.one("aws:iam/rolePolicy:RolePolicy")["inputs"]["policy"],
        graph.one("aws:iot/policy:Policy")["inputs"]["policy"],
        graph.one("aws:s3/bucketPolicy:BucketPolicy")["inputs"]["policy"],
    ]
    policies += [k["inputs"]["policy"] for k in graph.of_type("aws:kms/key:Key")]
    for text in policies:
        assert not [a for a in allowed(doc(text)) if "*" in a]


def test_rings_select_on_the_thing_type_and_attributes_fleet_indexing_indexes(graph: Graph):
    thing_type = graph.one("aws:iot/thingType:ThingType")["inputs"]
    assert thing_type["name"] == "edgefleet-aws-dev-device"
    assert thing_type["properties"]["searchableAttributes"] == ["ring"]
    indexing = graph.one("aws:iot/indexingConfiguration:IndexingConfiguration")["inputs"]["thingIndexingConfiguration"]
    assert indexing["thingIndexingMode"] == "REGISTRY"
    groups = {r["name"]: r for r in graph.of_type("aws-native:iot:ThingGroup")}
    device_group = groups["cameras-thing-group"]
    assert graph.parent(device_group)["type"] == "edgefleet:fleet:DeviceGroup"
    assert device_group["inputs"]["queryString"] == "thingTypeName:edgefleet-aws-dev-device AND attributes.site:plant-a"
    canary, early, broad = (groups[f"detector-{r}-thing-group"]["inputs"]["queryString"] for r in RING_NAMES)
    assert canary == "thingTypeName:edgefleet-aws-dev-device AND attributes.site:plant-a AND attributes.ring:canary"
    assert (
        early
        == "thingTypeName:edgefleet-aws-dev-device AND attributes.site:plant-a AND attributes.ring:early AND NOT attributes.ring:canary"
    )
    assert broad == (
        "thingTypeName:edgefleet-aws-dev-device AND attributes.site:plant-a AND NOT attributes.ring:canary AND NOT attributes.ring:early"
    ), "the last ring takes the group minus the earlier rings"
    for ring in RING_NAMES:
        tg = groups[f"detector-{ring}-thing-group"]
        assert (
            graph.parent(tg)["type"] == "edgefleet:rollout:Ring" and tg["inputs"]["thingGroupName"] == f"edgefleet-aws-dev-detector-{ring}"
        )


def test_components_carry_the_artifact_manifest_and_signature(graph: Graph):
    comps = {r["name"]: r for r in graph.of_type("aws-native:greengrassv2:ComponentVersion")}
    model, agent = comps["detector-model-component"], comps["aws-greengrass-agent-component"]
    assert len(comps) == 2, "one agent component per stack, whatever the number of models"
    recipe = json.loads(model["inputs"]["inlineRecipe"])
    assert recipe["ComponentName"] == "edgefleet.aws-dev.detector.Model" and recipe["ComponentVersion"] == "1.0.0"
    uris = {a["URI"] for m in recipe["Manifests"] for a in m["Artifacts"]}
    assert uris == {f"s3://{_bucket(graph)}/models/detector/{SHA}.onnx"}
    assert not any("Digest" in a for m in recipe["Manifests"] for a in m["Artifacts"]), "Greengrass computes digests itself"
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["Manifest"] == (PROJECT / "models/detector/model.yaml").read_text()
    assert config["Signature"] == "[computed at deploy]"  # the ManifestSignature output
    sig = graph.one("pulumi-python:dynamic/edgefleet-aws:ManifestSignature")
    assert sig["urn"] in model["property_dependencies"]["inlineRecipe"]
    artifact = graph.one("pulumi-python:dynamic/edgefleet-aws:ModelArtifact")
    assert artifact["urn"] in model["dependencies"], "the artifact exists before Greengrass reads it to compute its digest"
    arches = {m["Platform"]["architecture"] for m in recipe["Manifests"]}
    assert arches == {"amd64", "aarch64"}  # the model's two targets
    assert recipe["ComponentDependencies"] == {"edgefleet.aws-dev.Agent": {"VersionRequirement": ">=0.1.0", "DependencyType": "HARD"}}
    assert agent["urn"] in model["dependencies"]
    agent_recipe = json.loads(agent["inputs"]["inlineRecipe"])
    assert agent_recipe["ComponentName"] == "edgefleet.aws-dev.Agent" and agent_recipe["ComponentVersion"] == "0.1.0"
    assert not any(d.endswith(".Model") for d in agent_recipe["ComponentDependencies"]), "no model restarts the agent"
    run = agent_recipe["Manifests"][0]["Lifecycle"]["Run"]["Script"]
    assert "python3 -m agent" in run and "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-aws-dev/agent:0.1.0" in run
    assert "name: detector" not in run, "manifest text reaches the agent through Setenv, never inside the shell command"
    assert agent_recipe["Manifests"][0]["Artifacts"] == [
        {"URI": "docker:123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-aws-dev/agent:0.1.0"}
    ]
    for r in (model, agent):
        assert r["options"].get("retain_on_delete") is True, "a rollback deploys old component versions: never delete them"
    assert graph.parent(model)["type"] == "edgefleet:models:ModelVersion" and graph.parent(agent)["type"] == "edgefleet:aws:Fleet"


def _ring_resources(graph: Graph, kind: str) -> dict[str, dict]:
    return {ring: graph.named(f"detector-{ring}-{kind}") for ring in RING_NAMES}


def test_one_deployment_per_ring_with_the_rings_job_policy(graph: Graph):
    deployments = _ring_resources(graph, "deployment")
    groups = _ring_resources(graph, "thing-group")
    expected_jobs = {"canary": (5, 0.01, 1, 30), "early": (20, 5, 10, 120), "broad": (100, 5, 25, 120)}
    for ring, dep in deployments.items():
        inputs = dep["inputs"]
        assert graph.parent(dep)["name"] == f"detector-{ring}"
        assert inputs["targetArn"] == f"arn:aws:iot:eu-west-1:123456789012:thinggroup/edgefleet-aws-dev-detector-{ring}"
        assert dep["property_dependencies"]["targetArn"] == [groups[ring]["urn"]]
        assert inputs["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"
        job = inputs["iotJobConfiguration"]
        rate, abort, min_executed, timeout = expected_jobs[ring]
        assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": rate}
        assert job["abortConfig"]["criteriaList"] == [
            {"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": abort, "minNumberOfExecutedThings": min_executed}
        ]
        assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": timeout}
        components = inputs["components"]
        assert components["edgefleet.aws-dev.detector.Model"]["componentVersion"] == "1.0.0"
        assert set(components) == {"edgefleet.aws-dev.detector.Model"}, "the agent comes as the model's dependency, never by name"
        update = components["edgefleet.aws-dev.detector.Model"]["configurationUpdate"]
        assert update["reset"] == ["/RollbackOrder", "/RollbackSignature"], "a forward deployment clears any rollback order"
        assert json.loads(update["merge"]) == {"Ring": ring, "Rollout": "detector", "RolloutId": f"detector@1.0.0+{SHA[:12]}"}
        assert dep["options"].get("retain_on_delete") is True and not dep["options"].get("delete_before_replace")


def test_each_ring_waits_for_the_previous_rings_gate(graph: Graph):
    deployments = _ring_resources(graph, "deployment")
    gates = _ring_resources(graph, "gate")
    for ring, gate in gates.items():
        assert deployments[ring]["urn"] in graph.all_deps(gate), "a gate judges its own ring's deployment"
        assert gate["property_dependencies"]["deployment"] == [deployments[ring]["urn"]]
    assert not any("gate" in u for u in graph.all_deps(deployments["canary"]))
    assert gates["canary"]["urn"] in deployments["early"]["dependencies"]
    assert gates["early"]["urn"] in deployments["broad"]["dependencies"]
    assert gates["early"]["urn"] not in deployments["early"]["dependencies"]


def test_no_ring_depends_on_a_later_ring(graph: Graph):
    order = {f"detector-{r}": i for i, r in enumerate(RING_NAMES)}

    def ring_of(urn: str) -> int | None:
        name = urn.rsplit("::", 1)[1]
        return next((i for prefix, i in order.items() if name.startswith(prefix + "-")), None)

    for r in graph.resources:
        mine = ring_of(r["urn"])
        if mine is None:
            continue
        later = [u for u in graph.all_deps(r) if (ring_of(u) or -1) > mine]
        assert not later, f"{r['name']} depends on later rings: {later}"


def test_gate_carries_what_a_rollback_needs(graph: Graph):
    gate = graph.named("detector-early-gate")["inputs"]
    assert gate["index"] == 1 and gate["total_rings"] == 3 and [r["name"] for r in gate["rings"]] == ["canary", "early"]
    assert gate["targets"] == [f"arn:aws:iot:eu-west-1:123456789012:thinggroup/edgefleet-aws-dev-detector-{r}" for r in ("canary", "early")]
    assert [p["devices"] for p in gate["policies"]] == [5, 50]
    assert gate["model_component"] == "edgefleet.aws-dev.detector.Model" and gate["agent_version"] == "0.1.0"
    assert gate["signing_key"] == graph.one("edgefleet:signing:SigningKey")["outputs"]["keyRef"]
    assert gate["bucket"] == _bucket(graph) and gate["provider_version"]


def test_alarms_watch_the_gates_thresholds_per_ring(graph: Graph):
    alarms = {r["name"]: r["inputs"] for r in graph.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    p99 = alarms["detector-broad-p99-latency-alarm"]
    assert p99["threshold"] == 300 and p99["extendedStatistic"] == "p99" and p99["namespace"] == "Edgefleet/Agent"
    assert p99["dimensions"] == {"Rollout": "detector", "Ring": "broad", "Version": "1.0.0"}
    errors = alarms["detector-canary-error-rate-alarm"]
    assert errors["threshold"] == 0.01 and errors["metricQueries"][-1]["expression"] == "bad / inferences"
    assert {q["metric"]["metricName"] for q in errors["metricQueries"] if "metric" in q} == {"Errors", "Inferences"}


def test_aws_resources_use_the_stacks_region_through_explicit_providers(graph: Graph):
    aws_p = graph.one("pulumi:providers:aws")
    native = graph.one("pulumi:providers:aws-native")
    assert aws_p["inputs"]["region"] == native["inputs"]["region"] == "eu-west-1"


def test_deployments_in_the_graph_are_valid_create_deployment_requests(graph: Graph):
    """The aws-native Deployment inputs share CreateDeployment's shape: validate them with botocore's model."""
    shape = botocore.session.get_session().get_service_model("greengrassv2").operation_model("CreateDeployment").input_shape
    for dep in graph.of_type("aws-native:greengrassv2:Deployment"):
        report = ParamValidator().validate(dep["inputs"], shape)
        assert not report.has_errors(), report.generate_report()


def test_changing_a_later_ring_leaves_earlier_rings_untouched(tmp_path):
    """Every Deployment property forces replacement, and a replaced deployment supersedes the ring's active one:
    editing ring 3 (or adding ring 4) must not change any input of rings 1 and 2."""

    def edit(config):
        broad = config["edgefleet:rollouts"][0]["rings"][2]
        broad["gate"]["soak_seconds"] = 60
        broad["gate"]["max_p99_latency_ms"] = 400
        broad["labels"] = {"ring": "broad"}
        config["edgefleet:aws"]["rings"]["broad"].update({"max_per_minute": 7, "abort_failure_percent": 1})
        config["edgefleet:rollouts"][0]["rings"].append({"name": "late", "group": "cameras", "labels": {"ring": "late"}})
        config["edgefleet:aws"]["rings"]["late"] = {"devices": 3}

    before = synth_graph(PROJECT)
    after = synth_graph(project_copy(tmp_path, edit))
    for ring in ("canary", "early"):
        for kind in ("deployment", "thing-group"):
            a, b = before.named(f"detector-{ring}-{kind}"), after.named(f"detector-{ring}-{kind}")
            assert (a["inputs"], sorted(a["dependencies"])) == (b["inputs"], sorted(b["dependencies"])), f"{ring} {kind} changed"
    assert before.named("detector-broad-deployment")["inputs"] != after.named("detector-broad-deployment")["inputs"]
    assert after.named("detector-late-deployment")["dependencies"].count(after.named("detector-broad-gate")["urn"]) == 1


def test_adding_a_label_key_leaves_the_thing_type_untouched(tmp_path):
    """Thing type properties force replacement, and a fixed-name thing type cannot be replaced create-before-delete
    (deleting one takes a deprecation and five minutes): a new label key on a group or a ring must not touch it."""

    def edit(config):
        config["edgefleet:groups"][0]["labels"]["line"] = "l3"
        config["edgefleet:rollouts"][0]["rings"][1]["labels"]["shift"] = "night"

    before = synth_graph(PROJECT).one("aws:iot/thingType:ThingType")
    after_graph = synth_graph(project_copy(tmp_path, edit))
    after = after_graph.one("aws:iot/thingType:ThingType")
    assert "attributes.line:l3" in after_graph.named("cameras-thing-group")["inputs"]["queryString"], "the edit took effect"
    assert (before["urn"], before["inputs"], before["options"]) == (after["urn"], after["inputs"], after["options"])
    assert after["options"]["ignore_changes"] == ["properties"], "a later edit of the constants must not replace it either"


def _iot_shape(operation: str):
    return botocore.session.get_session().get_service_model("iot").operation_model(operation).input_shape


def _constraint_errors(value, shape, path: str = "") -> list[str]:
    """What ParamValidator leaves out: string maximum lengths and patterns from the service model."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [e for k, v in value.items() if k in shape.members for e in _constraint_errors(v, shape.members[k], f"{path}.{k}")]
    if shape.type_name == "list" and isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _constraint_errors(v, shape.member, f"{path}[{i}]")]
    if shape.type_name == "map" and isinstance(value, dict):
        return [
            e
            for k, v in value.items()
            for e in _constraint_errors(k, shape.key, f"{path} key") + _constraint_errors(v, shape.value, f"{path}.{k}")
        ]
    if shape.type_name == "string" and isinstance(value, str):
        meta, out = shape.metadata, []
        if "max" in meta and len(value) > meta["max"]:
            out.append(f"{path}: longer than {meta['max']}")
        pattern = meta.get("pattern", "").replace(r"\p{Graph}", r"\x21-\x7e")  # Java's POSIX class, ASCII only
        if pattern and r"\p{" not in pattern and not re.fullmatch(pattern, value):
            out.append(f"{path}: {value!r} does not match {pattern}")
        return out
    return []


def _validate(params: dict, operation: str) -> None:
    shape = _iot_shape(operation)
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    assert _constraint_errors(params, shape) == [], operation


def _with_static_group(config):
    """aws-dev plus a group of explicit device ids (a static thing group) with its own rollout."""
    hardware = config["edgefleet:groups"][0]["hardware"]
    config["edgefleet:groups"].append({"name": "gateways", "hardware": hardware, "devices": ["gw-001", "gw-002", "gw_003"]})
    config["edgefleet:rollouts"].append(
        {
            "name": "gw-detector",
            "model": "detector",
            "rings": [
                {
                    "name": "gw-canary",
                    "group": "gateways",
                    "labels": {"ring": "canary"},
                    "gate": config["edgefleet:rollouts"][0]["rings"][0]["gate"],
                },
                {"name": "gw-broad", "group": "gateways", "gate": config["edgefleet:rollouts"][0]["rings"][2]["gate"]},
            ],
        }
    )
    config["edgefleet:aws"]["rings"].update({"gw-canary": {"devices": 1}, "gw-broad": {"devices": 2}})


def test_declared_thing_groups_are_valid_iot_requests(tmp_path):
    """aws-native ThingGroup inputs share the IoT API's shapes: a group with a query is CreateDynamicThingGroup,
    one without is CreateThingGroup (how CloudFormation's handler creates it); each membership is an
    AddThingToThingGroup. Validated with botocore's ParamValidator plus the model's length and pattern limits."""
    graph = synth_graph(project_copy(tmp_path, _with_static_group))
    groups = {r["name"]: r["inputs"] for r in graph.of_type("aws-native:iot:ThingGroup")}
    static = [n for n, g in groups.items() if "queryString" not in g]
    assert static == ["gateways-thing-group"] and len(groups) == 7, sorted(groups)
    for inputs in groups.values():
        _validate(inputs, "CreateDynamicThingGroup" if "queryString" in inputs else "CreateThingGroup")
    assert "thingGroupNames:edgefleet-aws-dev-gateways" in groups["gw-detector-gw-canary-thing-group"]["queryString"]
    members = graph.of_type("aws:iot/thingGroupMembership:ThingGroupMembership")
    assert sorted(m["inputs"]["thingName"] for m in members) == ["gw-001", "gw-002", "gw_003"]
    for m in members:
        _validate({"thingGroupName": m["inputs"]["thingGroupName"], "thingName": m["inputs"]["thingName"]}, "AddThingToThingGroup")
        assert graph.named("gateways-thing-group")["urn"] in m["dependencies"]


def test_the_thing_group_validation_catches_what_iot_rejects():
    _validate({"thingGroupName": "edgefleet-aws-dev-cameras", "queryString": "thingTypeName:t"}, "CreateDynamicThingGroup")
    for bad in ({"thingGroupName": "edgefleet.aws-dev"}, {"thingGroupName": "x" * 129}, {"thingGroupName": "g", "queryString": "q"}):
        with pytest.raises(AssertionError):
            _validate(bad, "CreateThingGroup")
    with pytest.raises(AssertionError):
        _validate({"thingGroupName": "g"}, "CreateDynamicThingGroup")


@pytest.mark.parametrize("ring", RING_NAMES)
def test_ring_children_are_parented_to_their_ring(graph: Graph, ring: str):
    ring_urn = graph.named(f"detector-{ring}")["urn"]
    children = {r["name"] for r in graph.resources if r["parent"] == ring_urn}
    assert {f"detector-{ring}-thing-group", f"detector-{ring}-deployment", f"detector-{ring}-gate"} <= children
    assert graph.named(f"detector-{ring}")["outputs"]["deployment"]
