"""Publishing patches in the local store (docs/deltas.md): with each version, a `cdc-xz-1` patch from each version its
rollout moves devices off, at `<store>/<model>/patches/<to_sha256>.from-<from_sha256>.cdc-xz-1` (beside the artifacts,
where a device derives it from the artifact's URI), listed in the signed targets when the store is a TUF repository.

A patch is published only when it is at most `edgefleet:delta.max_share` of the full artifact: a model whose every
weight moved compresses to about 84% of itself, which saves too little to be worth rebuilding on the device. A patch is
built once: a later run reads the existing file's header and digest instead; one over the share leaves
`<name>.too-large` (its size) so that it is not built again until the share grows past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from components.delta import DEFAULT_RECENT, build_patch, patch_bases, patch_identity, within_share
from edgefleet_agent.contract.digest import sha256_file
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import parse_manifest_bytes, version_key
from edgefleet_agent.contract.tuf import PatchIdentity, patch_path
from edgefleet_agent.delta import METHOD, PatchError, read_header


@dataclass(frozen=True)
class StoredVersion:
    model: str
    version: str
    sha256: str
    size: int
    artifact: Path


def stored_versions(store: Path, model: str) -> list[StoredVersion]:
    """Every version of `model` the store holds (a manifest and its artifact), oldest first."""
    out = []
    for manifest_path in sorted((Path(store) / model).glob("*.yaml")):
        try:
            m = parse_manifest_bytes(manifest_path.read_bytes(), str(manifest_path))
        except (OSError, EdgefleetError):
            continue
        artifact = manifest_path.with_suffix(".onnx")
        if m.name == model and artifact.is_file():
            out.append(StoredVersion(m.name, m.version, m.sha256, m.size, artifact))
    return sorted(out, key=lambda v: (version_key(v.version), v.sha256))


def stored_version(store: Path, model: str, sha256: str) -> StoredVersion | None:
    return next((v for v in stored_versions(store, model) if v.sha256 == sha256), None)


def patch_file(store: Path, model: str, from_sha256: str, to_sha256: str) -> Path:
    return Path(store) / patch_path(model, from_sha256, to_sha256, METHOD)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".too-large")


def too_large(path: Path) -> int | None:
    """The size of a patch built before and found over the share (its file deleted), if one was."""
    try:
        return int(_marker(path).read_text().strip())
    except (OSError, ValueError):
        return None


def published_patch(store: Path, base: StoredVersion, target: StoredVersion) -> PatchIdentity | None:
    """The patch already in the store from `base` to `target`, if one is there and rebuilds exactly that pair."""
    path = patch_file(store, target.model, base.sha256, target.sha256)
    try:
        header = read_header(path)
        sha256, size = sha256_file(path)
    except (OSError, PatchError):
        return None
    if (header.from_sha256, header.from_size, header.to_sha256, header.to_size) != (base.sha256, base.size, target.sha256, target.size):
        return None
    return patch_identity(base, target, size, sha256, header.memory_needed)


def publish_patches(
    store: Path, model: str, to_sha256: str, from_sha256s: Iterable[str] | None, max_share: float, recent: int = DEFAULT_RECENT
) -> list[PatchIdentity]:
    """Builds (or finds) a patch to the stored version `to_sha256` from each of `from_sha256s` (None: the `recent`
    newest older versions in the store), and keeps those at most `max_share` of the full artifact. A base the store does
    not hold is skipped. Returns the patches published."""
    store = Path(store)
    versions = stored_versions(store, model)
    target = next((v for v in versions if v.sha256 == to_sha256), None)
    if target is None:
        return []
    out = []
    for base in patch_bases(versions, target, from_sha256s, recent):
        path = patch_file(store, model, base.sha256, target.sha256)
        known = too_large(path)
        if known is not None and known > max_share * target.size:
            continue  # built before and over the share: not built again unless the share grows past it
        patch = published_patch(store, base, target) or build_patch(base, target, base.artifact, target.artifact, path)
        if not within_share(patch, max_share):
            _marker(path).write_text(f"{patch.size}\n")
            path.unlink(missing_ok=True)
            continue
        out.append(patch)
    return out
