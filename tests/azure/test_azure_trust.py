"""The Azure blob model store as the stack's TUF repository: the publisher writes metadata blobs through the
ContainerClient calls BlobMetadataStorage makes (an in-memory container here: no Azurite or storage account is
reachable, so the real service is not exercised), and a device reads them over https with the store's SAS appended
to every URL (the agent's UrlFetcher), as the IoT Edge module would."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from components.azure.trust_store import BlobMetadataStorage
from components.local.signer import LocalKeySigner, create_key_file
from components.trust.repository import TrustRepository
from edgefleet_agent.contract.tuf import NOT_A_TARGET, MetadataRefused, TargetIdentity, manifest_digest
from edgefleet_agent.trust import TrustedMetadata, UrlFetcher
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

SAS = "sv=2024-11-04&sr=c&sp=r&sig=c2VjcmV0"
MANIFEST = b"name: detector\n"


class MemoryContainer:
    """ContainerClient's calls as the SDK answers them: upload_blob(overwrite=False) of an existing blob is
    ResourceExistsError (the service's 409 BlobAlreadyExists); upload_blob(etag=E, match_condition=IfNotModified)
    of a blob whose ETag is no longer E is ResourceModifiedError (412 ConditionNotMet); a missing blob
    ResourceNotFoundError. Every upload gives the blob a new ETag, as the service does."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.settings: dict[str, object] = {}
        self.uploads = 0

    def upload_blob(self, name, data, overwrite=False, content_settings=None, etag=None, match_condition=None, **_):
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        if not overwrite and name in self.blobs:
            raise ResourceExistsError(f"{name}: The specified blob already exists.")
        if match_condition == MatchConditions.IfNotModified and self.etags.get(name) != etag:
            raise ResourceModifiedError(f"{name}: The condition specified using HTTP conditional header(s) is not met.")
        assert match_condition in (None, MatchConditions.IfNotModified), match_condition
        self.uploads += 1
        self.blobs[name] = bytes(data)
        self.etags[name] = f'"0x8DD{self.uploads:012X}"'
        self.settings[name] = content_settings

    def download_blob(self, name):
        from types import SimpleNamespace

        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.blobs:
            raise ResourceNotFoundError(f"{name} not found")
        data, etag = self.blobs[name], self.etags[name]
        return SimpleNamespace(readall=lambda: data, properties=SimpleNamespace(etag=etag))


@pytest.fixture
def served():
    """The container over http: 403 without the SAS, as a private container answers; the SAS itself is never logged."""
    container = MemoryContainer()
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            seen.append(url.path)
            if parse_qs(url.query).get("sig") != ["c2VjcmV0"]:
                self.send_error(403)
                return
            name = url.path.removeprefix("/models/")
            if name not in container.blobs:
                self.send_error(404)
                return
            body = container.blobs[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield container, f"http://127.0.0.1:{server.server_address[1]}/models", seen
    server.shutdown()
    server.server_close()


def test_the_container_is_the_repository_and_a_device_reads_it_with_the_sas(served, tmp_path: Path):
    container, url, seen = served
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))  # Key Vault's signer in production (KeyVaultSigner)
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    repo = TrustRepository(BlobMetadataStorage(container, url), online)
    target = TargetIdentity("detector", "1.2.0", "c" * 64, 4096, manifest_digest(MANIFEST))
    repo.init([root], 1, [target])
    assert container.settings["tuf/metadata/timestamp.json"].cache_control == "no-cache"

    device = TrustedMetadata(container.blobs["tuf/metadata/1.root.json"], repo.storage.url, tmp_path / "dev", fetcher=UrlFetcher(SAS))
    device.check("detector", "1.2.0", "c" * 64, 4096, MANIFEST)
    repo.revoke("detector", "1.2.0", "c" * 64, "gate failed")
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device.check("detector", "1.2.0", "c" * 64, 4096, MANIFEST)

    without_sas = TrustedMetadata(container.blobs["tuf/metadata/1.root.json"], repo.storage.url, tmp_path / "dev2")
    with pytest.raises(MetadataRefused) as err:
        without_sas.check("detector", "1.2.0", "c" * 64, 4096, MANIFEST)
    assert "403" in err.value.reason and "c2VjcmV0" not in err.value.reason


def test_versioned_metadata_is_created_once_and_never_overwritten():
    storage = BlobMetadataStorage(MemoryContainer(), "https://efdev.blob.core.windows.net/models")
    assert storage.create("2.targets.json", b"first")
    assert not storage.create("2.targets.json", b"second")
    assert storage.read("2.targets.json") == b"first"


def test_the_timestamp_is_replaced_only_while_it_carries_the_etag_read():
    """upload_blob(overwrite=True, etag=<read>, match_condition=IfNotModified); the first write is create-only."""
    swap_refuses_a_stale_tag(BlobMetadataStorage(MemoryContainer(), "https://efdev.blob.core.windows.net/models"))


def test_two_publishers_on_one_container_lose_neither_target(served, tmp_path: Path):
    """Two stacks' gates add a target to one container from the same targets version: the slower one's
    upload_blob(overwrite=False) of that version is refused, it re-reads and adds on top, and a device lists both."""
    container, url, _ = served
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    both_add_from_one_version(BlobMetadataStorage(container, url), online, root)
    device = TrustedMetadata(container.blobs["tuf/metadata/1.root.json"], f"{url}/tuf/metadata/", tmp_path / "dev", fetcher=UrlFetcher(SAS))
    device_lists(device, V1, V2, V3)


def test_a_slower_publisher_cannot_overwrite_a_newer_timestamp_in_the_container(served, tmp_path: Path):
    """A (snapshot 7) and B (snapshot 8) both read the timestamp naming 6; B's upload moves it to 8; A's upload with
    the ETag naming 6 (IfNotModified) is refused with 412 ConditionNotMet, it re-reads and leaves B's. A device lists
    both."""
    container, url, _ = served
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    slower_publisher_overwrites_a_newer_timestamp(BlobMetadataStorage(container, url), online, root)
    device = TrustedMetadata(container.blobs["tuf/metadata/1.root.json"], f"{url}/tuf/metadata/", tmp_path / "dev", fetcher=UrlFetcher(SAS))
    device_lists(device, V1, V2, V3)


def test_a_refresh_racing_a_publish_never_moves_the_containers_timestamp_back(tmp_path: Path):
    online = LocalKeySigner(create_key_file(tmp_path / "online.pem"))
    root = LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    refresh_never_moves_the_timestamp_back(
        BlobMetadataStorage(MemoryContainer(), "https://efdev.blob.core.windows.net/models"), online, root
    )
