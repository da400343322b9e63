"""The local stack's TUF repository: the local store directory (`edgefleet:local.store`) under tuf/metadata/.

`edgefleet up --stack local` initialises it on first use with the stack's root key file(s) (made by `edgefleet keys
create --role root`, never by `up`), publishes each declared artifact as a target, re-signs the timestamp before it
deploys, and revokes a version a gate rejected once it is burned (a ring served it and a device ran it). The fleet
hands every device the first root (root.json version 1, the one devices are provisioned with) in its state directory.
Under `pulumi up --stack local` the ring gate does the same through the store its declared artifact lives in
(`repository_for_uri`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

from components.local.signer import LocalKeySigner
from components.rollout.decide import burned
from components.trust.repository import Expiry, TrustRepository
from components.trust.storage import DirectoryStorage
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.signing import Signer
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest


def expiry_of(cfg: Any) -> Expiry:
    return Expiry.of_seconds(dict(cfg.trust.expiry_seconds)) if cfg.trust.expiry_seconds else Expiry()


def repository(project_dir: Path, cfg: Any, signer: Signer) -> TrustRepository:
    return TrustRepository(DirectoryStorage(Path(project_dir) / cfg.local.store), signer, expiry_of(cfg))


def root_signers(project_dir: Path, cfg: Any, stack: str) -> list[LocalKeySigner]:
    """The stack's root key files, which must exist: like the signing key, made only by `edgefleet keys create`."""
    out = []
    for rel in cfg.trust.root_keys:
        path = Path(project_dir) / rel
        if not path.exists():
            raise EdgefleetError(
                str(path),
                f"the TUF root key of stack {stack!r} is missing, so its update metadata cannot be initialised; nothing was deployed",
                f"a new stack: create it with `edgefleet keys create --role root {rel}` and keep it offline after the first "
                "`edgefleet up`. A lost root key: restore it from your backup (devices trust only roots it signed)",
            )
        out.append(LocalKeySigner(path))
    return out


def identity(desired: DesiredModel) -> TargetIdentity:
    return TargetIdentity(desired.model, desired.version, desired.sha256, desired.size, manifest_digest(desired.manifest.encode()))


def store_identities(store: Path, revoked: set[tuple[str, str]]) -> list[TargetIdentity]:
    """Every artifact already in the local store (published before the store was a TUF repository), except versions
    a gate rejected: what a new repository lists, so devices can still roll back to what they ran before."""
    out = []
    for manifest_path in sorted(Path(store).glob("*/*.yaml")):
        data = manifest_path.read_bytes()
        try:
            m = parse_manifest_bytes(data, str(manifest_path))
        except EdgefleetError:
            continue
        if (m.version, m.sha256) in revoked or not (manifest_path.with_suffix(".onnx")).is_file():
            continue
        out.append(TargetIdentity(m.name, m.version, m.sha256, m.size, manifest_digest(data)))
    return out


def burned_versions(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rollout records of burned versions (decide.burned: rejected after a ring served them and a device ran them):
    the ones revoked."""
    return [p for p in records if burned(p)]


def ensure_repository(project_dir: Path, cfg: Any, stack: str, signer: Signer, records: list[dict[str, Any]]) -> TrustRepository:
    repo = repository(project_dir, cfg, signer)
    if not repo.initialised():
        rejected = burned_versions(records)
        repo.init(
            root_signers(project_dir, cfg, stack),
            cfg.trust.root_threshold,
            store_identities(Path(project_dir) / cfg.local.store, {(p["version"], p["sha256"]) for p in rejected}),
        )
        for p in rejected:
            repo.revoke(p["model"], p["version"], p["sha256"], _reason(p))
    return repo


def _reason(progress: dict[str, Any]) -> str:
    report = progress.get("report") or {}
    reasons = "; ".join(report.get("reasons") or []) or str(progress.get("status"))
    return f"rollout {progress['rollout_id']}: gate of ring {report.get('failed_ring', '?')!r} failed: {reasons}"


def revoke_rejected(repo: TrustRepository, progress: dict[str, Any]) -> bool:
    """After a rollout: a burned version (decide.burned) is removed from the signed targets; one that was only ever
    shadowed, or that no device ran, may be declared again, so it stays."""
    if not burned(progress):
        return False
    return repo.revoke(progress["model"], progress["version"], progress["sha256"], _reason(progress))


def store_of_uri(uri: str) -> Path | None:
    """The local store holding a published artifact (store.py's layout: <store>/<model>/<sha256>.onnx)."""
    url = urlparse(uri or "")
    if url.scheme != "file":
        return None
    return Path(unquote(url.path)).parent.parent


def repository_for_uri(uri: str, signer: Signer) -> TrustRepository | None:
    store = store_of_uri(uri)
    if store is None:
        return None
    repo = TrustRepository(DirectoryStorage(store), signer)
    return repo if repo.initialised() else None


def first_root(repo: TrustRepository) -> bytes:
    """What a device is provisioned with: root version 1. It follows every later root through the chain."""
    data = repo.storage.read("1.root.json")
    assert data is not None, "an initialised repository has a first root"
    return data
