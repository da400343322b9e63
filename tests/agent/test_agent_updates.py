"""What an operator sees when a device is handed good, tampered, foreign, old and broken models."""

from __future__ import annotations

import dataclasses
import itertools
import json

from agent_testkit import MODEL, artifact_bytes, copy_to

import edgefleet_agent.core
from edgefleet_agent import __version__
from edgefleet_agent.core import RETRY_FIRST_SECONDS


def pointer(agent_) -> dict:
    return json.loads((agent_.store.root / "current.json").read_text())


def sync_through(agent_, transport, *versions) -> None:
    """Points the agent at each desired model in turn, as a ring's successive deployments would."""
    for desired in versions:
        transport.desired_model = desired
        agent_.sync()


def test_good_update_is_served_and_reported(make_agent, transport, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v100
    assert agent_.sync() is True
    assert agent_.current_version == "1.0.0" and agent_.status == "ok"
    assert agent_.infer() is True

    transport.desired_model = v110
    assert agent_.sync() is True
    assert agent_.current_version == "1.1.0"
    assert agent_.sync() is False, "an installed desired state is a no-op"
    for _ in range(20):
        agent_.infer()
    agent_.report()
    report = transport.reports[-1]
    assert (report.device_id, report.model, report.version, report.sha256, report.status) == ("dev-1", MODEL, "1.1.0", v110.sha256, "ok")
    assert (report.error, report.failed_version) == (None, None)
    assert report.inferences == 20 and report.errors == 0 and report.invalid_outputs == 0
    assert report.p99_latency_ms is not None and report.p99_latency_ms > 0
    assert report.agent_version == __version__
    ptr = pointer(agent_)
    assert (ptr["current"]["version"], ptr["previous"]["version"]) == ("1.1.0", "1.0.0"), "the previous model is kept for rollback"
    slots = sorted(p.name for p in (agent_.store.root / "slots").iterdir())
    assert slots == sorted([ptr["current"]["slot"], ptr["previous"]["slot"]])
    for slot in slots:
        assert sorted(p.name for p in (agent_.store.root / "slots" / slot).iterdir()) == ["model.onnx", "model.yaml", "model.yaml.sig"]


def test_report_window_resets(make_agent, transport, v100):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    for _ in range(5):
        agent_.infer()
    first, second = agent_.build_report(), agent_.build_report()
    assert (first.inferences, second.inferences) == (5, 0)
    assert second.p99_latency_ms is None


def test_tampered_artifact_is_never_loaded(make_agent, transport, v100, v110, tmp_path, loads):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    data = bytearray(artifact_bytes(v110))
    data[len(data) // 2] ^= 0x01
    transport.desired_model = tampered = copy_to(v110, tmp_path / "tampered.onnx", bytes(data))
    assert agent_.sync() is True
    assert agent_.current_version == "1.0.0" and agent_.status == "failed"
    report = agent_.build_report()
    assert report.status == "failed" and report.version == "1.0.0" and report.failed_version == "1.1.0"
    assert report.error.startswith("sha256 mismatch: the downloaded artifact has sha256 ")
    assert report.error.endswith(f"the signed manifest pins {v110.sha256}")
    assert all(p.read_bytes() != bytes(data) for p in loads)
    assert len(loads) == 1, "only 1.0.0 was ever opened"
    assert not any(tampered.version in p.name for p in (agent_.store.root / "slots").iterdir())


def test_tampered_manifest_fails_its_signature(make_agent, transport, v110):
    agent_ = make_agent()
    transport.desired_model = dataclasses.replace(v110, manifest=v110.manifest.replace("description: ''", "description: 'x'"))
    assert v110.manifest != transport.desired_model.manifest
    agent_.sync()
    report = agent_.build_report()
    assert (report.status, report.version, report.failed_version) == ("failed", None, "1.1.0")
    assert report.error == (
        "signature does not verify: signature does not match the content (the manifest changed after signing, or the signature is corrupt)"
    )


def test_wrong_signing_key(make_agent, transport, publisher, keys):
    foreign = publisher.publish("1.1.0", "detector-1.1.0.onnx", signer=keys.other)
    agent_ = make_agent()
    transport.desired_model = foreign
    agent_.sync()
    report = agent_.build_report()
    assert report.status == "failed" and report.version is None
    assert report.error == (f"signature does not verify: signed by key {keys.other.key_id}, but the trusted key is {keys.signer.key_id}")


def test_desired_fields_must_match_the_signed_manifest(make_agent, transport, v100, v110):
    agent_ = make_agent()
    transport.desired_model = dataclasses.replace(v110, sha256=v100.sha256)
    agent_.sync()
    assert (
        agent_.build_report().error == f"desired state does not match its signed manifest: sha256 {v100.sha256!r} vs signed {v110.sha256!r}"
    )


def test_downgrade_without_rollback_order_is_refused(make_agent, transport, v100, v110):
    agent_ = make_agent()
    sync_through(agent_, transport, v110, v100)
    report = agent_.build_report()
    assert (report.status, report.version, report.failed_version) == ("failed", "1.1.0", "1.0.0")
    assert report.error == "downgrade from 1.1.0 to 1.0.0 refused: no signed rollback order"


def test_downgrade_with_signed_rollback_order_is_accepted(make_agent, transport, publisher, v100, v110, loads):
    agent_ = make_agent()
    sync_through(agent_, transport, v100, v110)
    transport.desired_model = publisher.rollback(v100, v110)
    assert agent_.sync() is True
    report = agent_.build_report()
    assert (report.status, report.version, report.sha256, report.error) == ("ok", "1.0.0", v100.sha256, None)
    assert pointer(agent_)["previous"]["version"] == "1.1.0"


def test_rollback_reuses_the_previous_slot_without_downloading(make_agent, transport, publisher, v100, v110, tmp_path):
    agent_ = make_agent()
    transport.desired_model = copy_to(v100, tmp_path / "gone.onnx")
    agent_.sync()
    transport.desired_model = v110
    agent_.sync()
    (tmp_path / "gone.onnx").unlink()
    transport.desired_model = publisher.rollback(dataclasses.replace(v100, uri=(tmp_path / "gone.onnx").as_uri()), v110)
    agent_.sync()
    assert (agent_.current_version, agent_.status) == ("1.0.0", "ok")


def test_rollback_order_signed_by_another_key_is_refused(make_agent, transport, publisher, keys, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    transport.desired_model = publisher.rollback(v100, v110, signer=keys.other)
    agent_.sync()
    report = agent_.build_report()
    assert (report.status, report.version, report.failed_version) == ("failed", "1.1.0", "1.0.0")
    assert report.error == (
        "downgrade from 1.1.0 to 1.0.0 refused: rollback order signature does not verify: "
        f"signed by key {keys.other.key_id}, but the trusted key is {keys.signer.key_id}"
    )


def test_rollback_order_naming_another_version_is_refused(make_agent, transport, publisher, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    transport.desired_model = publisher.rollback(v100, v110, version="0.9.0")
    agent_.sync()
    report = agent_.build_report()
    assert (report.status, report.version) == ("failed", "1.1.0")
    assert report.error == (
        f"downgrade from 1.1.0 to 1.0.0 refused: the signed rollback order names {MODEL} 0.9.0 "
        f"(sha256 {v100.sha256[:12]}…), not {MODEL} 1.0.0 (sha256 {v100.sha256[:12]}…)"
    )


def test_rollback_order_naming_another_digest_is_refused(make_agent, transport, publisher, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    transport.desired_model = publisher.rollback(v100, v110, sha256=v110.sha256)
    agent_.sync()
    assert agent_.build_report().error.startswith(
        f"downgrade from 1.1.0 to 1.0.0 refused: the signed rollback order names {MODEL} 1.0.0 (sha256 {v110.sha256[:12]}"
    )


def test_a_replayed_rollback_order_for_another_failed_version_is_refused(make_agent, transport, publisher, v100, v110):
    """An order that took devices off 1.2.0 must not take a device off 1.1.0 later: it names what it rolls back from."""
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    stale = dataclasses.replace(v110, version="1.2.0", sha256="ee" * 32)
    transport.desired_model = publisher.rollback(v100, stale)
    agent_.sync()
    report = agent_.build_report()
    assert (report.status, report.version) == ("failed", "1.1.0")
    assert report.error == (
        "downgrade from 1.1.0 to 1.0.0 refused: the signed rollback order moves devices off 1.2.0 "
        f"(sha256 {'ee' * 6}…), but this device runs 1.1.0 (sha256 {v110.sha256[:12]}…)"
    )


def test_same_version_with_another_artifact_is_refused(make_agent, transport, publisher, v110):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    transport.desired_model = impostor = publisher.publish("1.1.0", "detector-1.0.0.onnx")
    agent_.sync()
    assert (agent_.current_version, agent_.current_sha256) == ("1.1.0", v110.sha256)
    assert agent_.build_report().error == (
        f"replacing 1.1.0 (sha256 {v110.sha256[:12]}…) with a different 1.1.0 artifact refused: no signed rollback order"
    )
    assert impostor.sha256 != v110.sha256


def test_model_needing_a_newer_agent_is_refused(make_agent, transport, publisher):
    agent_ = make_agent()
    transport.desired_model = publisher.publish("3.0.0", "detector-1.1.0.onnx", min_agent_version="9.0.0")
    agent_.sync()
    assert agent_.build_report().error == f"{MODEL} 3.0.0 needs agent 9.0.0 or newer; this agent is {__version__}"


def test_truncated_download_is_refused_and_retried_with_backoff(make_agent, transport, v100, v110, tmp_path, clock, monkeypatch):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    short = tmp_path / "short.onnx"
    transport.desired_model = copy_to(v110, short, artifact_bytes(v110)[:1200])
    calls = []
    real = edgefleet_agent.core.download
    # (a device on 1.0.0 also looks for a patch beside the artifact first, docs/deltas.md: only artifact downloads count)
    monkeypatch.setattr(edgefleet_agent.core, "download", lambda *a, **k: (a[0] == short.as_uri() and calls.append(a)) or real(*a, **k))
    assert agent_.sync() is True
    report = agent_.build_report()
    assert (report.status, report.version, report.failed_version) == ("failed", "1.0.0", "1.1.0")
    assert report.error == f"download truncated: 1200 of {v110.size} bytes from {short.as_uri()}"
    assert not list(agent_.store.root.rglob("*.part")), "the partial download is removed"

    for _ in range(50):
        assert agent_.sync() is False
    assert len(calls) == 1, "no hot loop on a refused download"

    short.write_bytes(artifact_bytes(v110))
    clock.now += RETRY_FIRST_SECONDS + 0.1
    assert agent_.sync() is True
    assert (agent_.current_version, agent_.status, len(calls)) == ("1.1.0", "ok", 2)


def test_refusal_is_remembered_until_the_desired_state_changes(make_agent, transport, publisher, keys, v100, clock, monkeypatch):
    agent_ = make_agent()
    transport.desired_model = foreign = publisher.publish("1.1.0", "detector-1.1.0.onnx", signer=keys.other)
    verified = []
    real = edgefleet_agent.core.verify_bytes
    monkeypatch.setattr(edgefleet_agent.core, "verify_bytes", lambda *a: verified.append(a) or real(*a))
    assert agent_.sync() is True
    clock.now += 3600
    for _ in range(20):
        assert agent_.sync() is False
    assert len(verified) == 1 and agent_.status == "failed"

    transport.desired_model = v100
    assert agent_.sync() is True
    assert (agent_.current_version, agent_.status, agent_.build_report().error) == ("1.0.0", "ok", None)
    before = len(verified)
    transport.desired_model = foreign
    assert agent_.sync() is True
    assert len(verified) == before + 1, "a desired state that changed back is tried again"


def test_going_back_to_the_served_version_clears_the_failure(make_agent, transport, v100, v110):
    agent_ = make_agent()
    sync_through(agent_, transport, v110, v100)
    assert agent_.status == "failed"
    transport.desired_model = v110
    assert agent_.sync() is True
    assert (agent_.status, agent_.build_report().error) == ("ok", None)


def test_nan_model_is_served_and_reported_as_invalid_outputs(make_agent, transport, v100, v120_nan):
    agent_ = make_agent()
    sync_through(agent_, transport, v100, v120_nan)
    assert agent_.current_version == "1.2.0"
    for _ in range(10):
        assert agent_.infer() is True
    report = agent_.build_report()
    assert (report.status, report.version, report.inferences, report.errors, report.invalid_outputs) == ("ok", "1.2.0", 10, 0, 10)


def test_nan_model_is_refused_when_warmup_must_be_finite(make_agent, transport, v100, v120_nan):
    agent_ = make_agent(refuse_invalid_warmup=True)
    sync_through(agent_, transport, v100, v120_nan)
    report = agent_.build_report()
    assert (report.status, report.version, report.failed_version) == ("failed", "1.0.0", "1.2.0")
    assert report.error == f"warm-up inference of {MODEL} 1.2.0 produced NaN or infinite values in output(s) scores"
    assert [p.name.split("-")[0] for p in (agent_.store.root / "slots").iterdir()] == ["1.0.0"]


def test_unloadable_model_is_refused(make_agent, transport, publisher, v100, monkeypatch):
    import edgefleet_agent.serving

    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()

    def broken(path, providers):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed")

    monkeypatch.setattr(edgefleet_agent.serving, "open_session", broken)
    transport.desired_model = publisher.publish("1.1.1", "detector-1.1.0.onnx")
    agent_.sync()
    assert agent_.build_report().error == f"onnxruntime could not load {MODEL} 1.1.1: [ONNXRuntimeError] : 1 : FAIL : Load model failed"
    assert agent_.current_version == "1.0.0"


def test_desired_none_unloads_and_reports_idle(make_agent, transport, v100, tmp_path):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    transport.desired_model = None
    assert agent_.sync() is True
    assert agent_.infer() is False
    report = agent_.build_report()
    assert (report.status, report.version, report.sha256, report.inferences) == ("idle", None, None, 0)
    assert agent_.sync() is False
    agent_.close()

    restarted = make_agent()
    restarted.start()
    assert (restarted.current_version, restarted.status) == (None, "idle"), "an unload survives a restart"


def test_downgrade_is_refused_while_idle(make_agent, transport, v100, v110):
    agent_ = make_agent()
    sync_through(agent_, transport, v110, None)
    transport.desired_model = v100
    agent_.sync()
    assert agent_.build_report().error == "downgrade from 1.1.0 to 1.0.0 refused: no signed rollback order"
    transport.desired_model = v110
    agent_.sync()
    assert (agent_.current_version, agent_.status) == ("1.1.0", "ok")


def test_desired_state_for_another_model_is_refused(make_agent, transport, v100):
    agent_ = make_agent()
    transport.desired_model = dataclasses.replace(v100, model="classifier")
    agent_.sync()
    assert agent_.build_report().error == f"desired state names model 'classifier', but this agent serves {MODEL!r}"


def test_unreachable_hub_keeps_serving(make_agent, transport, v100):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()

    def down(device_id, model):
        raise ConnectionError("hub unreachable")

    transport.desired = down
    assert agent_.sync() is False
    assert (agent_.current_version, agent_.status, agent_.infer()) == ("1.0.0", "ok", True)


def test_http_artifact_is_downloaded(make_agent, transport, v110, http_store):
    agent_ = make_agent()
    transport.desired_model = dataclasses.replace(v110, uri=http_store.url("ok", artifact_bytes(v110)))
    agent_.sync()
    assert (agent_.current_version, agent_.status) == ("1.1.0", "ok")


def test_http_connection_dropped_is_refused(make_agent, transport, v110, http_store):
    agent_ = make_agent()
    uri = http_store.url("drop", artifact_bytes(v110)[:1000], claim=v110.size)
    transport.desired_model = dataclasses.replace(v110, uri=uri)
    agent_.sync()
    report = agent_.build_report()
    assert report.status == "failed"
    assert report.error.startswith(f"download truncated: 1000 of {v110.size} bytes from {uri}")


def test_download_retries_back_off(make_agent, transport, v110, tmp_path, clock, monkeypatch):
    agent_ = make_agent()
    transport.desired_model = copy_to(v110, tmp_path / "short.onnx", artifact_bytes(v110)[:10])
    calls = []
    real = edgefleet_agent.core.download
    monkeypatch.setattr(edgefleet_agent.core, "download", lambda *a, **k: calls.append(clock.now) or real(*a, **k))
    for _ in range(1300):
        agent_.sync()
        clock.now += 1
    gaps = [round(b - a) for a, b in itertools.pairwise(calls)]
    assert gaps[:6] == [5, 10, 20, 40, 80, 160] and set(gaps[6:]) == {300}
    assert agent_.status == "failed"
