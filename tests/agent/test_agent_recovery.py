"""Restarts: what the agent serves after its state directory was left in any shape."""

from __future__ import annotations

import json
import shutil

import pytest
from agent_testkit import MODEL, FakeTransport

import edgefleet_agent.core
from edgefleet_agent.store import StoreError


@pytest.fixture
def installed(make_agent, transport, v100, v110, tmp_path):
    """A state directory that served 1.0.0 then 1.1.0, and was stopped cleanly."""
    first = make_agent()
    transport.desired_model = v100
    first.sync()
    transport.desired_model = v110
    first.sync()
    first.close()
    ptr = json.loads((tmp_path / "state" / MODEL / "current.json").read_text())
    slots = tmp_path / "state" / MODEL / "slots"
    return slots / ptr["current"]["slot"], slots / ptr["previous"]["slot"]


def restart(make_agent):
    agent_ = make_agent(transport=FakeTransport())
    agent_.start()
    return agent_


def test_restart_reverifies_before_serving(make_agent, installed, monkeypatch, loads):
    current, _ = installed
    verified = []
    real = edgefleet_agent.core.verify_artifact
    monkeypatch.setattr(edgefleet_agent.core, "verify_artifact", lambda m, s, path, *a: verified.append(path) or real(m, s, path, *a))
    agent_ = restart(make_agent)
    assert (agent_.current_version, agent_.status) == ("1.1.0", "ok")
    assert verified == [current / "model.onnx"] and loads == [current / "model.onnx"]
    assert agent_.infer() is True
    assert agent_.build_report().error is None


@pytest.mark.parametrize(
    "damage", ["flip a byte", "truncate", "delete the signature", "re-sign with another key", "swap in the other version"]
)
def test_corrupt_current_slot_falls_back_to_previous(make_agent, installed, loads, damage, keys):
    current, previous = installed
    model = current / "model.onnx"
    if damage == "flip a byte":
        data = bytearray(model.read_bytes())
        data[100] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "delete the signature":
        (current / "model.yaml.sig").unlink()
    elif damage == "re-sign with another key":
        from edgefleet_agent.contract.signing import sign_bytes

        (current / "model.yaml.sig").write_bytes(sign_bytes(keys.other, (current / "model.yaml").read_bytes()).to_bytes())
    else:
        for name in ("model.onnx", "model.yaml", "model.yaml.sig"):
            shutil.copy(previous / name, current / name)
    agent_ = restart(make_agent)
    assert (agent_.current_version, agent_.status) == ("1.0.0", "ok")
    assert loads == [previous / "model.onnx"], "the damaged slot is never opened by onnxruntime"
    report = agent_.build_report()
    assert report.version == "1.0.0"
    assert report.error.startswith(f"at start: slot failed verification: 1.1.0 ({current.name}): ")
    assert report.error.endswith("; serving previous 1.0.0")
    assert not current.exists(), "the damaged slot is removed"
    ptr = json.loads((agent_.store.root / "current.json").read_text())
    assert (ptr["current"]["version"], ptr["previous"]) == ("1.0.0", None)


def test_damage_reasons_are_specific(make_agent, installed):
    current, _ = installed
    (current / "model.onnx").write_bytes((current / "model.onnx").read_bytes()[:1000])
    report = restart(make_agent).build_report()
    assert f"slot {current.name} does not verify: artifact does not match the signed manifest: " in report.error
    assert "is 1000 bytes but the manifest says 2364 (truncated or replaced file)" in report.error


def test_corrupt_current_slot_heals_on_next_sync(make_agent, installed, transport, v110):
    current, _ = installed
    (current / "model.onnx").write_bytes(b"\0" * 2364)
    agent_ = make_agent()
    agent_.start()
    assert agent_.current_version == "1.0.0"
    transport.desired_model = v110
    assert agent_.sync() is True
    assert (agent_.current_version, agent_.status, agent_.build_report().error) == ("1.1.0", "ok", None)


def test_both_slots_corrupt_serves_nothing(make_agent, installed, loads, transport, v110):
    for slot in installed:
        (slot / "model.onnx").write_bytes(b"not a model")
    agent_ = make_agent()
    agent_.start()
    assert (agent_.current_version, agent_.status, agent_.infer()) == (None, "idle", False)
    assert loads == []
    report = agent_.build_report()
    assert report.version is None and report.error.endswith("; serving nothing")
    transport.desired_model = v110
    agent_.sync()
    assert agent_.current_version == "1.1.0"


def test_leftovers_of_an_interrupted_install_are_removed(make_agent, installed, tmp_path):
    state = tmp_path / "state" / MODEL
    (state / "downloads").mkdir(exist_ok=True)
    (state / "downloads" / "1.2.0-abc.part").write_bytes(b"partial")
    (state / "slots" / ".tmp-1.2.0-abc").mkdir()
    (state / "slots" / ".tmp-1.2.0-abc" / "model.onnx").write_bytes(b"partial")
    (state / "slots" / "1.2.0-unreferenced").mkdir()
    (state / ".current.json.tmp").write_text("{")
    agent_ = restart(make_agent)
    assert agent_.current_version == "1.1.0"
    assert sorted(p.name for p in (state / "slots").iterdir()) == sorted(p.name for p in installed)
    assert not any((state / "downloads").iterdir()) and not (state / ".current.json.tmp").exists()


def test_unreadable_pointer_serves_nothing_and_keeps_slots(make_agent, installed, tmp_path, transport, v110):
    (tmp_path / "state" / MODEL / "current.json").write_text("{not json")
    agent_ = make_agent()
    agent_.start()
    assert (agent_.current_version, agent_.status) == (None, "idle")
    assert agent_.build_report().error.startswith("at start: ") and "unreadable pointer" in agent_.build_report().error
    assert all(p.exists() for p in installed)
    transport.desired_model = v110
    agent_.sync()
    assert agent_.current_version == "1.1.0"


def test_pointer_for_another_model_is_not_served(make_agent, installed, tmp_path):
    ptr_path = tmp_path / "state" / MODEL / "current.json"
    ptr = json.loads(ptr_path.read_text())
    ptr["model"] = "classifier"
    ptr_path.write_text(json.dumps(ptr))
    agent_ = restart(make_agent)
    assert agent_.current_version is None


def test_one_agent_per_state_directory(make_agent, installed):
    restart(make_agent)
    with pytest.raises(StoreError, match="another agent is using this state directory"):
        restart(make_agent)


def test_start_is_idempotent(make_agent, installed, loads):
    agent_ = restart(make_agent)
    agent_.start()
    assert len(loads) == 1 and agent_.current_version == "1.1.0"


def test_fresh_state_directory_is_idle(make_agent):
    agent_ = restart(make_agent)
    assert (agent_.current_version, agent_.status) == (None, "idle")
    report = agent_.build_report()
    assert (report.model, report.version, report.status, report.error) == (MODEL, None, "idle", None)


def test_two_models_share_a_device_state_directory(make_agent, tmp_path, keys, v100, v110):
    from edgefleet_agent.core import DeviceAgent

    detector = make_agent(transport=FakeTransport(v110))
    other = DeviceAgent("dev-1", "classifier", tmp_path / "state", keys.pem, FakeTransport(None))
    try:
        detector.sync()
        other.sync()
        assert (detector.current_version, other.status) == ("1.1.0", "idle")
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["classifier", MODEL]
    finally:
        other.close()
