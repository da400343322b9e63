"""edgefleet's signers (a key file, AWS KMS, Azure Key Vault) as securesystemslib `Signer`s, for TUF metadata.

The scheme stays ECDSA P-256 with SHA-256 (TUF's `ecdsa-sha2-nistp256`, DER signatures in hex), and the key never
leaves its holder: securesystemslib hands `sign` the canonical JSON bytes, this adapter hashes them once and asks
the wrapped edgefleet `Signer` to sign the digest, exactly as for model manifests. Why not securesystemslib's own
cloud signers: its `AWSSigner` asks KMS for `MessageType=DIGEST`, as ours does, but cannot be handed a client (so no
moto in tests) and does not check the signature KMS returned; its `AzureSigner` brings azure-keyvault-keys and an auth
flow the project's Key Vault fake does not speak. Ours verify what the service returned before it is published.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import Key, Signature, SSlibKey
from securesystemslib.signer import Signer as SslibSigner

from edgefleet_agent.contract.signing import Signer

SCHEME = "ecdsa-sha2-nistp256"


def tuf_key(public_key_pem: bytes) -> SSlibKey:
    """The TUF key of a P-256 public key: keytype ecdsa, scheme ecdsa-sha2-nistp256, keyid TUF's default (the sha256
    of the key's canonical JSON, not edgefleet's sha256 of the DER key)."""
    return SSlibKey.from_crypto(serialization.load_pem_public_key(public_key_pem), scheme=SCHEME)


class MetadataSigner(SslibSigner):
    """A securesystemslib Signer over an edgefleet Signer (LocalKeySigner, KmsSigner, KeyVaultSigner)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self._key = tuf_key(signer.public_key_pem())

    @property
    def public_key(self) -> Key:
        return self._key

    def sign(self, payload: bytes) -> Signature:
        der = self.signer.sign_digest(hashlib.sha256(payload).digest())
        return Signature(self._key.keyid, der.hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None) -> "MetadataSigner":
        raise NotImplementedError("build a MetadataSigner from an edgefleet Signer (components/<platform>/signer.py)")
