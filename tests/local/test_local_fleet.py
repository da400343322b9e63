"""The local platform end to end: synth -> publish -> engine -> real agents (simulated and processes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import components.local.up as up_module
from components.local.hub import LocalHub
from components.local.signer import create_key_file
from components.local.up import up
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import EdgefleetError

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


def run(project_dir: Path, **kw):
    [outcome] = up(project_dir, "local", synth(project_dir, "local"), **kw)
    return outcome


def add(project_dir: Path, sample: str, version: str) -> None:
    add_version(project_dir / "models" / "detector", SAMPLES / sample, version, metrics=[parse_metric("accuracy=0.95@eval", set())])


def hub(project_dir: Path) -> LocalHub:
    return LocalHub(project_dir / ".edgefleet" / "local" / "hub.sqlite")


def reported_versions(project_dir: Path) -> dict[str, str | None]:
    return {d: r.version for d, r in hub(project_dir).reports("detector").items()}


def ring_devices(project_dir: Path, ring: str) -> set[str]:
    return {d for s in hub(project_dir).ring_states() if s["ring"] == ring for d in s["devices"]}


@pytest.mark.slow
def test_good_versions_reach_every_device_and_a_nan_model_never_leaves_the_canary(project):
    p = project()
    first = run(p)
    assert (first.status, first.from_version, first.to_version) == ("succeeded", None, "1.0.0")
    assert set(reported_versions(p).values()) == {"1.0.0"} and len(reported_versions(p)) == 40

    add(p, "detector-1.1.0.onnx", "1.1.0")
    second = run(p)
    assert (second.status, second.from_version) == ("succeeded", "1.0.0")
    versions = reported_versions(p)
    assert set(versions.values()) == {"1.1.0"}, versions
    assert {d for d in versions if d in ("cam-0000", "cam-0001")} == {"cam-0000", "cam-0001"}, "agent processes must report too"

    add(p, "detector-1.2.0-nan.onnx", "1.2.0")
    third = run(p)
    assert third.status == "rolled_back"
    report = third.progress["report"]
    assert report["failed_ring"] == "canary" and report["never_deployed"] == ["early", "broad"]
    assert any("invalid (NaN/Inf) outputs" in r for r in report["reasons"])
    served_bad = set(hub(p).ever_served("detector", "1.2.0"))
    assert served_bad and served_bad <= ring_devices(p, "canary"), "a device outside the canary served the bad model"
    assert set(reported_versions(p).values()) == {"1.1.0"}, "the canary was not restored"

    again = run(p)
    assert again.status == "previously-rolled-back", "a rolled-back version must not be retried silently"


@pytest.mark.slow
def test_running_up_again_with_nothing_changed_is_a_no_op(project):
    p = project(devices=12, processes=0)
    assert run(p).status == "succeeded"
    fleets = []
    again = run(p, on_fleet=fleets.append)
    assert again.status == "up-to-date"
    assert fleets == [], "no fleet should start when there is nothing to roll out"


def _corrupting_publish(monkeypatch, corrupt):
    real = up_module.publish

    def publish(store, manifest_text, artifact, signer, source):
        published = real(store, manifest_text, artifact, signer, source)
        corrupt(Path(published.uri.removeprefix("file://")))
        return published

    monkeypatch.setattr(up_module, "publish", publish)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt, reason", [(flip_one_byte, "sha256"), (truncate, "truncated")], ids=["one-flipped-byte", "truncated-download"]
)
def test_a_corrupted_artifact_is_never_loaded_reported_and_halts_the_rollout(project, monkeypatch, corrupt, reason):
    p = project(devices=20, processes=1)
    assert run(p).status == "succeeded"
    add(p, "detector-1.1.0.onnx", "1.1.0")
    _corrupting_publish(monkeypatch, corrupt)
    outcome = run(p)
    assert outcome.status == "rolled_back"
    report = outcome.progress["report"]
    assert report["failed_ring"] == "canary" and report["never_deployed"] == ["early", "broad"]
    assert report["failures"] and all(reason in why for _, why in report["failures"]), report["failures"]
    assert hub(p).ever_served("detector", "1.1.0") == []
    assert set(reported_versions(p).values()) == {"1.0.0"}


@pytest.mark.slow
def test_a_model_signed_by_another_key_is_refused_by_every_canary_device(project, monkeypatch, tmp_path):
    p = project(devices=20, processes=1)
    other = create_key_file(tmp_path / "intruder.pem")
    real_signer_for = up_module.signer_for
    trusted = real_signer_for

    from components.local.signer import LocalKeySigner

    monkeypatch.setattr(up_module, "signer_for", lambda cfg, d, stack="local": LocalKeySigner(other))  # a key devices do not trust
    real_fleet = up_module.LocalFleet

    def fleet(cfg, hub_path, state_root, public_key_pem, models, **kw):
        return real_fleet(cfg, hub_path, state_root, trusted(cfg, p).public_key_pem(), models, **kw)

    monkeypatch.setattr(up_module, "LocalFleet", fleet)
    outcome = run(p)
    assert outcome.status == "rolled_back"
    failures = outcome.progress["report"]["failures"]
    assert failures and all("signed by key" in why for _, why in failures), failures
    assert hub(p).ever_served("detector", "1.0.0") == []


@pytest.mark.slow
def test_a_downgrade_without_a_rollback_order_is_refused(project, monkeypatch):
    """A declared older version goes out under a signed rollback order (test_declared.py); a controller that
    sent one without it (a bug, or a tampered hub) is refused by every device it reaches."""
    p = project(devices=20, processes=1)
    add(p, "detector-1.1.0.onnx", "1.1.0")  # the copy starts at 1.0.0; make 1.1.0 the running version
    assert run(p).status == "succeeded"
    manifest = p / "models" / "detector" / "model.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.1.0", "version: 1.0.9"))
    real_plan_for = up_module.plan_for

    def unsigned(*args):
        plan = real_plan_for(*args)
        return dataclasses.replace(plan, desired=dataclasses.replace(plan.desired, rollback_order=None, rollback_signature=None))

    monkeypatch.setattr(up_module, "plan_for", unsigned)
    outcome = run(p)
    assert outcome.status == "rolled_back"
    failures = outcome.progress["report"]["failures"]
    assert failures and all("downgrade from 1.1.0 to 1.0.9 refused: no signed rollback order" in why for _, why in failures), failures
    assert set(reported_versions(p).values()) == {"1.1.0"}
    assert hub(p).ever_served("detector", "1.0.9") == []


@pytest.mark.slow
def test_an_agent_process_killed_mid_rollout_comes_back_serving_a_verified_model(project):
    p = project(devices=20, processes=2)
    assert run(p).status == "succeeded"
    add(p, "detector-1.1.0.onnx", "1.1.0")
    killed = []

    def on_fleet(fleet):
        import threading

        def kill():
            for device, model in sorted(fleet.processes()):
                fleet.kill_process(device, model)
                killed.append(device)
                fleet.start_process(device, model)

        threading.Timer(0.8, kill).start()

    outcome = run(p, on_fleet=on_fleet)
    assert killed == ["cam-0000", "cam-0001"]
    assert outcome.status == "succeeded"
    versions = reported_versions(p)
    assert versions["cam-0000"] == versions["cam-0001"] == "1.1.0"


@pytest.mark.slow
def test_offline_devices_are_pending_then_catch_up_when_they_reconnect(project):
    p = project(devices=20, processes=0, offline=3, reconnect=2.0)
    outcome = run(p)
    assert outcome.status == "succeeded"
    assert set(reported_versions(p).values()) == {"1.0.0"} and len(reported_versions(p)) == 20
    assert outcome.progress["report"]["outcome"] == "succeeded"
    assert not any(e["event"] == "gate-failed" for e in outcome.progress["events"])


def test_up_refuses_a_cloud_stack_and_points_at_pulumi(project):
    import yaml

    from edgefleet_agent.contract.errors import EdgefleetError

    p = project()
    doc = yaml.safe_load((p / "stacks" / "Pulumi.local.yaml").read_text())
    cfg = doc["config"]
    cfg["edgefleet:platforms"] = ["aws"]
    del cfg["edgefleet:local"]
    cfg["edgefleet:aws"] = {"region": "eu-west-1", "rings": {"canary": {"devices": 4}, "early": {"devices": 12}, "broad": {"devices": 24}}}
    for ring in cfg["edgefleet:rollouts"][0]["rings"]:
        del ring["percent"]
        ring["labels"] = {"ring": ring["name"]}
    (p / "stacks" / "Pulumi.cloud.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(EdgefleetError) as err:
        up(p, "cloud", synth(p, "cloud"))
    assert "stacks/Pulumi.cloud.yaml" in str(err.value)
    assert "edgefleet up drives the local platform; this stack targets aws" in str(err.value)
    assert "pulumi up --stack cloud" in str(err.value)


def test_a_lost_signing_key_is_an_error_never_a_new_key_handed_to_the_devices(project):
    """The attack (or accident): the key file is gone. `up` once made a new key, gave it to every device as the key to
    trust, and every device dropped the model it had verified. Now nothing is created, signed or deployed."""
    p = project()
    assert run(p).status == "succeeded"
    key = p / ".edgefleet" / "keys" / "signing.pem"
    before = {d: r.version for d, r in hub(p).reports("detector").items()}
    key.unlink()
    add(p, "detector-1.1.0.onnx", "1.1.0")
    with pytest.raises(EdgefleetError) as err:
        run(p)
    assert str(err.value).startswith(f"{key}: the signing key of stack 'local' is missing; nothing was signed or deployed")
    assert "edgefleet keys create" in str(err.value) and "restore it from your backup" in str(err.value)
    assert not key.exists(), "no key was made on the side"
    assert {d: r.version for d, r in hub(p).reports("detector").items()} == before
    assert {s["desired"].version for s in hub(p).ring_states()} == {"1.0.0"}, "no ring was pointed at anything new"
