"""The dynamic providers and the S3 upload behind them: pickle cleanly, replace only when the ring changes,
and upload a model only once, only if it matches its manifest."""

from __future__ import annotations

import ast
import base64
import hashlib
from pathlib import Path

import boto3
import dill
import pytest
from aws_testkit import PROJECT, REGION
from moto import mock_aws
from pulumi.dynamic.dynamic import serialize_provider

from components.aws import providers
from components.aws.store import publish_artifact
from edgefleet_agent.contract.errors import EdgefleetError

MODEL = PROJECT / "models/detector/detector.onnx"


def test_provider_module_has_no_import_time_side_effects_beyond_pulumis_dynamic_api():
    tree = ast.parse(Path(providers.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top}
    assert modules == {"__future__", "typing", "pulumi", "pulumi.dynamic", "components.dynamic", "components.props"}
    calls = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert not calls
    import components.dynamic as shared

    shared_tree = ast.parse(Path(shared.__file__).read_text())
    shared_imports = {
        n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
        for n in shared_tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    assert shared_imports == {"__future__", "typing", "pulumi.dynamic"}, "the shared diff helper must stay side-effect free too"
    import components.props as props

    props_tree = ast.parse(Path(props.__file__).read_text())
    assert not [n for n in props_tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)], "typed props: declarations only"


@pytest.mark.parametrize("cls", [providers.RingGateProvider, providers.ManifestSignatureProvider, providers.ModelArtifactProvider])
def test_providers_pickle_without_clients_or_credentials(cls):
    """Serialised as Pulumi serialises a dynamic provider into the resource's inputs."""
    text = serialize_provider(cls())
    blob = base64.b64decode(text)
    assert b"boto" not in blob and b"AWS_SECRET" not in blob and b"testing" not in blob
    assert isinstance(dill.loads(blob), cls)


def test_gate_reruns_only_when_what_the_ring_runs_changes():
    gate = providers.RingGateProvider()
    olds = {
        "deployment": "d-1",
        "sha256": "a",
        "version": "1.0.0",
        "gate_config": {"soak_seconds": 5},
        "total_rings": 3,
        "policies": [{"devices": 5}],
        "gate": "x:canary:passed",
        "measured": {},
    }
    assert gate.diff("id", olds, {**olds, "deployment": "d-2"}).replaces == ["deployment"]
    assert gate.diff("id", olds, {**olds, "gate_config": {"soak_seconds": 9}}).replaces == ["gate_config"]
    appended = gate.diff("id", olds, {**olds, "total_rings": 4})
    assert appended.changes and appended.replaces == [], "a ring appended after this one does not re-run this gate"
    kept = gate.update("id", olds, {**olds, "total_rings": 4})
    assert kept.outs["gate"] == "x:canary:passed"


def test_signature_is_kept_unless_the_manifest_or_key_changes():
    sig = providers.ManifestSignatureProvider()
    olds = {
        "manifest": "m",
        "sha256": "a",
        "version": "1",
        "signing_key": "k",
        "region": REGION,
        "provider_version": "1",
        "signature": "s",
        "key_id": "kid",
    }
    assert sig.diff("id", olds, {**olds, "manifest": "m2"}).replaces == ["manifest"]
    assert sig.diff("id", olds, {**olds, "provider_version": "2"}).replaces == []
    assert sig.update("id", olds, {**olds, "provider_version": "2"}).outs["signature"] == "s"


@mock_aws
def test_artifact_is_verified_uploaded_once_and_kms_encrypted(aws_env, tmp_path):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": REGION})
    key_arn = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    data = MODEL.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = f"models/detector/{sha}.onnx"
    first = publish_artifact(s3, "models", key, MODEL, sha, len(data), key_arn, {"model": "detector", "version": "1.0.0"})
    assert first["uploaded"] is True
    head = s3.head_object(Bucket="models", Key=key)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn
    assert head["Metadata"] == {"model": "detector", "version": "1.0.0", "sha256": sha}
    assert s3.get_object(Bucket="models", Key=key)["Body"].read() == data
    again = publish_artifact(s3, "models", key, MODEL, sha, len(data), key_arn, {"model": "detector", "version": "1.0.0"})
    assert again["uploaded"] is False, "content-addressed: an object already there with the same digest is reused"

    tampered = tmp_path / "detector.onnx"
    tampered.write_bytes(data[:-1] + b"\0")
    with pytest.raises(EdgefleetError, match="refusing to upload"):
        publish_artifact(s3, "models", f"models/detector/{'0' * 64}.onnx", tampered, sha, len(data), key_arn, {})
    assert s3.list_objects_v2(Bucket="models")["KeyCount"] == 1
