"""Which TUF repository and which signing key a `edgefleet trust …` command works on.

The local stack's repository is its store directory and its online key the stack's key file. A cloud stack's store
and key are created by `pulumi up` (an S3 bucket and a KMS key, a blob container and a Key Vault key), so the
commands are told where they are: `--store s3://<bucket>` or `--store https://<account>.blob.core.windows.net/<container>`
and `--signing-key kms:<key id, ARN or alias>` or `--signing-key https://<vault>.vault.azure.net/keys/<name>/<version>`
(or a key file). The scheduled refresh (.github/workflows/trust-refresh.yml) passes them from repository variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.local.signer import LocalKeySigner
from components.trust.repository import Expiry, TrustRepository
from components.trust.storage import DirectoryStorage, MetadataStorage
from edgefleet.config import load_stack
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import Signer


def storage_for(project_dir: Path, cfg: Any, stack: str, store: str | None) -> MetadataStorage:
    if store is None:
        if cfg.section("local") is not None and "local" in cfg.platforms:
            return DirectoryStorage(Path(project_dir) / cfg.local.store)
        raise EdgefleetError(
            f"stack {stack}",
            "a cloud stack's store is created by `pulumi up`, so this command must be told where it is",
            "pass --store s3://<bucket> (AWS) or --store https://<account>.blob.core.windows.net/<container> (Azure)",
        )
    if store.startswith("s3://"):
        from components.aws.trust_store import S3MetadataStorage

        return S3MetadataStorage(store.removeprefix("s3://").split("/", 1)[0])
    if store.startswith("https://"):
        from components.azure.trust_store import BlobMetadataStorage

        return BlobMetadataStorage.connect(store)
    return DirectoryStorage(Path(project_dir) / store)


def signer_for(project_dir: Path, cfg: Any, signing_key: str | None) -> Signer:
    if signing_key is None:
        return LocalKeySigner(Path(project_dir) / cfg.signing.key_file)
    if signing_key.startswith("kms:"):
        from components.aws.signer import KmsSigner

        return KmsSigner(signing_key.removeprefix("kms:"))
    if signing_key.startswith("https://"):
        from components.azure.signer import KeyVaultSigner

        return KeyVaultSigner(signing_key)
    return LocalKeySigner(Path(signing_key))


def open_repository(project_dir: Path, stack: str, store: str | None = None, signing_key: str | None = None) -> tuple[TrustRepository, Any]:
    cfg, _ = load_stack(Path(project_dir).resolve(), stack)
    expiry = Expiry.of_seconds(dict(cfg.trust.expiry_seconds)) if cfg.trust.expiry_seconds else Expiry()
    repo = TrustRepository(storage_for(project_dir, cfg, stack, store), signer_for(project_dir, cfg, signing_key), expiry)
    return repo, cfg
