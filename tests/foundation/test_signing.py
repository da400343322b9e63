"""`edgefleet keys create`, `model sign`, `model verify`: detached ECDSA P-256/SHA-256 over the manifest."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from components.local.signer import LocalKeySigner
from edgefleet.signing import sign_model_dir
from edgefleet_agent.contract.artifact import verify_artifact, verify_model_dir
from edgefleet_agent.contract.manifest import ModelDir
from edgefleet_agent.contract.signing import (
    ALGORITHM,
    SIGNATURE_FORMAT,
    Envelope,
    SignatureError,
    der_to_raw,
    load_public_key,
    parse_rollback_order,
    raw_to_der,
    rollback_order,
    sign_bytes,
    verify_bytes,
)

from .conftest import assert_user_error


def trusted(pub: Path) -> ec.EllipticCurvePublicKey:
    return load_public_key(pub.read_bytes(), str(pub))


@pytest.fixture
def signed_dir(detector_dir: Path, keypair) -> Path:
    sign_model_dir(ModelDir(detector_dir), LocalKeySigner(keypair[0]))
    return detector_dir


# -- keys ---------------------------------------------------------------------------------------------------------
def test_keys_create_writes_a_private_p256_key_0600_and_its_public_half(run_cli, tmp_path):
    key = tmp_path / "k" / "signing.pem"
    res = run_cli("keys", "create", key)
    assert res.code == 0
    assert f"wrote {key} (private, 0600) and {tmp_path / 'k' / 'signing.pub.pem'} (public)" in res.out_text
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1)
    public = trusted(tmp_path / "k" / "signing.pub.pem")
    assert public.public_numbers() == private.public_key().public_numbers()
    assert [p.name for p in (tmp_path / "k").iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_private_key_is_never_readable_by_others(tmp_path, monkeypatch):
    """The key file is created 0600; it is not written world-readable and chmod-ed afterwards."""
    import os

    from components.local.signer import create_key_file

    modes = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **k):
        if ".signing.pem.tmp-" in str(path):  # the private key's temporary file, before its rename
            modes.append(mode)
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", spy)
    create_key_file(tmp_path / "signing.pem")
    assert modes == [0o600]


def test_keys_create_refuses_to_overwrite(run_cli, keypair):
    key, _ = keypair
    before = key.read_bytes()
    assert_user_error(run_cli("keys", "create", key), f"{key}: a key already exists here; refusing to overwrite it")
    assert key.read_bytes() == before


def test_keys_create_refuses_to_overwrite_a_public_key_left_beside_it(run_cli, tmp_path):
    """The .pub.pem may be what devices already trust: replacing it would lock them out of every new model."""
    pub = tmp_path / "stack.pub.pem"
    pub.write_bytes(b"trusted by the fleet")
    assert_user_error(run_cli("keys", "create", tmp_path / "stack.pem"), f"{pub}: a key already exists here")
    assert pub.read_bytes() == b"trusted by the fleet" and not (tmp_path / "stack.pem").exists()


def test_a_path_that_cannot_be_written_is_an_error_naming_it_not_a_traceback(run_cli):
    res = run_cli("keys", "create", "/proc/edgefleet/stack.pem")
    assert_user_error(res, "/proc/edgefleet: No such file or directory", "fix: check the path exists")
    assert "Traceback" not in res.err_text


# -- sign and verify through the CLI -------------------------------------------------------------------------------
def test_sign_then_verify(run_cli, detector_dir, keypair):
    key, pub = keypair
    res = run_cli("model", "sign", detector_dir, "--key", key)
    assert res.code == 0 and f"wrote {detector_dir / 'model.yaml.sig'}" in res.out_text
    body = json.loads((detector_dir / "model.yaml.sig").read_text())
    assert body["format"] == SIGNATURE_FORMAT and body["algorithm"] == ALGORITHM == "ecdsa-p256-sha256"
    assert body["key_id"] == LocalKeySigner(key).key_id
    # A detached ECDSA P-256 / SHA-256 signature over exactly the manifest's bytes, checkable with plain `cryptography`.
    trusted(pub).verify(base64.b64decode(body["signature"]), (detector_dir / "model.yaml").read_bytes(), ec.ECDSA(hashes.SHA256()))
    res = run_cli("model", "verify", detector_dir, "--public-key", pub)
    assert res.code == 0, res.err
    assert "verified detector 1.0.0: signature by the given key" in res.out_text


def test_verify_with_another_key_fails(run_cli, signed_dir, keypair, other_keypair):
    res = run_cli("model", "verify", signed_dir, "--public-key", other_keypair[1])
    assert_user_error(
        res,
        f"{signed_dir / 'model.yaml'}: signed by key {LocalKeySigner(keypair[0]).key_id}, "
        f"but the trusted key is {LocalKeySigner(other_keypair[0]).key_id}",
    )


def test_signature_by_another_key_under_the_trusted_key_id_fails(signed_dir, keypair, other_keypair):
    """An attacker who copies the trusted key id into their own envelope still fails: the ECDSA check decides."""
    manifest = (signed_dir / "model.yaml").read_bytes()
    forged = Envelope(LocalKeySigner(keypair[0]).key_id, LocalKeySigner(other_keypair[0]).sign_digest(hashlib.sha256(manifest).digest()))
    (signed_dir / "model.yaml.sig").write_bytes(forged.to_bytes())
    with pytest.raises(SignatureError, match="signature does not match the content"):
        verify_model_dir(ModelDir(signed_dir), trusted(keypair[1]))


def test_verify_tampered_model(run_cli, signed_dir, keypair):
    art = signed_dir / "detector.onnx"
    data = bytearray(art.read_bytes())
    data[100] ^= 0x01
    art.write_bytes(bytes(data))
    assert_user_error(
        run_cli("model", "verify", signed_dir, "--public-key", keypair[1]),
        f"{signed_dir / 'model.yaml'}: artifact does not match the signed manifest: {art} has sha256",
        "fix: re-download the artifact",
    )


def test_verify_tampered_manifest(run_cli, signed_dir, keypair):
    path = signed_dir / "model.yaml"
    path.write_text(path.read_text().replace("memory_mb: 256", "memory_mb: 128"))
    assert_user_error(
        run_cli("model", "verify", signed_dir, "--public-key", keypair[1]),
        f"{path}: signature does not match the content (the manifest changed after signing",
    )


def test_verify_unsigned(run_cli, detector_dir, keypair):
    assert_user_error(
        run_cli("model", "verify", detector_dir, "--public-key", keypair[1]),
        f"{detector_dir / 'model.yaml.sig'}: no signature file",
        "edgefleet model sign",
    )


def test_verify_missing_and_wrong_public_key(run_cli, signed_dir, keypair, tmp_path):
    assert_user_error(
        run_cli("model", "verify", signed_dir, "--public-key", tmp_path / "nope.pem"), f"{tmp_path / 'nope.pem'}: public key file not found"
    )
    assert_user_error(run_cli("model", "verify", signed_dir, "--public-key", keypair[0]), f"{keypair[0]}: not a PEM public key")


def test_sign_with_missing_or_wrong_key(run_cli, detector_dir, keypair, tmp_path):
    assert_user_error(
        run_cli("model", "sign", detector_dir, "--key", tmp_path / "nope.pem"),
        f"{tmp_path / 'nope.pem'}: signing key file not found",
        f"edgefleet keys create {tmp_path / 'nope.pem'}",
    )
    assert_user_error(
        run_cli("model", "sign", detector_dir, "--key", keypair[1]), f"{keypair[1]}: not an unencrypted PEM private key", "not its .pub.pem"
    )
    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert_user_error(run_cli("model", "sign", detector_dir, "--key", ed), f"{ed}: signing key is not ECDSA P-256")
    p384 = tmp_path / "p384.pub.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert_user_error(run_cli("model", "verify", detector_dir, "--public-key", p384), f"{p384}: public key is not ECDSA P-256")


def test_sign_refuses_a_manifest_that_does_not_pin_its_artifact(run_cli, detector_dir, keypair):
    art = detector_dir / "detector.onnx"
    art.write_bytes(art.read_bytes()[:-1])
    assert_user_error(
        run_cli("model", "sign", detector_dir, "--key", keypair[0]),
        f"{detector_dir / 'model.yaml'}: refusing to sign: {art} is 2363 bytes but the manifest says 2364",
    )
    assert not (detector_dir / "model.yaml.sig").exists()


# -- property: any changed byte of model or manifest fails verification ------------------------------------------
def flip_positions(size: int, rng: random.Random, sample: int) -> list[int]:
    edges = {0, 1, size // 2, size - 2, size - 1}
    return sorted(edges | set(rng.sample(range(size), min(sample, size))))


@pytest.mark.parametrize("target", ["detector.onnx", "model.yaml"])
def test_any_flipped_byte_fails_verification(signed_dir, keypair, target):
    rng = random.Random(f"edgefleet-{target}")
    path = signed_dir / target
    original = path.read_bytes()
    key = trusted(keypair[1])
    assert verify_model_dir(ModelDir(signed_dir), key).version == "1.0.0"
    positions = flip_positions(len(original), rng, 60)
    for pos in positions:
        for mask in (0x01, 1 << rng.randrange(1, 8)):
            tampered = bytearray(original)
            tampered[pos] ^= mask
            path.write_bytes(bytes(tampered))
            with pytest.raises(SignatureError) as info:  # always a signature failure, never a parse error or success
                verify_model_dir(ModelDir(signed_dir), key)
            expected = "signature does not match the content" if target == "model.yaml" else "artifact does not match the signed manifest"
            assert expected in info.value.problem, (pos, mask, info.value)
    path.write_bytes(original)
    assert verify_model_dir(ModelDir(signed_dir), key).version == "1.0.0"


def test_appended_or_removed_bytes_fail_verification(signed_dir, keypair):
    key = trusted(keypair[1])
    for target in ("detector.onnx", "model.yaml"):
        path = signed_dir / target
        original = path.read_bytes()
        for tampered in (original + b"\n", original[:-1], b" " + original):
            path.write_bytes(tampered)
            with pytest.raises(SignatureError):
                verify_model_dir(ModelDir(signed_dir), key)
        path.write_bytes(original)


def test_any_flipped_byte_of_the_signature_fails(signed_dir, keypair):
    rng = random.Random(7)
    sig_path = signed_dir / "model.yaml.sig"
    original = sig_path.read_bytes()
    key = trusted(keypair[1])
    for pos in flip_positions(len(original), rng, 40):
        tampered = bytearray(original)
        tampered[pos] ^= 0x01
        sig_path.write_bytes(bytes(tampered))
        try:
            verify_model_dir(ModelDir(signed_dir), key)
        except SignatureError:
            continue
        # The only harmless flips are JSON whitespace/insignificant bytes that leave envelope and signature intact.
        assert Envelope.parse(bytes(tampered), "sig") == Envelope.parse(original, "sig"), pos


def test_device_side_verification_matches_the_cli(signed_dir, keypair):
    manifest = (signed_dir / "model.yaml").read_bytes()
    sig = (signed_dir / "model.yaml.sig").read_bytes()
    m = verify_artifact(manifest, sig, signed_dir / "detector.onnx", trusted(keypair[1]), "device")
    assert m.version == "1.0.0"
    with pytest.raises(SignatureError, match="artifact does not match the signed manifest"):
        verify_artifact(manifest, sig, signed_dir / "missing.onnx", trusted(keypair[1]), "device")


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"not json", "not an edgefleet signature file"),
        (b"[]", "not an edgefleet signature file"),
        (json.dumps({"format": "other/v1"}).encode(), "format is 'other/v1'"),
        (json.dumps({"format": SIGNATURE_FORMAT, "algorithm": "rsa"}).encode(), "algorithm is 'rsa'"),
        (
            json.dumps({"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": "k", "signature": "!!"}).encode(),
            "not an edgefleet signature file",
        ),
        (json.dumps({"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "signature": "AAAA"}).encode(), "'key_id'"),
    ],
)
def test_bad_signature_files(data, expected):
    with pytest.raises(SignatureError) as info:
        Envelope.parse(data, "x.sig")
    assert info.value.where == "x.sig" and expected in info.value.problem


def test_raw_and_der_signatures_convert_both_ways(keypair):
    signer = LocalKeySigner(keypair[0])
    env = sign_bytes(signer, b"payload")
    raw = der_to_raw(env.signature)
    assert len(raw) == 64 and raw_to_der(raw) == env.signature
    verify_bytes(b"payload", Envelope(env.key_id, raw_to_der(raw)), trusted(keypair[1]), "x")
    with pytest.raises(ValueError):
        raw_to_der(b"short")


def test_rollback_order_round_trip():
    data = rollback_order("detector", "1.0.0", "ab" * 32, "gate failed", "1.1.0", "cd" * 32)
    assert data == rollback_order("detector", "1.0.0", "ab" * 32, "gate failed", "1.1.0", "cd" * 32)  # canonical bytes
    assert parse_rollback_order(data, "x") == {
        "model": "detector",
        "version": "1.0.0",
        "sha256": "ab" * 32,
        "reason": "gate failed",
        "from_version": "1.1.0",
        "from_sha256": "cd" * 32,
    }
    with pytest.raises(SignatureError, match="not a rollback order"):
        parse_rollback_order(b'{"format": "nope"}', "x")


def test_signing_modules_do_not_import_pulumi_or_onnxruntime():
    import subprocess
    import sys

    code = (
        "import sys, edgefleet_agent.contract.artifact, edgefleet_agent.contract.digest, edgefleet_agent.contract.signing, "
        "edgefleet_agent.contract.manifest, edgefleet.signing; "
        "print(sorted(m for m in ('pulumi', 'onnxruntime', 'onnx', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_copied_model_dir_verifies(signed_dir, keypair, tmp_path):
    copy = shutil.copytree(signed_dir, tmp_path / "elsewhere" / "detector")
    assert verify_model_dir(ModelDir(copy), trusted(keypair[1])).sha256 == ModelDir(signed_dir).load().sha256
