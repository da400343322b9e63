"""Dynamic providers for the AWS platform: the model upload, the manifest signature (KMS) and the per-ring gate.

Pulumi pickles each provider into the resource's inputs and runs it in another process with the deploying
identity's credentials: nothing here captures credentials or clients, every method builds what it needs,
and this module imports nothing at load time beyond Pulumi's dynamic API. `PROVIDER_VERSION` sits among
the inputs so a change in provider behaviour shows up in `pulumi preview`.

The gate owns nothing in AWS: `delete` is a no-op (the rollout record in S3 stays as history), and an
input change that does not alter what the ring runs (for example a later ring appended) updates the
gate's inputs without running it again.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.dynamic import RingGateProvider as GateProvider
from components.dynamic import input_diff
from components.props import Props

PROVIDER_VERSION = "2"


class ModelArtifactProps(Props):
    region: str
    bucket: str
    key: str
    source: str
    sha256: str
    size: int
    kms_key: str
    model: str
    version: str


class ManifestSignatureProps(Props):
    region: str
    signing_key: str
    model: str
    version: str
    sha256: str
    manifest: str


class ModelArtifactProvider(ResourceProvider):
    """Uploads the model file to its content-addressed key after checking it against the manifest's digest."""

    REPLACE_ON = ("sha256", "size", "bucket", "key", "region")

    def create(self, props: dict[str, Any]) -> CreateResult:
        from pathlib import Path

        import boto3

        from components.aws.store import publish_artifact

        p = ModelArtifactProps.of(props)
        s3 = boto3.client("s3", region_name=p.region)
        result = publish_artifact(
            s3, p.bucket, p.key, Path(p.source), p.sha256, p.size, p.kms_key, {"model": p.model, "version": p.version}
        )
        return CreateResult(
            id_=f"s3://{p.bucket}/{p.key}", outs={**props, "uri": f"s3://{p.bucket}/{p.key}", "version_id": result["version_id"]}
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, self.REPLACE_ON)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "uri": olds["uri"], "version_id": olds.get("version_id")})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Content-addressed artifacts stay: a rollback deploys a component version that downloads them."""


class ManifestSignatureProvider(ResourceProvider):
    """Signs the manifest's exact bytes with the stack's KMS key (Sign, MessageType=DIGEST)."""

    REPLACE_ON = ("manifest", "sha256", "version", "signing_key", "region")

    def create(self, props: dict[str, Any]) -> CreateResult:
        from components.aws.signer import KmsSigner
        from edgefleet_agent.contract.signing import sign_bytes

        p = ManifestSignatureProps.of(props)
        envelope = sign_bytes(KmsSigner(p.signing_key, p.region), p.manifest.encode())
        return CreateResult(
            id_=f"{p.model}@{p.version}+{p.sha256[:12]}",
            outs={**props, "signature": envelope.to_bytes().decode(), "key_id": envelope.key_id},
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, self.REPLACE_ON)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "signature": olds["signature"], "key_id": olds["key_id"]})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """A signature is data; the S3 object holding it is retained with the artifact."""


class RingGateProvider(GateProvider):
    """Against Greengrass: the touched rings roll back to the last good component version; the record stays in S3."""

    REPLACE_ON = ("deployment", "sha256", "version", "gate_config")

    def run_gate(self, props: dict[str, Any]) -> dict[str, Any]:
        from components.aws.plan import run_gate

        return run_gate(props)


class ModelArtifact(Resource, module="edgefleet-aws", name="ModelArtifact"):
    uri: pulumi.Output[str]
    version_id: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            ModelArtifactProvider(), name, {"uri": None, "version_id": None, **props, "provider_version": PROVIDER_VERSION}, opts
        )


class ManifestSignature(Resource, module="edgefleet-aws", name="ManifestSignature"):
    signature: pulumi.Output[str]
    key_id: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            ManifestSignatureProvider(), name, {"signature": None, "key_id": None, **props, "provider_version": PROVIDER_VERSION}, opts
        )


class RingGate(Resource, module="edgefleet-aws", name="RingGate"):
    gate: pulumi.Output[str]
    measured: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RingGateProvider(), name, {"gate": None, "measured": None, **props, "provider_version": PROVIDER_VERSION}, opts)
