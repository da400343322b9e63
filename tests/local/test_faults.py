"""Faults end in a clear state: a message naming the cause and the fix, a documented exit code (5: a fault of the
environment, 1: bad input), JSON from `up --json` whatever happened, and nothing half done.

Found before: a hub locked for 45 s crashed `up` with sqlite3.OperationalError (exit 1, the bad-input code); a damaged
hub printed tracebacks with no way out; a device that could not write its rollback (full disk) stayed on the failed
version unnamed; `status` said "in sync" while devices ran other versions.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgefleet_agent.contract.localhub as localhub
from components.local.hub import LocalHub
from components.local.up import declared_state, up
from edgefleet.cli import EXIT_FAULT, EXIT_ROLLOUT_HALTED, main
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.state import DeviceReport
from edgefleet_agent.store import SlotStore

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"
HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("holding", flush=True)
time.sleep(60)
"""


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def hub_path(p: Path) -> Path:
    return p / ".edgefleet" / "local" / "hub.sqlite"


def first_rollout(p: Path) -> None:
    [outcome] = up(p, "local", synth(p, "local"))
    assert outcome.status == "succeeded"


def test_a_hub_locked_past_the_wait_exits_5_with_json_naming_who_holds_it(project, capsys, monkeypatch):
    p = project(devices=6, processes=0, soak=0.2)
    first_rollout(p)
    monkeypatch.setattr(localhub, "BUSY_SECONDS", 1.0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(hub_path(p))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        code, out, err = cli(capsys, "up", "--stack", "local", "--json", "--project-dir", str(p))
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert code == EXIT_FAULT, err
    body = json.loads(out)["error"]
    assert body["exit_code"] == EXIT_FAULT and body["where"] == str(hub_path(p))
    assert "the hub stayed locked for 1s" in body["problem"] and f"pid {holder.pid}" in body["problem"]
    assert "nothing was changed" in body["fix"] and waited >= 1.0
    assert "Traceback" not in out + err


def test_a_damaged_hub_is_named_with_the_command_that_rebuilds_it_and_that_command_keeps_the_records(project, capsys):
    p = project(devices=6, processes=0, soak=0.2)
    subprocess.run([sys.executable, "-m", "edgefleet", "up", "--stack", "local", "--project-dir", str(p)], check=True, capture_output=True)
    path = hub_path(p)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself
    db.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header's tail and the schema page: a damaged file
    path.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    code, out, err = cli(capsys, "up", "--stack", "local", "--project-dir", str(p))
    assert code == EXIT_FAULT and "Traceback" not in err
    text = " ".join(err.split())
    assert "the hub database is damaged" in text and f"edgefleet hub recover --hub {path}" in text

    code, out, err = cli(capsys, "hub", "recover", "--stack", "local", "--project-dir", str(p))
    assert code == 0, err
    assert "moved the damaged hub to" in out and list(path.parent.glob("hub.sqlite.damaged-*"))
    again, out, err = cli(capsys, "up", "--stack", "local", "--project-dir", str(p))
    assert again == 0 and "Traceback" not in err


def test_a_fresh_but_unreadable_hub_file_is_named_too(project, capsys):
    p = project(devices=6, processes=0)
    hub_path(p).parent.mkdir(parents=True, exist_ok=True)
    hub_path(p).write_bytes(b"this is not a database" * 200)
    code, out, _ = cli(capsys, "up", "--stack", "local", "--json", "--project-dir", str(p))
    body = json.loads(out)["error"]
    assert code == EXIT_FAULT == body["exit_code"] and "the hub database is damaged" in body["problem"]
    assert "edgefleet hub recover --hub" in body["fix"]


def test_status_says_in_sync_only_when_every_device_runs_the_declared_version(project):
    p = project(devices=6, processes=0, soak=0.2)
    first_rollout(p)
    [state] = declared_state(p, "local", synth(p, "local"))
    assert state["in_sync"] and state["next"].startswith("in sync: every ring is set to 1.0.0 and all 6 devices run it")
    hub = LocalHub(hub_path(p))
    some = sorted(hub.reports("detector"))[0]
    hub.put_report(DeviceReport(device_id=some, model="detector", version=None, sha256=None, status="failed", error="boom"))
    [state] = declared_state(p, "local", synth(p, "local"))
    assert not state["in_sync"]
    assert "every ring is set to 1.0.0, but not every device runs it: 1 run nothing×1" in state["next"]


@pytest.mark.slow
def test_devices_that_cannot_write_the_rollback_are_named_and_the_rollout_ends_incomplete(project, monkeypatch):
    """A full disk on some devices: they cannot record the rollback, keep serving the failed version, and say so; the
    rollout ends rollback_incomplete, its report names them with the disk's error, and `up` exits with the halt code."""
    p = project(devices=20, processes=0, soak=0.3, deadline=6)
    first_rollout(p)
    add_version(p / "models" / "detector", SAMPLES / "detector-1.2.0-nan.onnx", "1.2.0", metrics=[parse_metric("accuracy=0.9@eval", set())])
    canary = sorted(s["devices"] for s in LocalHub(hub_path(p)).ring_states() if s["ring"] == "canary")[0]
    full = set(canary[:1])
    real = SlotStore.write_pointer

    def write_pointer(self, pointer):
        device = self.root.parent.name
        if device in full and pointer.current is not None and pointer.current.version == "1.0.0":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.pointer_path))
        return real(self, pointer)

    monkeypatch.setattr(SlotStore, "write_pointer", write_pointer)
    [outcome] = up(p, "local", synth(p, "local"))
    assert outcome.status == "rollback_incomplete"
    unconfirmed = outcome.progress["report"]["unconfirmed"]["canary"]
    named = {d: why for d, why in unconfirmed["failures"]}
    assert set(named) == full and all("No space left on device" in why for why in named.values())
    from components.rollout.report import failure_summary

    assert f"Devices that did not confirm the rollback: ring canary: {next(iter(full))}: " in failure_summary(outcome.progress)
    assert EXIT_ROLLOUT_HALTED == 3
