"""The Azure blob model store as the stack's TUF repository: metadata blobs under <container>/tuf/metadata/.

Written by the publisher (the Key Vault key signs targets, snapshot and timestamp; components/trust/) through an
azure-storage-blob ContainerClient; read by IoT Edge modules over https with the store's SAS, which the module twin
already carries for artifacts (edgefleet_agent/trust.py's UrlFetcher appends it to every metadata URL). Tested against
an in-memory container with ContainerClient's calls (tests/azure/test_azure_trust.py); no Azurite or real storage
account is reachable here, so the real service is not exercised.
"""

from __future__ import annotations

from typing import Any

from edgefleet_agent.contract.tuf import METADATA_PREFIX


class BlobMetadataStorage:
    def __init__(self, container: Any, container_url: str, prefix: str = METADATA_PREFIX) -> None:
        self.container = container
        self.container_url = container_url.rstrip("/")
        self.prefix = prefix.strip("/")

    @classmethod
    def connect(cls, container_url: str) -> "BlobMetadataStorage":
        """`container_url`: https://<account>.blob.core.windows.net/<container>, signed in as the deploying identity."""
        from azure.storage.blob import ContainerClient

        from components.azure.signer import default_credential

        return cls(ContainerClient.from_container_url(container_url, credential=default_credential()), container_url)

    @property
    def url(self) -> str:
        return f"{self.container_url}/{self.prefix}/"

    def read(self, name: str) -> bytes | None:
        found = self.read_tagged(name)
        return found[0] if found is not None else None

    def write(self, name: str, data: bytes) -> None:
        self._upload(name, data, overwrite=True)

    def create(self, name: str, data: bytes) -> bool:
        """upload_blob(overwrite=False) is a conditional put (If-None-Match: *): ResourceExistsError when it exists."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._upload(name, data, overwrite=False)
        except ResourceExistsError:
            return False
        return True

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            download = self.container.download_blob(f"{self.prefix}/{name}")
        except ResourceNotFoundError:
            return None
        return bytes(download.readall()), str(download.properties.etag)

    def swap(self, name: str, data: bytes, tag: str | None) -> bool:
        """upload_blob with If-Match: <etag read> (MatchConditions.IfNotModified): ResourceModifiedError (412
        ConditionNotMet) once another upload replaced the blob, ResourceNotFoundError if it was deleted."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        if tag is None:
            return self.create(name, data)
        try:
            self._upload(name, data, overwrite=True, etag=tag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def _upload(self, name: str, data: bytes, overwrite: bool, **conditions: Any) -> None:
        from azure.storage.blob import ContentSettings

        self.container.upload_blob(
            f"{self.prefix}/{name}",
            data,
            overwrite=overwrite,
            content_settings=ContentSettings(content_type="application/json", cache_control="no-cache"),
            **conditions,
        )


def container_url_of(uri: str) -> str | None:
    """https://<account>.blob.core.windows.net/<container> of a published artifact's URI (<container>/<model>/<sha>.onnx)."""
    head, sep, rest = uri.partition("://")
    parts = rest.split("?", 1)[0].split("/")
    if head != "https" or not sep or len(parts) < 4:
        return None
    return f"https://{parts[0]}/{parts[1]}"


def repository_for_uri(uri: str, signer: Any, container: Any = None) -> Any:
    """The TUF repository in the container a declared artifact lives in, for the ring gate to refresh and revoke with;
    None while it holds none (`edgefleet trust init --stack S --store https://<account>.blob.core.windows.net/<container>`)."""
    from components.trust.repository import TrustRepository

    url = container_url_of(uri)
    if url is None:
        return None
    storage = BlobMetadataStorage(container, url) if container is not None else BlobMetadataStorage.connect(url)
    repo = TrustRepository(storage, signer)
    return repo if repo.initialised() else None
