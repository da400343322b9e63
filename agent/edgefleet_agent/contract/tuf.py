"""The update metadata devices and the publisher agree on: The Update Framework (TUF) over the model store.

The store of each platform (the local store directory, the S3 bucket, the Azure blob container) is a TUF
repository. The publisher writes it with python-tuf's metadata API (components/trust/), the device reads it with
python-tuf's `ngclient` (edgefleet_agent/trust.py). This module is what both sides must agree on, and nothing
else: where the metadata lives in a store, how a model artifact is named as a TUF target, which custom fields a
target carries, and how a device checks a desired state against the target it found.

Layout in a store (the same under the local directory, the bucket and the container):

    tuf/metadata/1.root.json, 2.root.json, …   every root version, kept forever (devices walk the chain)
    tuf/metadata/timestamp.json                 the only file a device always fetches; names the snapshot
    tuf/metadata/snapshot.json                  names the targets version
    tuf/metadata/targets.json                   every model artifact a device may install, nothing else

A target is one version of a model, `<model>/<version>/<sha256>.onnx` (the artifact's content address under the
version: the same artifact published as two versions is two targets, revoked one by one), with the artifact's length
and sha256 and, as custom info, the manifest's identity:

    {"edgefleet": {"model": "detector", "version": "1.2.0", "sha256": "<artifact's>", "size": 2048,
                   "manifest_sha256": "<sha256 of the exact signed manifest bytes>"}}

so a device refuses a desired state whose manifest is not the one published for that artifact, even when the
manifest carries a valid signature (an old signed manifest replayed under a new artifact, or the reverse).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

METADATA_PREFIX = "tuf/metadata"  # under the store's root: the local directory, the bucket, the container
ROOT_FILE = "trusted-root.json"  # a device's first root, beside its trusted public key (see docs/signing.md)
CUSTOM_KEY = "edgefleet"
TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")


NOT_A_TARGET = "not in the signed targets: revoked or never published"


class MetadataRefused(Exception):
    """Why the update metadata does not let a desired state install. `transient`: a later refresh may succeed.
    (Here, not in edgefleet_agent/trust.py, so that the agent's core can catch it without importing python-tuf, which
    loads only when a device is given its TUF root.)"""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def target_path(model: str, version: str, sha256: str) -> str:
    """The TUF target path of one version of a model: its artifact's content address under the version. Devices never
    download by it (the desired state names the artifact's URI); it names what is signed and what is revoked."""
    return f"{model}/{version}/{sha256}.onnx"


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


@dataclass(frozen=True)
class TargetIdentity:
    """What a target says about the model version it is: the custom info the publisher signs into targets.json."""

    model: str
    version: str
    sha256: str
    size: int
    manifest_sha256: str

    def custom(self) -> dict[str, Any]:
        return {
            CUSTOM_KEY: {
                "model": self.model,
                "version": self.version,
                "sha256": self.sha256,
                "size": self.size,
                "manifest_sha256": self.manifest_sha256,
            }
        }

    @classmethod
    def from_custom(cls, custom: Mapping[str, Any] | None) -> TargetIdentity | None:
        body = (custom or {}).get(CUSTOM_KEY)
        if not isinstance(body, Mapping):
            return None
        try:
            return cls(
                model=str(body["model"]),
                version=str(body["version"]),
                sha256=str(body["sha256"]),
                size=int(body["size"]),
                manifest_sha256=str(body["manifest_sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def target_mismatches(
    length: int,
    hashes: Mapping[str, str],
    custom: Mapping[str, Any] | None,
    *,
    model: str,
    version: str,
    sha256: str,
    size: int,
    manifest_bytes: bytes,
) -> list[str]:
    """Why a signed target does not vouch for this desired state (empty: it does). The target's own length and
    sha256 must be the desired artifact's, and its custom info must name the same model, version and manifest."""
    out = []
    if length != size:
        out.append(f"length {length} in the signed targets vs {size} desired")
    if hashes.get("sha256") != sha256:
        out.append(f"sha256 {str(hashes.get('sha256'))[:12]}… in the signed targets vs {sha256[:12]}… desired")
    ident = TargetIdentity.from_custom(custom)
    if ident is None:
        out.append("the signed target carries no edgefleet identity (model, version, manifest digest)")
        return out
    for name, signed, mine in (("model", ident.model, model), ("version", ident.version, version)):
        if signed != mine:
            out.append(f"{name} {signed!r} in the signed targets vs {mine!r} desired")
    want = manifest_digest(manifest_bytes)
    if ident.manifest_sha256 != want:
        out.append(f"manifest sha256 {ident.manifest_sha256[:12]}… in the signed targets vs {want[:12]}… desired")
    return out


# -- patches (docs/deltas.md): a file that rebuilds one artifact from another, listed beside the versions -------------
PATCH_KIND = "patch"


def patch_name(from_sha256: str, to_sha256: str, method: str) -> str:
    """A patch's file name: the two artifacts' digests and the format, so a device can derive it from what it holds."""
    return f"{to_sha256}.from-{from_sha256}.{method}"


def patch_path(model: str, from_sha256: str, to_sha256: str, method: str) -> str:
    """The TUF target path of a patch, and its path under the store's root: `<model>/patches/<name>`."""
    return f"{model}/patches/{patch_name(from_sha256, to_sha256, method)}"


def patch_uri(artifact_uri: str, from_sha256: str, to_sha256: str, method: str) -> str:
    """Where a patch to an artifact is published: `patches/` beside the artifact (the store's `<model>/` folder)."""
    base, sep, _ = artifact_uri.partition("?")[0].rpartition("/")
    query = artifact_uri.partition("?")[2]
    uri = f"{base}/patches/{patch_name(from_sha256, to_sha256, method)}" if sep else f"patches/{patch_name(from_sha256, to_sha256, method)}"
    return f"{uri}?{query}" if query else uri


@dataclass(frozen=True)
class PatchIdentity:
    """A published patch as the signed targets list it: its own length and sha256, and the two versions it links."""

    model: str
    method: str
    size: int
    sha256: str
    from_version: str
    from_sha256: str
    from_size: int
    to_version: str
    to_sha256: str
    to_size: int
    memory_bytes: int

    @property
    def path(self) -> str:
        return patch_path(self.model, self.from_sha256, self.to_sha256, self.method)

    def custom(self) -> dict[str, Any]:
        return {CUSTOM_KEY: {"kind": PATCH_KIND, **{k: getattr(self, k) for k in PATCH_FIELDS if k not in ("size", "sha256")}}}

    @classmethod
    def from_target(cls, length: int, hashes: Mapping[str, str], custom: Mapping[str, Any] | None) -> PatchIdentity | None:
        """The patch a signed target describes; None for a target that is not a well-formed patch."""
        body = (custom or {}).get(CUSTOM_KEY)
        if not isinstance(body, Mapping) or body.get("kind") != PATCH_KIND or "sha256" not in hashes:
            return None
        try:
            return cls(
                model=str(body["model"]),
                method=str(body["method"]),
                size=int(length),
                sha256=str(hashes["sha256"]),
                from_version=str(body["from_version"]),
                from_sha256=str(body["from_sha256"]),
                from_size=int(body["from_size"]),
                to_version=str(body["to_version"]),
                to_sha256=str(body["to_sha256"]),
                to_size=int(body["to_size"]),
                memory_bytes=int(body["memory_bytes"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def links(self, model: str, version: str, sha256: str) -> bool:
        """True if this patch starts or ends at that version of that model (revoking it removes the patch)."""
        return self.model == model and (
            (self.from_version, self.from_sha256) == (version, sha256) or (self.to_version, self.to_sha256) == (version, sha256)
        )


PATCH_FIELDS = (
    "model",
    "method",
    "size",
    "sha256",
    "from_version",
    "from_sha256",
    "from_size",
    "to_version",
    "to_sha256",
    "to_size",
    "memory_bytes",
)


def is_patch_target(custom: Mapping[str, Any] | None) -> bool:
    body = (custom or {}).get(CUSTOM_KEY)
    return isinstance(body, Mapping) and body.get("kind") == PATCH_KIND
