"""The local model store: a directory of content-addressed artifacts with their manifests and signatures.

Layout: <store>/<model>/<sha256>.onnx, <sha256>.yaml (the exact manifest bytes), <sha256>.yaml.sig, and each variant
of a version under its own digest, <variant sha256>.onnx, which the desired state lists (DesiredModel.variants).
Publishing verifies the artifact against its manifest before copying, and reuses an existing signature
when it still verifies (ECDSA signatures differ on every signing; a stable one keeps re-runs no-ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.props import published_variants
from edgefleet_agent.contract.artifact import verify_artifact
from edgefleet_agent.contract.digest import same_file_digest
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.signing import SignatureError, Signer, load_public_key, sign_bytes
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.fsutil import atomic_copy, atomic_write_bytes


@dataclass(frozen=True)
class Published:
    uri: str
    manifest_text: str
    signature_text: str
    sha256: str
    size: int
    version: str
    model: str
    variants: list[dict[str, Any]] | None = None  # each build's file URI, content-addressed beside the reference

    def desired(self, rollout: str) -> DesiredModel:
        return DesiredModel(
            model=self.model,
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            uri=self.uri,
            manifest=self.manifest_text,
            signature=self.signature_text,
            rollout=rollout,
            variants=self.variants,
        )


def publish(store: Path, manifest_text: str, artifact: Path, signer: Signer, source: str) -> Published:
    manifest = parse_manifest_bytes(manifest_text.encode(), source)
    problem = same_file_digest(Path(artifact), manifest.sha256, manifest.size)
    if problem:
        raise EdgefleetError(source, f"refusing to publish: {problem}", "run `edgefleet model add` to re-pin the artifact")
    folder = Path(store) / manifest.name
    dest = folder / f"{manifest.sha256}.onnx"
    if same_file_digest(dest, manifest.sha256, manifest.size) is not None:
        atomic_copy(Path(artifact), dest)
    for v in manifest.variants:  # each build under its own digest: a rollback finds that version's, not a later one's
        built = Path(artifact).parent / v.file
        problem = same_file_digest(built, v.sha256, v.size)
        if problem:
            raise EdgefleetError(
                str(built), f"refusing to publish the {v.kind} variant: {problem}", "build it again with `edgefleet model variant add`"
            )
        if same_file_digest(folder / f"{v.sha256}.onnx", v.sha256, v.size) is not None:
            atomic_copy(built, folder / f"{v.sha256}.onnx")
    manifest_path = folder / f"{manifest.sha256}.yaml"
    sig_path = folder / f"{manifest.sha256}.yaml.sig"
    manifest_bytes = manifest_text.encode()
    signature = None
    if sig_path.is_file() and manifest_path.is_file() and manifest_path.read_bytes() == manifest_bytes:
        try:
            verify_artifact(manifest_bytes, sig_path.read_bytes(), dest, load_public_key(signer.public_key_pem(), "signer"), source)
            signature = sig_path.read_bytes()
        except SignatureError:
            signature = None  # signed by an older key: sign again below
    if signature is None:
        signature = sign_bytes(signer, manifest_bytes).to_bytes()
        atomic_write_bytes(manifest_path, manifest_bytes)
        atomic_write_bytes(sig_path, signature)
    return Published(
        uri=dest.resolve().as_uri(),
        manifest_text=manifest_text,
        signature_text=signature.decode(),
        sha256=manifest.sha256,
        size=manifest.size,
        version=manifest.version,
        model=manifest.name,
        variants=published_variants(manifest, dest.resolve().as_uri()),
    )
