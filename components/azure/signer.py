"""A `Signer` whose private key never leaves Azure Key Vault: ES256 over the digest, via Key Vault's REST API.

Key Vault answers `sign` with the raw 64-byte r||s (JWS form); the edgefleet envelope stores DER like KMS, so
the result goes through `raw_to_der`, and is verified against the key's public half before it is returned (a
wrong key version or curve fails here, not on a device). Devices get the public key through `public_key_pem`.

Credentials: anything with `get_token(scope)` (azure-identity's credentials have it). By default
`DefaultAzureCredential` is built on first use, inside the deploying process; nothing is captured at import.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components.azure import rest
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import SignatureError, key_id_of, raw_to_der, require_digest, signs_digest

API_VERSION = "7.4"
SCOPE = "https://vault.azure.net/.default"

FIXES = {
    401: "sign in (`az login`) or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for the deploying identity",
    403: "grant the deploying identity 'Key Vault Crypto User' on the vault (edgefleet declares it; new role assignments take a few minutes)",
    404: "the key or key version does not exist: check the stack's Key Vault key (keyUriWithVersion)",
}


class KeyVaultError(EdgefleetError):
    """Key Vault refused a request. `code` is the most specific code it sent (the inner error's, such as
    ForbiddenByRbac, when there is one), so callers can tell a role still propagating from a real refusal."""

    def __init__(self, where: str, problem: str, fix: str | None = None, status: int | None = None, code: str | None = None) -> None:
        super().__init__(where, problem, fix)
        self.status = status
        self.code = code


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def default_credential() -> Any:
    from azure.identity import DefaultAzureCredential  # deploy-time dependency, see docs/azure.md

    return DefaultAzureCredential()


class KeyVaultSigner:
    """ECDSA P-256 signatures by a Key Vault key. `key_url` is the key's id, ideally with its version."""

    def __init__(self, key_url: str, credential: Any = None, policy: rest.RetryPolicy | None = None) -> None:
        parts = urllib.parse.urlsplit(key_url)
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme not in ("https", "http") or len(segments) not in (2, 3) or segments[0] != "keys":
            raise EdgefleetError(
                key_url, "not a Key Vault key id", "use the key's id: https://<vault>.vault.azure.net/keys/<name>/<version>"
            )
        self.key_url = key_url.rstrip("/")
        self._credential = credential
        self._policy = policy or rest.RetryPolicy()
        self._public: ec.EllipticCurvePublicKey | None = None

    def __repr__(self) -> str:
        return f"KeyVaultSigner({self.key_url!r})"

    def _headers(self) -> dict[str, str]:
        if self._credential is None:
            self._credential = default_credential()
        return {"Authorization": f"Bearer {self._credential.get_token(SCOPE).token}"}

    def _call(self, method: str, suffix: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.key_url}{suffix}?api-version={API_VERSION}"
        try:
            resp = rest.send(method, url, self._headers, body, policy=self._policy)
        except rest.TransportError as e:
            raise EdgefleetError(f"Key Vault key {self.key_url}", str(e), "Key Vault is throttling or unreachable; retry later") from None
        if resp.status != 200:
            try:
                err = (resp.json() or {}).get("error") or {}
            except (ValueError, AttributeError):
                err = {}
            err = err if isinstance(err, dict) else {}
            msg = err.get("message") or resp.body.decode(errors="replace")[:300]
            code = (err.get("innererror") or {}).get("code") or err.get("code") or ""
            codes = " ".join(dict.fromkeys(c for c in (err.get("code"), code) if c))
            raise KeyVaultError(
                f"Key Vault key {self.key_url}",
                f"HTTP {resp.status}{' ' + codes if codes else ''}: {msg}",
                FIXES.get(resp.status),
                resp.status,
                code or None,
            )
        return resp.json()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        if self._public is None:
            jwk = self._call("GET", "")["key"]
            if jwk.get("kty") not in ("EC", "EC-HSM") or jwk.get("crv") != "P-256":
                raise SignatureError(
                    f"Key Vault key {self.key_url}",
                    f"key is {jwk.get('kty')} {jwk.get('crv')}, not EC P-256",
                    "create the signing key with kty EC and curve P-256",
                )
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(unb64url(jwk["x"]), "big"), int.from_bytes(unb64url(jwk["y"]), "big"), ec.SECP256R1()
            )
            self._public = numbers.public_key()
        return self._public

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key())

    def public_key_pem(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_digest(self, digest: bytes) -> bytes:
        require_digest(digest)
        raw = unb64url(self._call("POST", "/sign", {"alg": "ES256", "value": b64url(digest)})["value"])
        der = raw_to_der(raw)
        if not signs_digest(self.public_key(), der, digest):
            raise SignatureError(
                f"Key Vault key {self.key_url}",
                "Key Vault's signature does not verify with the key's public half",
                "pin the key version (keyUriWithVersion) so signing and the published public key agree",
            )
        return der
