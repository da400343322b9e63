"""Signing a model directory (`edgefleet model sign`) with any Signer: the local key file
(components/local/signer.py), AWS KMS or Azure Key Vault (each platform's signer.py). The envelope and the
verification devices make are the device contract's (edgefleet_agent/contract/signing.py).
"""

from __future__ import annotations

from pathlib import Path

from edgefleet_agent.contract.digest import same_file_digest
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelDir
from edgefleet_agent.contract.signing import Signer, sign_bytes
from edgefleet_agent.fsutil import atomic_write_bytes


def sign_model_dir(model_dir: ModelDir, signer: Signer) -> Path:
    """Signs the manifest after checking it pins the artifact next to it, then writes model.yaml.sig."""
    manifest_bytes = model_dir.manifest_bytes()
    manifest = model_dir.load()
    problem = same_file_digest(model_dir.artifact_path(manifest), manifest.sha256, manifest.size)
    if problem:
        raise EdgefleetError(
            str(model_dir.manifest_path),
            f"refusing to sign: {problem}",
            f"run `edgefleet model add {model_dir.path} --onnx FILE --version X.Y.Z` to re-pin the artifact",
        )
    envelope = sign_bytes(signer, manifest_bytes)
    atomic_write_bytes(model_dir.signature_path, envelope.to_bytes())
    return model_dir.signature_path
