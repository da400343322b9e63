"""The local stack's signer: a P-256 private key in a PEM file (also what CI and `edgefleet model sign` use).
Cloud stacks keep their keys in KMS or Key Vault (components/aws/signer.py, components/azure/signer.py)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import SignatureError, key_id_of


class LocalKeySigner:
    """A P-256 private key in a PEM file: the local stack's key, and CI's. Cloud stacks keep keys in KMS/Key Vault."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        except FileNotFoundError:
            raise SignatureError(
                str(self.path), "signing key file not found", f"create one with `edgefleet keys create {self.path}`"
            ) from None
        except (ValueError, TypeError) as exc:
            raise SignatureError(
                str(self.path),
                f"not an unencrypted PEM private key ({exc})",
                "pass the private key written by `edgefleet keys create PATH` (not its .pub.pem)",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SignatureError(str(self.path), "signing key is not ECDSA P-256", "create a P-256 key with `edgefleet keys create`")
        self._key = key

    @property
    def key_id(self) -> str:
        return key_id_of(self._key.public_key())

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_digest(self, digest: bytes) -> bytes:
        return self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def create_key_file(path: str | os.PathLike[str]) -> Path:
    """Writes a new P-256 key (mode 0600) and its public half beside it as <name>.pub.pem."""
    from edgefleet_agent.fsutil import atomic_write_bytes

    path = Path(path)
    for existing in (path, public_key_path(path)):
        if existing.exists():
            raise EdgefleetError(
                str(existing), "a key already exists here; refusing to overwrite it", "pick another path or delete the old key deliberately"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write_bytes(path, pem, mode=0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(public_key_path(path), pub)
    return path


def public_key_path(private_key_path: str | os.PathLike[str]) -> Path:
    p = Path(private_key_path)
    return p.with_name(p.name.removesuffix(".pem") + ".pub.pem")


def stack_signer(key_file: Path, stack: str) -> LocalKeySigner:
    """The stack's signing key, which must exist: a key is made only by `edgefleet keys create`, never on the side.
    A new key silently standing in for a lost one would be handed to every device as the key to trust, and every
    device would drop the model it verified under the old one."""
    if not Path(key_file).exists():
        raise EdgefleetError(
            str(key_file),
            f"the signing key of stack {stack!r} is missing; nothing was signed or deployed",
            f"a new stack: create it with `edgefleet keys create {key_file}`. A lost key: restore it from your backup; a new key "
            "is a key rotation, which devices refuse unless the old key signs it (docs/signing.md)",
        )
    return LocalKeySigner(key_file)
