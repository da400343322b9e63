"""Update metadata (TUF) on the local fleet end to end: the local store is the stack's TUF repository, `edgefleet up`
publishes, refreshes and revokes, and every device (simulated and agent processes) checks the signed targets before
it installs. The attacks themselves, one per test, are in tests/agent/test_threat_model.py."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml

import components.local.up as up_module
from components.local.hub import LocalHub
from components.local.signer import create_key_file
from components.local.up import serve, up
from edgefleet.cli import main
from edgefleet.config import load_stack
from edgefleet.model_add import add_version, parse_metric
from edgefleet.status import fleet_status
from edgefleet.synth import synth
from edgefleet_agent.trust import NOT_A_TARGET

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"
METADATA = Path(".edgefleet") / "local" / "store" / "tuf" / "metadata"


def run(p: Path):
    [outcome] = up(p, "local", synth(p, "local"))
    return outcome


def add(p: Path, sample: str, version: str) -> None:
    add_version(p / "models" / "detector", SAMPLES / sample, version, metrics=[parse_metric("accuracy=0.95@eval", set())])


def hub(p: Path) -> LocalHub:
    return LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")


def reports(p: Path):
    return hub(p).reports("detector")


def with_trust(p: Path, **trust) -> None:
    path = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["edgefleet:trust"] = trust
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def cli(*args: str, capsys) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def run_fleet_until(p: Path, done, timeout: float = 60.0) -> None:
    """`edgefleet fleet run` in a thread until `done(reports)` holds for the hub's reports (or the timeout fails)."""
    cfg, source = load_stack(p, "local")
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve(p, "local", cfg, source, stop, tick_seconds=0.2)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not errors:
            if done(reports(p)):
                return
            time.sleep(0.3)
        raise AssertionError(
            f"condition not reached in {timeout}s: {errors or {d: (r.version, r.status, r.error) for d, r in reports(p).items()}}"
        )
    finally:
        stop.set()
        thread.join(timeout=60)


def replay(p: Path, desired_json: str) -> None:
    """The attack: a rejected version's old desired state written straight into the hub's rings and devices' tables."""
    db = sqlite3.connect(p / ".edgefleet" / "local" / "hub.sqlite")
    with db:
        now = time.time()
        db.execute("UPDATE ring_desired SET desired=?, set_at=?", (desired_json, now))
        db.execute("UPDATE desired SET desired=?, set_at=? WHERE model='detector'", (desired_json, now))
    db.close()


@pytest.mark.slow
def test_a_rejected_version_is_revoked_and_every_device_refuses_its_replayed_desired_state(project, capsys, monkeypatch):
    p = project(devices=20, processes=1)
    assert run(p).status == "succeeded"
    add(p, "detector-1.1.0.onnx", "1.1.0")
    assert run(p).status == "succeeded"
    add(p, "detector-1.2.0-nan.onnx", "1.2.0")
    kept: dict[str, bytes] = {}  # the metadata signed while 1.2.0 was a target, which an attacker could have kept
    real_revoke = up_module.revoke_rejected

    def keep_then_revoke(repo, progress):
        kept.setdefault("timestamp", (p / METADATA / "timestamp.json").read_bytes())
        kept.setdefault("targets", (p / METADATA / "targets.json").read_bytes())
        return real_revoke(repo, progress)

    monkeypatch.setattr(up_module, "revoke_rejected", keep_then_revoke)
    third = run(p)
    before, listed_targets = kept["timestamp"], json.loads(kept["targets"])
    assert third.status == "rolled_back" and hub(p).ever_served("detector", "1.2.0")

    code, out = cli("trust", "show", "--stack", "local", "--project-dir", str(p), "--json", capsys=capsys)
    state = json.loads(out)
    assert code == 0 and [r["version"] for r in state["revoked"].values()] == ["1.2.0"]
    assert sorted(i["version"] for i in state["targets"].values()) == ["1.0.0", "1.1.0"]
    assert "1.2.0" in json.dumps(listed_targets), "1.2.0 was a signed target while its rollout ran"

    # the attack: 1.2.0's old, validly signed desired state replayed into the rings and every device's row
    rejected = next(r for r in hub(p).rollouts("detector") if r["version"] == "1.2.0")["desired"]
    replay(p, rejected)
    run_fleet_until(p, lambda rs: len(rs) == 20 and all(r.status == "failed" and NOT_A_TARGET in (r.error or "") for r in rs.values()))
    assert {r.version for r in reports(p).values()} == {"1.1.0"}, "every device keeps serving 1.1.0"
    served = set(hub(p).ever_served("detector", "1.2.0"))
    canary = {d for s in hub(p).ring_states() if s["ring"] == "canary" for d in s["devices"]}
    assert served and served <= canary, "the replay made no device outside the canary serve 1.2.0"

    # status tells the truth: the rings say 1.2.0, no device runs it, and why
    rows = fleet_status(p, "local")
    assert all(r["desired"] == "1.2.0" and r["drift"] == r["devices"] for r in rows["rings"])
    assert any(NOT_A_TARGET in f for r in rows["rings"] for f in r["failures"])
    [declared] = rows["declared"]
    assert not declared["in_sync"] and declared["action"] == "refused" and "rolled back" in declared["next"]

    # edgefleet up refuses 1.2.0 and puts the rings back on the version they were rolled back to
    again = run(p)
    assert again.status == "previously-rolled-back" and "back on the version they were rolled back to" in again.problem
    assert {s["desired"].version for s in hub(p).ring_states()} == {"1.1.0"}

    # the attacker also rolls the channel's metadata back to before the revocation: refused as a rollback
    current = (p / METADATA / "timestamp.json").read_bytes()
    (p / METADATA / "timestamp.json").write_bytes(before)
    replay(p, rejected)
    run_fleet_until(p, lambda rs: sum("metadata rollback refused" in (r.error or "") for r in rs.values()) >= 5)
    (p / METADATA / "timestamp.json").write_bytes(current)

    # … or mixes the current snapshot with the older targets (that listed 1.2.0) under the name the snapshot pins
    snapshot = json.loads((p / METADATA / "snapshot.json").read_text())
    pinned = snapshot["signed"]["meta"]["targets.json"]["version"]
    shutil.copy(p / METADATA / f"{pinned}.targets.json", p / "pinned.bak")
    (p / METADATA / f"{pinned}.targets.json").write_text(json.dumps(listed_targets))
    # devices that already hold the current targets keep it (it matches the snapshot); new devices must fetch it: here
    # the simulated devices, whose one shared TUF cache (components/local/shared_trust.py) is wiped
    shutil.rmtree(p / ".edgefleet" / "local" / "devices" / ".simulated" / "detector" / "tuf")
    replay(p, rejected)
    run_fleet_until(p, lambda rs: all("mix-and-match refused" in (rs[d].error or "") for d in ("cam-0003", "cam-0004")))
    assert {r.version for r in reports(p).values()} == {"1.1.0"}


@pytest.mark.slow
def test_a_frozen_channel_is_reported_stale_while_devices_keep_serving_and_a_refresh_clears_it(project, capsys):
    p = project(devices=12, processes=1)
    with_trust(p, expiry_seconds={"timestamp": 4}, device_refresh_seconds=0.5)
    assert run(p).status == "succeeded"
    # nobody refreshes the timestamp: 4 seconds later every device says so, and serves on
    run_fleet_until(p, lambda rs: len(rs) == 12 and all((r.error or "").startswith("metadata stale since ") for r in rs.values()))
    assert {(r.version, r.status) for r in reports(p).values()} == {("1.0.0", "ok")}
    [error] = {r.error for r in reports(p).values() if r.device_id != "cam-0000"}  # (the agent process words it alike)
    assert "timestamp expired at" in error
    rows = fleet_status(p, "local")
    assert sum(r["stale"] for r in rows["rings"]) == 12, [(r["ring"], r["devices"], r["stale"], r["silent"]) for r in rows["rings"]] + [
        (d, (r.error or "")[:30]) for d, r in reports(p).items() if not (r.error or "").startswith("metadata stale")
    ]
    assert any("metadata stale since" in n for r in rows["rings"] for n in r["notices"])
    code, out = cli("status", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    assert code == 0 and "stale update metadata: metadata stale since" in out.replace("\n", " ")

    # the scheduled refresh (edgefleet trust refresh) re-signs the timestamp: devices notice within their refresh period
    with_trust(p, expiry_seconds={"timestamp": 3600}, device_refresh_seconds=0.5)
    code, out = cli("trust", "refresh", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    assert code == 0 and "re-signed timestamp" in out
    run_fleet_until(p, lambda rs: all(r.error is None and r.version == "1.0.0" for r in rs.values()))


@pytest.mark.slow
def test_a_root_rotation_signed_by_the_old_root_is_followed_without_losing_the_model(project, capsys):
    p = project(devices=12, processes=1)
    assert run(p).status == "succeeded"
    keys = p / ".edgefleet" / "keys"
    create_key_file(keys / "root-2.pem")
    code, out = cli(
        "trust", "rotate-root", "--stack", "local", "--project-dir", str(p), "--old", str(keys / "root.pem"), "--new",
        str(keys / "root-2.pem"), capsys=capsys,
    )  # fmt: skip
    assert code == 0 and "wrote root v2" in out, out
    with_trust(p, root_keys=[".edgefleet/keys/root-2.pem"])
    add(p, "detector-1.1.0.onnx", "1.1.0")
    assert run(p).status == "succeeded"
    assert {r.version for r in reports(p).values()} == {"1.1.0"}
    devices = p / ".edgefleet" / "local" / "devices"
    # each agent process keeps its own TUF cache; the simulated devices share one (components/local/shared_trust.py)
    caches = [devices / r["id"] / "detector" / "tuf" for r in hub(p).device_rows() if r["kind"] == "process"]
    caches.append(devices / ".simulated" / "detector" / "tuf")
    assert len(caches) == 2 and all((c / "root_history" / "2.root.json").is_file() for c in caches)
    assert (devices / "cam-0005" / "trusted-root.json").read_bytes() == (p / METADATA / "1.root.json").read_bytes(), (
        "the device's provisioned root is never replaced: it follows the chain"
    )
    # a rotation not signed by the current root is refused by the publisher
    create_key_file(keys / "stranger.pem")
    code, out = cli(
        "trust", "rotate-root", "--stack", "local", "--project-dir", str(p), "--old", str(keys / "stranger.pem"), "--new",
        str(keys / "stranger.pem"), capsys=capsys,
    )  # fmt: skip
    assert code == 1 and "not signed by the threshold of the previous root" in out


def test_up_refuses_to_start_without_the_stacks_root_key_and_says_how_to_make_it(project):
    p = project(devices=4, processes=0)
    (p / ".edgefleet" / "keys" / "root.pem").unlink()
    from edgefleet_agent.contract.errors import EdgefleetError

    with pytest.raises(EdgefleetError) as err:
        run(p)
    assert "edgefleet keys create --role root" in err.value.fix and not (p / METADATA).exists()
