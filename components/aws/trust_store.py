"""The S3 model store as the stack's TUF repository: metadata objects under s3://<bucket>/tuf/metadata/.

Written by the publisher (the KMS key signs targets, snapshot and timestamp; components/trust/), read by devices on
Greengrass with SigV4 through the token exchange service (edgefleet_agent/trust.py's S3Fetcher), which needs
s3:GetObject on `tuf/metadata/*` (and kms:Decrypt on the bucket's key, as for the artifacts) in the device role.
Tested against moto (tests/aws/test_aws_trust.py).
"""

from __future__ import annotations

from typing import Any

from edgefleet_agent.contract.tuf import METADATA_PREFIX

MOVED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class S3MetadataStorage:
    def __init__(self, bucket: str, client: Any = None, region: str | None = None, prefix: str = METADATA_PREFIX) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.region)
        return self._client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    def read(self, name: str) -> bytes | None:
        found = self.read_tagged(name)
        return found[0] if found is not None else None

    def write(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def create(self, name: str, data: bytes) -> bool:
        """S3's conditional write (If-None-Match: *): 412 when the key exists, 409 while another conditional write of
        it is in flight; either way another publisher has the name."""
        from botocore.exceptions import ClientError

        try:
            self._put(name, data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MOVED:
                return False
            raise
        return True

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                return None
            raise
        return bytes(response["Body"].read()), str(response["ETag"])

    def swap(self, name: str, data: bytes, tag: str | None) -> bool:
        """S3's conditional write If-Match: <ETag read>: 412 once another put replaced the object, 409 while another
        conditional write of it is in flight, 404 if it was deleted; each means another publisher moved it."""
        from botocore.exceptions import ClientError

        if tag is None:
            return self.create(name, data)
        try:
            self._put(name, data, IfMatch=tag)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (*MOVED, *NOT_FOUND):
                return False
            raise
        return True

    def _put(self, name: str, data: bytes, **conditions: str) -> None:
        # no-cache: a CDN or proxy in front of the bucket must never serve yesterday's timestamp as today's
        self.client.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}/{name}",
            Body=data,
            ContentType="application/json",
            CacheControl="no-cache",
            ChecksumAlgorithm="SHA256",
            **conditions,
        )


def repository_for_uri(uri: str, signer: Any, client: Any = None, region: str | None = None) -> Any:
    """The TUF repository in the bucket a declared artifact (s3://<bucket>/models/…) lives in, for the ring gate to
    refresh and revoke with; None while the bucket holds none (`edgefleet trust init --stack S --store s3://<bucket>`
    makes it, once, after the first `pulumi up`)."""
    from botocore.exceptions import ClientError

    from components.trust.repository import TrustRepository

    if not uri.startswith("s3://"):
        return None
    repo = TrustRepository(S3MetadataStorage(uri.removeprefix("s3://").split("/", 1)[0], client=client, region=region), signer)
    try:
        return repo if repo.initialised() else None
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchBucket", "AccessDenied", "403"):
            return None
        raise
