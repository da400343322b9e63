"""Verify a model version: manifest signature first, then the artifact against the digest it pins.

The device agent, `edgefleet-agent serve` and `edgefleet model verify` all call this code, so "it verified on
my laptop" means the same thing as "it verified on the device".
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet_agent.contract.digest import same_file_digest
from edgefleet_agent.contract.manifest import REFERENCE_KIND, ModelDir, ModelManifest, parse_manifest_bytes
from edgefleet_agent.contract.signing import Envelope, SignatureError, verify_bytes


def verify_artifact(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    model_path: Path,
    trusted: ec.EllipticCurvePublicKey,
    source: str,
    kind: str | None = None,
) -> ModelManifest:
    """Returns the manifest once signature, digest and size all check out; raises SignatureError otherwise.

    `kind` names the build the file is (a variant's kind; None or "fp32": the reference): its digest is checked
    exactly as the reference's is, against the same signed manifest."""
    verify_bytes(manifest_bytes, Envelope.parse(signature_bytes, f"{source} (signature)"), trusted, source)
    manifest = parse_manifest_bytes(manifest_bytes, source)
    try:
        _, sha256, size = manifest.build(kind)
    except KeyError:
        raise SignatureError(
            source,
            f"the signed manifest of {manifest.name} {manifest.version} has no {kind} variant (it has {', '.join(manifest.kinds)})",
            f"pick one of {', '.join(manifest.kinds)}, or add it with `edgefleet model variant add models/{manifest.name} --kind {kind}`",
        ) from None
    problem = same_file_digest(Path(model_path), sha256, size)
    if problem:
        what = "artifact" if kind in (None, REFERENCE_KIND) else f"{kind} variant"
        raise SignatureError(
            source,
            f"{what} does not match the signed manifest: {problem}",
            "re-download the artifact; if it changed on purpose, run `edgefleet model add` and re-sign",
        )
    return manifest


def verify_model_dir(model_dir: ModelDir, trusted: ec.EllipticCurvePublicKey, kind: str | None = None) -> ModelManifest:
    if not model_dir.signature_path.is_file():
        raise SignatureError(
            str(model_dir.signature_path), "no signature file", f"sign it with `edgefleet model sign {model_dir.path} --key KEY`"
        )
    manifest_bytes = model_dir.manifest_bytes()
    signature_bytes = model_dir.signature_path.read_bytes()
    source = str(model_dir.manifest_path)
    # Check the signature before parsing: a tampered manifest must fail as a bad signature, and unverified
    # bytes are never handed to the YAML parser (the parse is only needed to find the artifact's file name).
    verify_bytes(manifest_bytes, Envelope.parse(signature_bytes, f"{source} (signature)"), trusted, source)
    manifest = parse_manifest_bytes(manifest_bytes, source)
    try:
        path = model_dir.artifact_path(manifest, kind)
    except KeyError:
        path = model_dir.artifact_path(manifest)  # verify_artifact names the missing kind
    return verify_artifact(manifest_bytes, signature_bytes, path, trusted, source, kind)
