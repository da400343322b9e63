"""Sign and verify a model version: manifest signature first, then the artifact against the digest it pins.

The device agent calls `verify_artifact` with the same code the CLI uses, so "it verified on my laptop"
means the same thing as "it verified on the device".
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.digest import same_file_digest
from edgefleet.errors import EdgefleetError
from edgefleet.manifest import ModelDir, ModelManifest, parse_manifest_bytes
from edgefleet.signing import Envelope, SignatureError, Signer, sign_bytes, verify_bytes


def verify_artifact(manifest_bytes: bytes, signature_bytes: bytes, model_path: Path,
                    trusted: ec.EllipticCurvePublicKey, source: str) -> ModelManifest:
    """Returns the manifest once signature, digest and size all check out; raises SignatureError otherwise."""
    verify_bytes(manifest_bytes, Envelope.parse(signature_bytes, f"{source} (signature)"), trusted, source)
    manifest = parse_manifest_bytes(manifest_bytes, source)
    problem = same_file_digest(Path(model_path), manifest.sha256, manifest.size)
    if problem:
        raise SignatureError(source, f"artifact does not match the signed manifest: {problem}",
                             "re-download the artifact; if it changed on purpose, run `edgefleet model add` and re-sign")
    return manifest


def sign_model_dir(model_dir: ModelDir, signer: Signer) -> Path:
    """Signs the manifest after checking it pins the artifact next to it, then writes model.yaml.sig."""
    from edgefleet.fsutil import atomic_write_bytes

    manifest_bytes = model_dir.manifest_bytes()
    manifest = model_dir.load()
    problem = same_file_digest(model_dir.artifact_path(manifest), manifest.sha256, manifest.size)
    if problem:
        raise EdgefleetError(str(model_dir.manifest_path), f"refusing to sign: {problem}",
                             f"run `edgefleet model add {model_dir.path} --onnx FILE --version X.Y.Z` to re-pin the artifact")
    envelope = sign_bytes(signer, manifest_bytes)
    atomic_write_bytes(model_dir.signature_path, envelope.to_bytes())
    return model_dir.signature_path


def verify_model_dir(model_dir: ModelDir, trusted: ec.EllipticCurvePublicKey) -> ModelManifest:
    if not model_dir.signature_path.is_file():
        raise SignatureError(str(model_dir.signature_path), "no signature file", f"sign it with `edgefleet model sign {model_dir.path} --key KEY`")
    manifest_bytes = model_dir.manifest_bytes()
    signature_bytes = model_dir.signature_path.read_bytes()
    source = str(model_dir.manifest_path)
    # Check the signature before parsing: a tampered manifest must fail as a bad signature, and unverified
    # bytes are never handed to the YAML parser (the parse is only needed to find the artifact's file name).
    verify_bytes(manifest_bytes, Envelope.parse(signature_bytes, f"{source} (signature)"), trusted, source)
    manifest = parse_manifest_bytes(manifest_bytes, source)
    return verify_artifact(manifest_bytes, signature_bytes, model_dir.artifact_path(manifest), trusted, source)
