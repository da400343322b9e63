"""On a fresh stack the deployer's new role assignments take minutes to reach Key Vault and Storage: the providers
that run right after them wait out the documented "not propagated yet" 403s, for a bounded time, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure_testkit import FakeKeyVault, StaticToken

from components.azure import rbac
from components.azure.providers import SigningPublicKeyProvider, publish_artifact, read_public_key
from components.azure.signer import KeyVaultSigner
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import load_public_key

REPO = Path(__file__).resolve().parents[2]
SHA = "de6313948e98ba28a0087916ca93f9bcb594a0eee60e35670d696b304ed3b7bc"


@pytest.fixture
def vault():
    v = FakeKeyVault()
    yield v
    v.stop()


def storage_error(code: str, status: int = 403) -> HttpResponseError:
    """What azure-storage-blob raises: HttpResponseError with the x-ms-error-code as `error_code`."""
    err = HttpResponseError(message=f"This request is not authorized to perform this operation using this permission.\nErrorCode:{code}")
    err.status_code, err.error_code = status, code
    return err


class FlakyContainer:
    """A model store that refuses the first `refusals` listings, as Storage does until the role assignment applies."""

    def __init__(self, refusals: int, code: str = "AuthorizationPermissionMismatch") -> None:
        self.refusals, self.code = refusals, code
        self.blobs: dict[str, tuple[bytes, dict]] = {}
        self.uploads: list[str] = []

    def list_blobs(self, name_starts_with="", include=None):
        from types import SimpleNamespace

        if self.refusals:
            self.refusals -= 1
            raise storage_error(self.code)
        return [SimpleNamespace(name=n, metadata=m) for n, (_, m) in sorted(self.blobs.items()) if n.startswith(name_starts_with)]

    def upload_blob(self, name, data, overwrite=False, metadata=None, **_):
        self.blobs[name] = (data.read() if hasattr(data, "read") else bytes(data), dict(metadata or {}))
        self.uploads.append(name)

    def download_blob(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(readall=lambda: self.blobs[name][0])


def artifact_props() -> dict:
    return {
        "source": str(REPO / "models" / "detector" / "detector.onnx"),
        "model": "detector",
        "version": "1.0.0",
        "sha256": SHA,
        "size": 2364,
        "manifest": (REPO / "models" / "detector" / "model.yaml").read_text(),
        "blob_endpoint": "https://efdev.blob.core.windows.net/",
        "container": "models",
        "key_url": "unused",
    }


def test_the_public_key_is_read_once_key_vault_stops_answering_forbidden_by_rbac(vault, rbac_waits):
    vault.forbidden = 3
    out = read_public_key({"key_url": vault.kid}, signer=KeyVaultSigner(vault.kid, credential=StaticToken()))
    assert out["public_key_pem"].encode() == vault.public_pem() and out["key_id"].startswith("sha256:")
    assert len(rbac_waits) == 3 and vault.requests == 4
    assert all(0 < w <= 60 for w in rbac_waits)


def test_the_provider_itself_waits_on_create_and_keeps_its_outputs_on_update(vault, rbac_waits, monkeypatch):
    from components.azure import signer

    monkeypatch.setattr(signer, "default_credential", StaticToken)
    vault.forbidden = 2
    created = SigningPublicKeyProvider().create({"key_url": vault.kid, "provider_version": "1"})
    assert created.outs["public_key_pem"].encode() == vault.public_pem() and len(rbac_waits) == 2
    news = {"key_url": vault.kid, "key_id": None, "public_key_pem": None, "provider_version": "2"}
    assert not SigningPublicKeyProvider().diff(created.id, created.outs, news).replaces
    updated = SigningPublicKeyProvider().update(created.id, created.outs, news)
    assert updated.outs["key_id"] == created.outs["key_id"] == created.id


def test_a_role_that_never_arrives_fails_after_the_bounded_wait_naming_the_role_and_the_fix(vault, rbac_waits):
    vault.forbidden = 10_000
    with pytest.raises(EdgefleetError) as e:
        read_public_key({"key_url": vault.kid}, signer=KeyVaultSigner(vault.kid, credential=StaticToken()))
    text = str(e.value)
    assert vault.kid in text and "ForbiddenByRbac" in text and "after waiting 600s" in text
    assert "Key Vault Crypto User" in text and "pulumi up" in text and rbac.ENV in text
    assert sum(rbac_waits) == pytest.approx(600.0) and len(rbac_waits) < 40  # backoff, not a busy loop


def test_the_wait_is_configurable_and_zero_turns_it_off(vault, rbac_waits, monkeypatch):
    monkeypatch.setenv(rbac.ENV, "0")
    vault.forbidden = 1
    with pytest.raises(EdgefleetError, match="after waiting 0s"):
        read_public_key({"key_url": vault.kid}, signer=KeyVaultSigner(vault.kid, credential=StaticToken()))
    assert rbac_waits == []
    monkeypatch.setenv(rbac.ENV, "ten minutes")
    with pytest.raises(EdgefleetError, match=rbac.ENV):
        rbac.PropagationWait.from_env()


@pytest.mark.parametrize("code", ["ForbiddenByFirewall", "ForbiddenByPolicy"])
def test_other_key_vault_refusals_fail_at_once(vault, rbac_waits, code):
    vault.forbidden, vault.forbidden_code = 1, code
    with pytest.raises(EdgefleetError) as e:
        read_public_key({"key_url": vault.kid}, signer=KeyVaultSigner(vault.kid, credential=StaticToken()))
    assert code in str(e.value) and rbac_waits == [] and vault.requests == 1


def test_publishing_waits_for_storage_and_key_vault_roles_and_uploads_once(vault, rbac_waits):
    box = FlakyContainer(refusals=2)
    vault.forbidden = 2  # then Key Vault, when it comes to signing
    signer = KeyVaultSigner(vault.kid, credential=StaticToken())
    out = publish_artifact(artifact_props(), signer=signer, container=box)
    assert len(rbac_waits) == 4
    assert box.uploads.count(f"detector/{SHA}.onnx") == 1 and box.uploads.count(f"detector/{SHA}.yaml.sig") == 1
    from edgefleet_agent.contract.artifact import verify_artifact

    verify_artifact(
        box.blobs[f"detector/{SHA}.yaml"][0],
        out["signature"].encode(),
        REPO / "models" / "detector" / "detector.onnx",
        load_public_key(vault.public_pem(), "vault"),
        "store",
    )


def test_a_storage_refusal_that_is_not_propagation_fails_at_once(vault, rbac_waits):
    box = FlakyContainer(refusals=1, code="AuthorizationFailure")  # e.g. the account's firewall
    with pytest.raises(HttpResponseError, match="AuthorizationFailure"):
        publish_artifact(artifact_props(), signer=KeyVaultSigner(vault.kid, credential=StaticToken()), container=box)
    assert rbac_waits == [] and box.uploads == []


def test_only_documented_propagation_codes_on_a_403_count():
    assert rbac.pending_code(storage_error("AuthorizationPermissionMismatch")) == "AuthorizationPermissionMismatch"
    assert rbac.pending_code(storage_error("AuthorizationPermissionMismatch", status=409)) is None
    assert rbac.pending_code(storage_error("AuthorizationFailure")) is None
    assert rbac.pending_code(ValueError("403 ForbiddenByRbac")) is None
