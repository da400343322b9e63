"""Delta updates on Azure (docs/deltas.md): publishing a version to the blob container also publishes a patch from the
previous one at `<model>/patches/<name>`, listed in the container's signed TUF targets, and a device reading the
container with its SAS rebuilds the new artifact from the old one and the patch. Against an in-memory container with
the ContainerClient calls the provider makes, served over http as a private container answers (no Azurite or storage
account is reachable here)."""

from __future__ import annotations

import hashlib
import http.server
import random
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from test_azure_gate import MemoryContainer

from components.azure.providers import publish_artifact
from components.azure.trust_store import BlobMetadataStorage
from components.local.signer import LocalKeySigner, create_key_file
from components.trust.repository import TrustRepository
from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest, patch_path, patch_uri
from edgefleet_agent.delta import METHOD, apply_patch
from edgefleet_agent.download import download
from edgefleet_agent.trust import TrustedMetadata, UrlFetcher

REPO = Path(__file__).resolve().parents[2]
SAS = "sv=2024-11-04&sr=c&sp=r&sig=c2VjcmV0"
ENDPOINT = "https://efdev.blob.core.windows.net/"


class Container(MemoryContainer):
    """The calls BlobMetadataStorage and the patch download add: a missing blob is ResourceNotFoundError, a download
    streams into a file and carries the blob's ETag."""

    def upload_blob(self, name, data, overwrite=False, metadata=None, etag=None, match_condition=None, **_):
        super().upload_blob(name, data, overwrite=overwrite, metadata=metadata, etag=etag, match_condition=match_condition)

    def download_blob(self, name):
        from types import SimpleNamespace

        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.blobs:
            raise ResourceNotFoundError(f"{name} not found")
        data = self.blobs[name][0]
        return SimpleNamespace(readall=lambda: data, readinto=lambda fh: fh.write(data), properties=SimpleNamespace(etag=self.etags[name]))


@pytest.fixture
def signer(tmp_path) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path / "online.pem"))  # Key Vault's key in production (KeyVaultSigner)


def version(where: Path, number: str, data: bytes) -> dict:
    """ModelArtifact's inputs for detector `number` whose artifact is `data`."""
    source = where / number / "detector.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    doc = yaml.safe_load((REPO / "models" / "detector" / "model.yaml").read_text())
    doc.update(version=number, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return {
        "source": str(source),
        "model": "detector",
        "version": number,
        "sha256": doc["sha256"],
        "size": len(data),
        "manifest": yaml.safe_dump(doc, sort_keys=False),
        "blob_endpoint": ENDPOINT,
        "container": "models",
        "key_url": "unused",
    }


def retrained(seed: int = 7, kib: int = 512) -> tuple[bytes, bytes]:
    """Two artifacts sharing all but their last 16 KiB, as a model with its head retrained."""
    rng = random.Random(seed)
    body = rng.randbytes(kib * 1024)
    return body + rng.randbytes(16 * 1024), body + rng.randbytes(16 * 1024)


def listed(repo: TrustRepository, props: dict) -> None:
    """What the ring gate does as it rolls a version out: list it as a target (publish_desired)."""
    repo.add_targets(
        [TargetIdentity("detector", props["version"], props["sha256"], props["size"], manifest_digest(props["manifest"].encode()))]
    )


def trusted(container: Container, signer, tmp_path: Path) -> TrustRepository:
    """`edgefleet trust init` on the container (the online key also as root, for brevity)."""
    repo = TrustRepository(BlobMetadataStorage(container, f"{ENDPOINT}models"), signer)
    repo.init([signer], 1)
    return repo


def test_a_second_version_publishes_a_signed_patch_a_device_rebuilds_the_new_artifact_from(signer, tmp_path):
    box = Container()
    repo = trusted(box, signer, tmp_path)
    old, new = retrained()
    v1, v2 = version(tmp_path, "1.0.0", old), version(tmp_path, "1.1.0", new)
    publish_artifact(v1, signer=signer, container=box)
    assert not [n for n in box.blobs if "/patches/" in n], "nothing to patch from yet"
    listed(repo, v1)
    box.upload_blob(f"detector/{'e' * 64}.onnx", b"another tool's", metadata={"sha256": "e" * 64, "version": "latest"})
    out = publish_artifact(v2, signer=signer, container=box)

    name = patch_path("detector", v1["sha256"], v2["sha256"], METHOD)
    assert name.startswith("detector/patches/") and name in box.blobs
    patch_bytes = box.blobs[name][0]
    assert len(patch_bytes) < v2["size"] / 4
    assert [n for n in box.blobs if "/patches/" in n] == [name], "a blob whose version does not order is no base"
    assert [(p.path, p.size, p.sha256, p.from_version, p.to_version) for p in repo.patches()] == [
        (name, len(patch_bytes), hashlib.sha256(patch_bytes).hexdigest(), "1.0.0", "1.1.0")
    ]

    uploads = len(box.uploads)
    assert publish_artifact(v2, signer=signer, container=box) == out
    assert len(box.uploads) == uploads, "a re-run (a 403 retried) builds and uploads nothing again"

    # the device: the container over http with its read SAS, as IoT Edge modules read it
    served = serve(box)
    device = TrustedMetadata(box.blobs["tuf/metadata/1.root.json"][0], f"{served}/tuf/metadata/", tmp_path / "dev", fetcher=UrlFetcher(SAS))
    device.check("detector", "1.1.0", v2["sha256"], v2["size"], v2["manifest"].encode())
    signed = device.patch("detector", v1["sha256"], v2["sha256"], METHOD)
    assert signed is not None and signed.memory_bytes < 16 << 20
    base = tmp_path / "dev" / "base.onnx"
    base.write_bytes(old)
    uri = patch_uri(f"{served}/detector/{v2['sha256']}.onnx?{SAS}", v1["sha256"], v2["sha256"], METHOD)
    got = tmp_path / "dev" / "patch"
    assert download(uri, got, expected_size=signed.size) == signed.sha256
    rebuilt = tmp_path / "dev" / "new.onnx"
    apply_patch(base, got, rebuilt, v2["sha256"], v2["size"], max_memory_bytes=16 << 20)
    assert rebuilt.read_bytes() == new


def serve(box: Container) -> str:
    """The container at http://127.0.0.1:<port>/models: 403 without the SAS."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            name = url.path.removeprefix("/models/")
            if parse_qs(url.query).get("sig") != ["c2VjcmV0"]:
                self.send_error(403)
            elif name not in box.blobs:
                self.send_error(404)
            else:
                body = box.blobs[name][0]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/models"


def test_a_patch_over_max_share_is_not_published_nor_built_again(signer, tmp_path):
    box = Container()
    repo = trusted(box, signer, tmp_path)
    rng = random.Random(3)
    v1 = version(tmp_path, "1.0.0", rng.randbytes(256 * 1024))
    v2 = version(tmp_path, "1.1.0", rng.randbytes(256 * 1024))  # every byte moved: the patch is the whole file
    publish_artifact(v1, signer=signer, container=box)
    publish_artifact({**v2, "delta_max_share": 0.9}, signer=signer, container=box)
    name = patch_path("detector", v1["sha256"], v2["sha256"], METHOD)
    assert name not in box.blobs and repo.patches() == []
    assert f"{name}.too-large" in box.blobs
    uploads = len(box.uploads)
    publish_artifact({**v2, "delta_max_share": 0.9}, signer=signer, container=box)
    assert len(box.uploads) == uploads


def test_delta_disabled_publishes_no_patch(signer, tmp_path):
    box = Container()
    repo = trusted(box, signer, tmp_path)
    old, new = retrained()
    v1, v2 = version(tmp_path, "1.0.0", old), version(tmp_path, "1.1.0", new)
    publish_artifact(v1, signer=signer, container=box)
    publish_artifact({**v2, "delta_enabled": False}, signer=signer, container=box)
    assert not [n for n in box.blobs if "/patches/" in n] and repo.patches() == []


def test_without_a_trust_repository_the_patch_is_still_published_beside_the_artifacts(signer, tmp_path):
    box = Container()
    old, new = retrained()
    v1, v2 = version(tmp_path, "1.0.0", old), version(tmp_path, "1.1.0", new)
    publish_artifact(v1, signer=signer, container=box)
    publish_artifact(v2, signer=signer, container=box)
    assert patch_path("detector", v1["sha256"], v2["sha256"], METHOD) in box.blobs  # a device derives it from the URI
    assert not [n for n in box.blobs if n.startswith("tuf/")]


def test_the_stacks_delta_settings_reach_the_azure_artifact_and_a_stack_without_them_is_unchanged(tmp_path, azure_dev_graph):
    from edgefleet.synth import synth
    from tests.foundation.test_unworkable_declarations import stack_copy

    graph = synth(
        stack_copy(tmp_path, "azure-dev", lambda c: c.update({"edgefleet:delta": {"enabled": False, "max_share": 0.3}})), "azure-dev"
    )
    art = next(r["inputs"] for r in graph["resources"] if r["name"] == "detector-azure-artifact")
    assert (art["delta_enabled"], art["delta_max_share"]) == (False, 0.3)
    unset = next(r["inputs"] for r in azure_dev_graph["resources"] if r["name"] == "detector-azure-artifact")
    assert "delta_enabled" not in unset and "delta_max_share" not in unset
