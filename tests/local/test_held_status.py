"""`edgefleet status` on the local hub shows, per ring, the devices whose swap waits (a closed maintenance window, an
application's deferral) and why, grouped by reason: a ring stuck at "3 of 10 adopted" says what the other 7 wait for.
The reports are written into the hub as agents write them; agents setting `deferred` are tested in tests/agent."""

from __future__ import annotations

import dataclasses
import json

from test_declared import cli, hub, run

from edgefleet.status import fleet_status
from edgefleet_agent.contract.state import DEFERRED_BY_APPLICATION, DeviceReport, outside_window

WINDOW = outside_window("02:00-04:00 daily, Europe/Berlin")


def ring(doc: dict, name: str) -> dict:
    [row] = [r for r in doc["rings"] if r["ring"] == name]
    return row


def hold(p, devices: list[str], reason: str | None) -> None:
    h = hub(p)
    latest = h.reports("detector", devices)
    h.put_reports([dataclasses.replace(latest[d], deferred=reason) for d in devices])


def test_held_devices_show_per_ring_with_their_reason_and_stop_showing_once_released(project, capsys):
    p = project(devices=12, processes=0, soak=0.5)
    assert run(p).status == "succeeded"
    broad = next(s["devices"] for s in hub(p).ring_states() if s["ring"] == "broad")
    assert len(broad) >= 7
    hold(p, broad[:5], WINDOW)
    hold(p, broad[5:7], DEFERRED_BY_APPLICATION)

    doc = fleet_status(p, "local")
    row = ring(doc, "broad")
    assert (row["held"], row["held_reasons"]) == (7, {WINDOW: 5, DEFERRED_BY_APPLICATION: 2})
    assert ring(doc, "canary")["held"] == 0 and ring(doc, "canary")["held_reasons"] == {}
    code, out = cli("status", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    text = " ".join(out.split())
    assert code == 0 and f"detector/broad: 5 held: {WINDOW}" in text and f"detector/broad: 2 held: {DEFERRED_BY_APPLICATION}" in text
    code, out = cli("status", "--stack", "local", "--project-dir", str(p), "--json", capsys=capsys)
    assert code == 0 and ring(json.loads(out), "broad")["held_reasons"] == {WINDOW: 5, DEFERRED_BY_APPLICATION: 2}

    hold(p, broad[:7], None)
    row = ring(fleet_status(p, "local"), "broad")
    assert (row["held"], row["held_reasons"]) == (0, {})
    code, out = cli("status", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    assert code == 0 and "held" not in out


def test_a_report_from_an_agent_without_the_field_reads_as_not_held_and_none_is_not_written():
    old = '{"device_id": "cam-1", "model": "detector", "version": "1.0.0", "sha256": null, "status": "ok"}'
    assert DeviceReport.from_json(old).deferred is None
    report = DeviceReport("cam-1", "detector", "1.0.0", None, "ok")
    assert "deferred" not in json.loads(report.to_json()), "an older reader gets the bytes it always read"
    held = dataclasses.replace(report, deferred=WINDOW)
    assert DeviceReport.from_json(held.to_json()).deferred == WINDOW
