"""Uploading a model artifact to the S3 model store: verified, content-addressed, never overwritten.

The file is checked against the digest and size its manifest pins before a byte leaves the machine, S3 is
asked to verify a SHA-256 checksum of what it receives, and an object already at the content-addressed key
with the same digest is reused, so re-running `pulumi up` uploads nothing. boto3's transfer manager streams
large models in parts. Used by the ModelArtifact dynamic provider; tests run it against moto.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet_agent.contract.digest import same_file_digest
from edgefleet_agent.contract.errors import EdgefleetError


def publish_artifact(
    s3: Any, bucket: str, key: str, path: Path, sha256: str, size: int, kms_key: str, metadata: dict[str, str]
) -> dict[str, Any]:
    problem = same_file_digest(Path(path), sha256, size)
    if problem:
        raise EdgefleetError(str(path), f"refusing to upload: {problem}", "run `edgefleet model add` to re-pin the artifact")
    existing = _head(s3, bucket, key)
    if existing is not None and existing.get("Metadata", {}).get("sha256") == sha256 and existing.get("ContentLength") == size:
        return {"uploaded": False, "version_id": existing.get("VersionId"), "etag": existing.get("ETag")}
    s3.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": kms_key,
            "ChecksumAlgorithm": "SHA256",
            "ContentType": "application/octet-stream",
            "Metadata": {**metadata, "sha256": sha256},
        },
    )
    head = _head(s3, bucket, key) or {}
    return {"uploaded": True, "version_id": head.get("VersionId"), "etag": head.get("ETag")}


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
