"""The S3 model store as the stack's TUF repository (moto): the publisher writes metadata objects with the KMS key
behind securesystemslib's Signer (LocalKms answers Sign with MessageType=DIGEST as real KMS does, which moto does not),
and a device reads them with SigV4 through boto3 (the agent's S3Fetcher, what it uses on Greengrass with the token
exchange service's credentials), refusing a revoked version and following a root rotation."""

from __future__ import annotations

import boto3
import pytest
from aws_testkit import REGION, LocalKms
from moto import mock_aws
from test_aws_gate import world  # noqa: F401  (the moto world of the gate tests: Greengrass, IoT, KMS, S3)

from components.aws.signer import KmsSigner
from components.aws.trust_store import S3MetadataStorage
from components.local.signer import LocalKeySigner, create_key_file
from components.trust.repository import TrustRepository
from edgefleet_agent.contract.tuf import NOT_A_TARGET, MetadataRefused, TargetIdentity, manifest_digest
from edgefleet_agent.trust import S3Fetcher, TrustedMetadata
from tests.trust_races import (
    V1,
    V2,
    V3,
    both_add_from_one_version,
    device_lists,
    refresh_never_moves_the_timestamp_back,
    slower_publisher_overwrites_a_newer_timestamp,
    swap_refuses_a_stale_tag,
)

BUCKET = "edgefleet-dev-models"
MANIFEST = b"name: detector\nversion: 1.1.0\n"


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def test_the_bucket_is_the_repository_and_a_device_reads_it_with_sigv4(s3, tmp_path):
    kms_client = boto3.client("kms", region_name=REGION)
    kms = LocalKms(kms_client)
    online = KmsSigner(kms.key_id, REGION, client=kms_client)
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    repo = TrustRepository(S3MetadataStorage(BUCKET, client=s3), online)
    good = TargetIdentity("detector", "1.1.0", "a" * 64, 2048, manifest_digest(MANIFEST))
    bad = TargetIdentity("detector", "1.2.0", "b" * 64, 2048, manifest_digest(MANIFEST))
    repo.init([root], 1, [good, bad])
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="tuf/metadata/")["Contents"])
    assert {
        "tuf/metadata/1.root.json",
        "tuf/metadata/timestamp.json",
        "tuf/metadata/1.snapshot.json",
        "tuf/metadata/1.targets.json",
    } <= set(keys)
    assert any(c[0] == "Sign" for c in kms.calls), "targets, snapshot and timestamp are signed by the KMS key"
    head = s3.head_object(Bucket=BUCKET, Key="tuf/metadata/timestamp.json")
    assert head["CacheControl"] == "no-cache" and head["ContentType"] == "application/json"

    first_root = s3.get_object(Bucket=BUCKET, Key="tuf/metadata/1.root.json")["Body"].read()
    device = TrustedMetadata(first_root, f"s3://{BUCKET}/tuf/metadata/", tmp_path / "device", fetcher=S3Fetcher(client=s3))
    device.check("detector", "1.1.0", "a" * 64, 2048, MANIFEST)
    device.check("detector", "1.2.0", "b" * 64, 2048, MANIFEST)

    repo.revoke("detector", "1.2.0", "b" * 64, "gate of ring 'canary' failed")  # what the Greengrass gate does on a rollback
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device.check("detector", "1.2.0", "b" * 64, 2048, MANIFEST)

    new_root = LocalKeySigner(create_key_file(tmp_path / "root-2.pem"))
    repo.rotate_root([root], [new_root], 1)
    device.check("detector", "1.1.0", "a" * 64, 2048, MANIFEST)
    assert (tmp_path / "device" / "root_history" / "2.root.json").is_file()


def test_a_missing_object_is_a_404_to_ngclient_so_the_root_chain_ends(s3, tmp_path):
    from tuf.api.exceptions import DownloadHTTPError

    with pytest.raises(DownloadHTTPError) as err:
        list(S3Fetcher(client=s3).fetch(f"s3://{BUCKET}/tuf/metadata/2.root.json"))
    assert err.value.status_code == 404
    assert S3MetadataStorage(BUCKET, client=s3).read("timestamp.json") is None


def test_the_greengrass_gate_revokes_the_version_it_rolled_back_and_refreshes_before_it_deploys(world, tmp_path):  # noqa: F811
    """The shared driver on AWS: when the canary gate fails and rolls back, the version leaves the bucket's signed
    targets (signed by the stack's KMS key), so a Greengrass device refuses it even if its deployment is replayed."""
    from test_aws_gate import BUCKET as GATE_BUCKET
    from test_aws_gate import MODEL_C, OLD, FakeClock, devices_on_every_new_deployment, props, pulumi_deploys, run_gate, save_succeeded

    from edgefleet_agent.contract.tuf import target_path

    online = KmsSigner(world.kms.key_id, REGION, client=world.clients.kms)
    repo = TrustRepository(S3MetadataStorage(GATE_BUCKET, client=world.clients.s3), online)
    new = TargetIdentity("detector", "1.1.0", "b" * 64, 10, manifest_digest(b"name: detector\nversion: 1.1.0\n"))
    old = TargetIdentity("detector", OLD.version, OLD.sha256, OLD.size, manifest_digest(OLD.manifest.encode()))
    repo.init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [old, new])
    before = repo.state()["roles"]["timestamp"]["version"]

    save_succeeded(world, OLD)
    devices_on_every_new_deployment(
        world,
        lambda p: (
            {d: "SUCCEEDED" for d in ("device-0", "device-1", "device-2")}
            if "RollbackOrder" in p["components"][MODEL_C]["configurationUpdate"]["merge"]
            else {"device-0": "SUCCEEDED", "device-1": "FAILED", "device-2": "QUEUED"}
        ),
    )
    pulumi_deploys(world, "canary")
    with pytest.raises(RuntimeError, match="halted at ring 'canary'"):
        run_gate(props(world, 0), clients=world.clients, clock=FakeClock())
    state = repo.state()
    assert (
        target_path("detector", "1.1.0", "b" * 64) not in state["targets"]
        and target_path("detector", OLD.version, OLD.sha256) in state["targets"]
    )
    assert [r["version"] for r in state["revoked"].values()] == ["1.1.0"] and "canary" in next(iter(state["revoked"].values()))["reason"]
    assert state["roles"]["timestamp"]["version"] >= before + 2, "refreshed before the ring deployed, and again by the revocation"


def test_the_greengrass_gate_lists_the_declared_version_before_it_deploys_and_never_lists_a_revoked_one(world, tmp_path):  # noqa: F811
    """On the clouds no provider lists what it uploads: a version becomes a signed target when its first ring gate
    runs. Before the gate, a device refuses it ("not in the signed targets"); after it, the device accepts exactly the
    declared artifact and manifest. A version revoked between two rings is not put back by the next ring's gate."""
    from test_aws_gate import BUCKET as GATE_BUCKET
    from test_aws_gate import DEVICES, OLD, FakeClock, devices_on_every_new_deployment, metrics, props, pulumi_deploys, run_gate

    online = KmsSigner(world.kms.key_id, REGION, client=world.clients.kms)
    repo = TrustRepository(S3MetadataStorage(GATE_BUCKET, client=world.clients.s3), online)
    old = TargetIdentity("detector", OLD.version, OLD.sha256, OLD.size, manifest_digest(OLD.manifest.encode()))
    root = repo.init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [old])
    device = TrustedMetadata(
        root.to_bytes(), f"s3://{GATE_BUCKET}/tuf/metadata/", tmp_path / "device", fetcher=S3Fetcher(client=world.clients.s3)
    )
    declared = props(world, 0)
    manifest = declared["manifest"].encode()
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device.check("detector", "1.1.0", "b" * 64, 10, manifest)

    devices_on_every_new_deployment(world, lambda p: {d: "SUCCEEDED" for d in DEVICES})
    pulumi_deploys(world, "canary")
    metrics(world, "canary", "1.1.0", inferences=300)
    assert run_gate(declared, clients=world.clients, clock=FakeClock())["rings"][0]["state"] == "passed"
    device.check("detector", "1.1.0", "b" * 64, 10, manifest)  # the declared artifact and its exact manifest
    with pytest.raises(MetadataRefused):
        device.check("detector", "1.1.0", "b" * 64, 10, manifest + b"# edited\n")

    repo.revoke("detector", "1.1.0", "b" * 64, "revoked by hand")  # between two rings' gates
    pulumi_deploys(world, "early")
    metrics(world, "early", "1.1.0", inferences=100)
    run_gate(props(world, 1), clients=world.clients, clock=FakeClock())
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device.check("detector", "1.1.0", "b" * 64, 10, manifest)
    assert [r["version"] for r in repo.state()["revoked"].values()] == ["1.1.0"]


def test_the_scheduled_refresh_command_re_signs_the_buckets_timestamp_with_the_kms_key(s3, tmp_path, monkeypatch, capsys):
    """What .github/workflows/trust-refresh.yml runs for aws-dev: `edgefleet trust refresh --stack aws-dev --store
    s3://<bucket> --signing-key kms:<key>`, with the runner's credentials (here moto's, and the KMS key answering Sign
    as real KMS does). The timestamp is re-signed by the KMS key and a device that saw the old one takes the new one."""
    from aws_testkit import PROJECT
    from tuf.api.metadata import Metadata

    from edgefleet.cli import main

    kms_client = boto3.client("kms", region_name=REGION)
    kms = LocalKms(kms_client)
    real_client = boto3.client
    monkeypatch.setattr(
        boto3, "client", lambda service, *a, **kw: {"kms": kms_client, "s3": s3}.get(service) or real_client(service, *a, **kw)
    )
    root = create_key_file(tmp_path / "root.pem")

    def cli(*args: str) -> str:
        try:
            main(
                [
                    *args,
                    "--stack",
                    "aws-dev",
                    "--project-dir",
                    str(PROJECT),
                    "--store",
                    f"s3://{BUCKET}",
                    "--signing-key",
                    f"kms:{kms.key_id}",
                ]
            )
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr()
        return capsys.readouterr().out

    cli("trust", "init", "--root-key", str(root))
    repo = TrustRepository(S3MetadataStorage(BUCKET, client=s3), None)
    before = repo.state()["roles"]["timestamp"]
    first_root = s3.get_object(Bucket=BUCKET, Key="tuf/metadata/1.root.json")["Body"].read()
    device = TrustedMetadata(first_root, f"s3://{BUCKET}/tuf/metadata/", tmp_path / "device", fetcher=S3Fetcher(client=s3))
    device.refresh()
    signs = sum(c[0] == "Sign" for c in kms.calls)

    out = cli("trust", "refresh")
    after = repo.state()["roles"]["timestamp"]
    assert after["version"] == before["version"] + 1 and f"timestamp v{after['version']}" in out
    assert sum(c[0] == "Sign" for c in kms.calls) == signs + 1, "one signature, by the stack's KMS key"
    assert after["expires"] >= before["expires"] and not after["expired"]
    device.refresh()
    held = Metadata.from_bytes((tmp_path / "device" / "timestamp.json").read_bytes()).signed
    assert held.version == after["version"], "the device verified the re-signed timestamp"


def test_versioned_metadata_is_created_once_and_never_overwritten(s3):
    """put_object(IfNoneMatch="*"), which moto honours as S3 does: 412 PreconditionFailed once the key exists."""
    storage = S3MetadataStorage(BUCKET, client=s3)
    assert storage.create("2.targets.json", b"first")
    assert not storage.create("2.targets.json", b"second")
    assert storage.read("2.targets.json") == b"first"


def test_the_timestamp_is_replaced_only_while_it_carries_the_etag_read(s3):
    """put_object(IfMatch=<ETag read>), which moto honours as S3 does (412 PreconditionFailed for a stale ETag, checked
    here against moto 5.2); the first write is put_object(IfNoneMatch="*")."""
    swap_refuses_a_stale_tag(S3MetadataStorage(BUCKET, client=s3))


def test_two_publishers_on_one_bucket_lose_neither_target(s3, tmp_path):
    """Two stacks sharing a model store add a target from the same targets version: the slower one's conditional put
    of that version is refused, it re-reads and adds on top, and a device reading with SigV4 lists both."""
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))  # the KMS key in production, as above
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    both_add_from_one_version(S3MetadataStorage(BUCKET, client=s3), online, root)
    first_root = s3.get_object(Bucket=BUCKET, Key="tuf/metadata/1.root.json")["Body"].read()
    device = TrustedMetadata(first_root, f"s3://{BUCKET}/tuf/metadata/", tmp_path / "device", fetcher=S3Fetcher(client=s3))
    device_lists(device, V1, V2, V3)


def test_a_slower_publisher_cannot_overwrite_a_newer_timestamp_in_the_bucket(s3, tmp_path):
    """A (snapshot 7) and B (snapshot 8) both read the timestamp naming 6; B's put moves it to 8; A's
    put_object(IfMatch=<the ETag naming 6>) is refused with 412, it re-reads and leaves B's. A device lists both."""
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    slower_publisher_overwrites_a_newer_timestamp(S3MetadataStorage(BUCKET, client=s3), online, root)
    first_root = s3.get_object(Bucket=BUCKET, Key="tuf/metadata/1.root.json")["Body"].read()
    device = TrustedMetadata(first_root, f"s3://{BUCKET}/tuf/metadata/", tmp_path / "device", fetcher=S3Fetcher(client=s3))
    device_lists(device, V1, V2, V3)


def test_a_refresh_racing_a_publish_never_moves_the_buckets_timestamp_back(s3, tmp_path):
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    refresh_never_moves_the_timestamp_back(S3MetadataStorage(BUCKET, client=s3), online, root)
