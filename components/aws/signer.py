"""A `Signer` whose P-256 key never leaves AWS KMS: Sign with MessageType=DIGEST, public key via GetPublicKey.

edgefleet signs SHA-256 digests (signing.sign_bytes hashes the payload once), so KMS must be told the
message *is* the digest; with MessageType=RAW it would hash it again and devices would reject every
signature. Each signature is checked against the public key before it is returned, so a KMS (or an emulator)
that signs something else fails here, at publish time, instead of on every device.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet_agent.contract.signing import SignatureError, key_id_of, require_digest, signs_digest

KEY_SPEC = "ECC_NIST_P256"
ALGORITHM = "ECDSA_SHA_256"


class KmsSigner:
    """`kms_key`: key id, key ARN or alias of an ECC_NIST_P256 / SIGN_VERIFY key. Builds its client lazily
    (no credentials captured), so it can live in a dynamic provider's inputs."""

    def __init__(self, kms_key: str, region: str | None = None, client: Any = None) -> None:
        self.kms_key = kms_key
        self.region = region
        self._client = client
        self._public: ec.EllipticCurvePublicKey | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("kms", region_name=self.region)
        return self._client

    def _public_key(self) -> ec.EllipticCurvePublicKey:
        if self._public is None:
            resp = self.client.get_public_key(KeyId=self.kms_key)
            spec = resp.get("KeySpec") or resp.get("CustomerMasterKeySpec")  # the latter is the deprecated name
            if spec != KEY_SPEC or resp.get("KeyUsage") != "SIGN_VERIFY":
                raise SignatureError(
                    self.kms_key,
                    f"KMS key is {spec}/{resp.get('KeyUsage')}, not {KEY_SPEC}/SIGN_VERIFY",
                    "use the stack's signing key (edgefleet declares it with those settings)",
                )
            if ALGORITHM not in resp.get("SigningAlgorithms", [ALGORITHM]):
                raise SignatureError(self.kms_key, f"KMS key does not offer {ALGORITHM}", "use an ECC_NIST_P256 key")
            key = serialization.load_der_public_key(resp["PublicKey"])
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
                raise SignatureError(self.kms_key, "KMS returned a public key that is not P-256")
            self._public = key
        return self._public

    @property
    def key_id(self) -> str:
        """edgefleet's key id (sha256 of the public key), what envelopes carry and devices compare."""
        return key_id_of(self._public_key())

    def public_key_pem(self) -> bytes:
        return self._public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_digest(self, digest: bytes) -> bytes:
        require_digest(digest)
        public = self._public_key()  # refuses a key of the wrong kind before anything is signed
        resp = self.client.sign(KeyId=self.kms_key, Message=digest, MessageType="DIGEST", SigningAlgorithm=ALGORITHM)
        signature = resp["Signature"]
        if not signs_digest(public, signature, digest):
            raise SignatureError(
                self.kms_key,
                "KMS returned a signature that does not verify over the digest it was given "
                "(did the signer hash the digest again, ignoring MessageType=DIGEST?)",
                "sign with real AWS KMS; emulators such as moto do not implement MessageType=DIGEST",
            )
        return signature
