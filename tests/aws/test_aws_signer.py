"""KmsSigner: signs with KMS (Sign, MessageType=DIGEST, ECDSA_SHA_256) and devices verify with edgefleet's verifier."""

from __future__ import annotations

import hashlib

import boto3
import pytest
from aws_testkit import PROJECT, REGION
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto import mock_aws

from components.aws.signer import KmsSigner
from edgefleet_agent.contract.signing import Envelope, SignatureError, Signer, key_id_of, load_public_key, sign_bytes, verify_bytes

KEY_ARN = f"arn:aws:kms:{REGION}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MANIFEST = (PROJECT / "models/detector/model.yaml").read_bytes()


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_key_response(key) -> dict:
    return {
        "KeyId": KEY_ARN,
        "PublicKey": _der(key),
        "KeySpec": "ECC_NIST_P256",
        "CustomerMasterKeySpec": "ECC_NIST_P256",
        "KeyUsage": "SIGN_VERIFY",
        "SigningAlgorithms": ["ECDSA_SHA_256"],
    }


def _kms(aws_env):
    return boto3.client("kms", region_name=REGION)


def test_real_kms_path_signs_the_digest_and_edgefleet_verifies_it(aws_env):
    """What real KMS returns for MessageType=DIGEST: a DER ECDSA signature over exactly the 32 bytes it was given."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(MANIFEST).digest()
    kms = _kms(aws_env)
    with Stubber(kms) as stub:
        stub.add_response("get_public_key", _public_key_response(key), {"KeyId": KEY_ARN})
        stub.add_response(
            "sign",
            {"KeyId": KEY_ARN, "SigningAlgorithm": "ECDSA_SHA_256", "Signature": key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))},
            {"KeyId": KEY_ARN, "Message": digest, "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256"},
        )
        signer = KmsSigner(KEY_ARN, REGION, client=kms)
        assert isinstance(signer, Signer)
        envelope = sign_bytes(signer, MANIFEST)
        stub.assert_no_pending_responses()
    trusted = load_public_key(signer.public_key_pem(), "kms public key")
    assert envelope.key_id == key_id_of(key.public_key()) == signer.key_id
    verify_bytes(MANIFEST, Envelope.parse(envelope.to_bytes(), "sig"), trusted, "model.yaml")  # raises if it does not verify
    with pytest.raises(SignatureError):
        verify_bytes(MANIFEST + b"\n# tampered", envelope, trusted, "model.yaml")


def test_a_signature_over_the_hash_of_the_digest_is_refused_at_publish_time(aws_env):
    """What a RAW-mode sign (or moto, see below) returns: ECDSA over sha256(digest). Devices would reject it, so
    the signer refuses to hand it out."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(MANIFEST).digest()
    kms = _kms(aws_env)
    with Stubber(kms) as stub:
        stub.add_response("get_public_key", _public_key_response(key), {"KeyId": KEY_ARN})
        stub.add_response(
            "sign", {"KeyId": KEY_ARN, "SigningAlgorithm": "ECDSA_SHA_256", "Signature": key.sign(digest, ec.ECDSA(hashes.SHA256()))}, None
        )
        with pytest.raises(SignatureError, match="does not verify over the digest"):
            KmsSigner(KEY_ARN, REGION, client=kms).sign_digest(digest)


def test_a_key_that_is_not_p256_sign_verify_is_refused(aws_env):
    kms = _kms(aws_env)
    with Stubber(kms) as stub:
        rsa_like = dict(_public_key_response(ec.generate_private_key(ec.SECP256R1())), KeySpec="RSA_2048", CustomerMasterKeySpec="RSA_2048")
        stub.add_response("get_public_key", rsa_like, {"KeyId": KEY_ARN})
        with pytest.raises(SignatureError, match="not ECC_NIST_P256/SIGN_VERIFY"):
            KmsSigner(KEY_ARN, REGION, client=kms).public_key_pem()


def test_sign_digest_takes_a_sha256_digest_only():
    with pytest.raises(ValueError, match="32-byte"):
        KmsSigner(KEY_ARN, REGION, client=object()).sign_digest(b"not a digest")


@mock_aws
def test_moto_public_key_matches_and_its_digest_gap_is_caught(aws_env):
    """moto's KMS implements GetPublicKey faithfully but ignores MessageType=DIGEST: it signs sha256(message).
    The signer's self-check turns that into a clear error instead of a signature no device would accept;
    the verifier is not bent to moto (the moto signature verifies only over the hash of the digest)."""
    kms = boto3.client("kms", region_name=REGION)
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    signer = KmsSigner(key_id, REGION)
    moto_der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    assert (
        load_public_key(signer.public_key_pem(), "moto").public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == moto_der
    )
    digest = hashlib.sha256(MANIFEST).digest()
    with pytest.raises(SignatureError, match="emulators such as moto"):
        signer.sign_digest(digest)
    # the moto gap, shown directly: its signature is over sha256(digest), i.e. it treated the digest as a raw message
    raw = kms.sign(KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    public = serialization.load_der_public_key(moto_der)
    public.verify(raw, digest, ec.ECDSA(hashes.SHA256()))
