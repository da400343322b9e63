"""Detached ECDSA P-256 / SHA-256 signatures over model manifests and rollback orders: the envelope, the
rollback order's bytes, and the one verification devices make. Producing signatures (key files, KMS, Key
Vault) is the controller's: edgefleet/signing.py and each cloud's signer.

One scheme for every platform: AWS KMS (ECC_NIST_P256, ECDSA_SHA_256) and Azure Key Vault (P-256, ES256)
both sign a SHA-256 digest with it, so the device carries one verifier whatever cloud published the model.
The manifest pins the model's sha256 and size, so a signature over the manifest's exact bytes covers the
model file as well; verification re-hashes the file.

A signature file is a small JSON envelope:
    {"format": "edgefleet-signature/v1", "algorithm": "ecdsa-p256-sha256",
     "key_id": "sha256:<hex of the public key's DER SubjectPublicKeyInfo>", "signature": "<base64 DER>"}

Why not the OpenSSF model-signing format: its signers take a key file or a Sigstore identity; keys that
never leave KMS or Key Vault would need a custom signer on our side and the Sigstore stack on every
device. This envelope needs only `cryptography` on the device. docs/signing.md has the whole contract.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature

from edgefleet_agent.contract.errors import EdgefleetError

SIGNATURE_FORMAT = "edgefleet-signature/v1"
ROLLBACK_FORMAT = "edgefleet-rollback/v1"
ALGORITHM = "ecdsa-p256-sha256"


class SignatureError(EdgefleetError):
    """A signature that does not verify. Never recoverable by retrying."""


def key_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(source, f"not a PEM public key ({exc})", "pass the .pub.pem written by `edgefleet keys create`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignatureError(source, "public key is not ECDSA P-256", "use a P-256 (secp256r1) key")
    return key


def raw_to_der(raw: bytes) -> bytes:
    """Key Vault returns r||s (64 bytes); the envelope stores DER like KMS does."""
    if len(raw) != 64:
        raise ValueError(f"expected a 64-byte r||s signature, got {len(raw)} bytes")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def der_to_raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@runtime_checkable
class Signer(Protocol):
    """Anything that holds a P-256 key and signs SHA-256 digests with it without showing the key."""

    @property
    def key_id(self) -> str: ...

    def public_key_pem(self) -> bytes: ...

    def sign_digest(self, digest: bytes) -> bytes:
        """Returns a DER-encoded ECDSA signature over a 32-byte SHA-256 digest."""
        ...


def standin_public_key_pem() -> str:
    """A PEM the size and shape of a P-256 public key, for checks that must build what a deployment will carry
    before the stack's key exists (Key Vault and KMS create it at `pulumi up`)."""
    body = base64.b64encode(bytes(91)).decode()  # the size of a DER P-256 SubjectPublicKeyInfo
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(body[i : i + 64] for i in range(0, len(body), 64)) + "\n-----END PUBLIC KEY-----\n"


@dataclass(frozen=True)
class Envelope:
    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        body = {
            "format": SIGNATURE_FORMAT,
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> "Envelope":
        try:
            body = json.loads(data)
            if body.get("format") != SIGNATURE_FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {SIGNATURE_FORMAT!r}")
            if body.get("algorithm") != ALGORITHM:
                raise ValueError(f"algorithm is {body.get('algorithm')!r}, expected {ALGORITHM!r}")
            return cls(key_id=str(body["key_id"]), signature=base64.b64decode(body["signature"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SignatureError(source, f"not an edgefleet signature file ({exc})", "re-sign with `edgefleet model sign`") from None


def require_digest(digest: bytes) -> None:
    """What every `Signer.sign_digest` is handed: a SHA-256 digest, never the payload."""
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError(f"expected a 32-byte SHA-256 digest, got {len(digest)} bytes")


def signs_digest(public: ec.EllipticCurvePublicKey, signature: bytes, digest: bytes) -> bool:
    """Whether `signature` (DER) is ECDSA P-256 over exactly this SHA-256 digest: the one check devices make, and
    the one the cloud signers make on what their service returned."""
    try:
        public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def sign_bytes(signer: Signer, payload: bytes) -> Envelope:
    return Envelope(key_id=signer.key_id, signature=signer.sign_digest(hashlib.sha256(payload).digest()))


def verify_bytes(payload: bytes, envelope: Envelope, trusted: ec.EllipticCurvePublicKey, source: str) -> None:
    """Raises SignatureError unless `envelope` is a signature over exactly `payload` by `trusted`."""
    want = key_id_of(trusted)
    if envelope.key_id != want:
        raise SignatureError(
            source,
            f"signed by key {envelope.key_id}, but the trusted key is {want}",
            "sign with the stack's signing key, or give the device the matching public key",
        )
    if not signs_digest(trusted, envelope.signature, hashlib.sha256(payload).digest()):
        raise SignatureError(
            source,
            "signature does not match the content (the manifest changed after signing, or the signature is corrupt)",
            "re-sign the manifest with `edgefleet model sign`, or restore the signed manifest",
        )


def rollback_order(model: str, version: str, sha256: str, reason: str, from_version: str, from_sha256: str) -> bytes:
    """The exact bytes a rollback order signs: the one case where a device may accept a lower version.

    It names both ends, so it only moves a device off the version that failed: replayed later, on a device
    that has since moved on, it no longer matches what that device runs and is refused."""
    body = {
        "format": ROLLBACK_FORMAT,
        "model": model,
        "version": version,
        "sha256": sha256,
        "reason": reason,
        "from_version": from_version,
        "from_sha256": from_sha256,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_rollback_order(data: bytes, source: str) -> dict[str, str]:
    try:
        body = json.loads(data)
        if body.get("format") != ROLLBACK_FORMAT:
            raise ValueError(f"format is {body.get('format')!r}")
        return {k: str(body[k]) for k in ("model", "version", "sha256", "reason", "from_version", "from_sha256")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(source, f"not a rollback order ({exc})") from None
