"""The local hub: one SQLite file holding the device registry, desired and reported state, and rollout records.

It plays IoT Hub / Greengrass for the local platform: the engine drives it through the FleetHub methods,
agents (threads of the simulator or separate processes) read their desired state and write reports.
WAL mode lets one writer and many readers share the file across processes; every write is one short
transaction, so a process killed mid-write leaves the previous state intact.
No Pulumi imports: agent processes load this module.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from components.rollout.membership import Device
from components.rollout.types import DesiredModel, DeviceReport, RingObservation, RingTarget

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, arch TEXT NOT NULL, providers TEXT NOT NULL,
    kind TEXT NOT NULL, registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS desired (
    device_id TEXT NOT NULL, model TEXT NOT NULL, desired TEXT, set_at REAL NOT NULL,
    PRIMARY KEY (device_id, model));
CREATE TABLE IF NOT EXISTS ring_desired (
    rollout TEXT NOT NULL, ring TEXT NOT NULL, idx INTEGER NOT NULL, model TEXT NOT NULL, desired TEXT, devices TEXT NOT NULL, set_at REAL NOT NULL,
    PRIMARY KEY (rollout, ring));
CREATE TABLE IF NOT EXISTS reports (
    device_id TEXT NOT NULL, model TEXT NOT NULL, report TEXT NOT NULL, reported_at REAL NOT NULL,
    PRIMARY KEY (device_id, model));
CREATE TABLE IF NOT EXISTS served (
    device_id TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (device_id, model, sha256));
CREATE TABLE IF NOT EXISTS progress (
    rollout_id TEXT PRIMARY KEY, rollout TEXT NOT NULL, status TEXT NOT NULL, progress TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    urn TEXT PRIMARY KEY, type TEXT NOT NULL, outputs TEXT NOT NULL, updated_at REAL NOT NULL);
"""


class LocalHub:
    def __init__(self, path: str | Path, clock=time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._local = threading.local()
        self._db().executescript(SCHEMA)              # idempotent; executescript manages its own transaction

    # -- connection -----------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def now(self) -> float:
        return self._clock()

    # -- device registry ------------------------------------------------------------------------------
    def register_devices(self, devices: Iterable[tuple[str, dict[str, str], str, list[str], str]]) -> None:
        """(id, labels, arch, providers, kind) each; re-registering updates labels and hardware."""
        now = self.now()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO devices (id, labels, arch, providers, kind, registered_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET labels=excluded.labels, arch=excluded.arch, providers=excluded.providers, kind=excluded.kind",
                [(i, json.dumps(labels, sort_keys=True), arch, json.dumps(eps), kind, now) for i, labels, arch, eps, kind in devices])

    def devices(self) -> list[Device]:
        rows = self._db().execute("SELECT id, labels FROM devices ORDER BY id").fetchall()
        return [Device(i, json.loads(labels)) for i, labels in rows]

    def device_rows(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT id, labels, arch, providers, kind FROM devices ORDER BY id").fetchall()
        return [{"id": i, "labels": json.loads(l), "arch": a, "providers": json.loads(p), "kind": k} for i, l, a, p, k in rows]

    # -- agent side -----------------------------------------------------------------------------------
    def device_desired(self, device_id: str, model: str) -> DesiredModel | None:
        row = self._db().execute("SELECT desired FROM desired WHERE device_id=? AND model=?", (device_id, model)).fetchone()
        return DesiredModel.from_json(row[0]) if row else None

    def desired_for_devices(self, device_ids: list[str], model: str) -> dict[str, DesiredModel | None]:
        out: dict[str, DesiredModel | None] = {}
        cache: dict[str, DesiredModel | None] = {}
        for dev, text in self._select_in("SELECT device_id, desired FROM desired WHERE model=? AND device_id IN ({})", [model], device_ids):
            if text not in cache:
                cache[text] = DesiredModel.from_json(text)
            out[dev] = cache[text]
        return out

    def desired_changed_since(self, model: str, watermark: float) -> tuple[dict[str, DesiredModel | None], float]:
        """Devices whose desired state changed after `watermark`, and the new watermark: the local stand-in
        for the change notifications real platforms push (twin updates, Greengrass deployment notices)."""
        rows = self._db().execute("SELECT device_id, desired, set_at FROM desired WHERE model=? AND set_at > ?", (model, watermark)).fetchall()
        cache: dict[str | None, DesiredModel | None] = {}
        out: dict[str, DesiredModel | None] = {}
        for dev, text, set_at in rows:
            if text not in cache:
                cache[text] = DesiredModel.from_json(text)
            out[dev] = cache[text]
            watermark = max(watermark, set_at)
        return out, watermark

    def put_reports(self, reports: list[DeviceReport]) -> None:
        """Stamps each report with the hub's clock (the time the hub received it) and stores it."""
        now = self.now()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO reports (device_id, model, report, reported_at) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id, model) DO UPDATE SET report=excluded.report, reported_at=excluded.reported_at",
                [(r.device_id, r.model, _stamp(r, now), now) for r in reports])
            db.executemany("INSERT OR IGNORE INTO served (device_id, model, version, sha256, first_seen) VALUES (?,?,?,?,?)",
                           [(r.device_id, r.model, r.version, r.sha256, now) for r in reports if r.version and r.sha256])

    def put_report(self, report: DeviceReport) -> None:
        self.put_reports([report])

    def ever_served(self, model: str, version: str) -> list[str]:
        """Every device that ever reported serving `version`: the evidence that a bad version stayed contained."""
        rows = self._db().execute("SELECT DISTINCT device_id FROM served WHERE model=? AND version=? ORDER BY device_id", (model, version)).fetchall()
        return [d for (d,) in rows]

    def reports(self, model: str, device_ids: list[str] | None = None) -> dict[str, DeviceReport]:
        if device_ids is None:
            rows = self._db().execute("SELECT device_id, report FROM reports WHERE model=?", (model,)).fetchall()
        else:
            rows = self._select_in("SELECT device_id, report FROM reports WHERE model=? AND device_id IN ({})", [model], device_ids)
        return {d: DeviceReport.from_json(r) for d, r in rows}

    def _select_in(self, sql: str, head: list[Any], ids: list[str]) -> list[tuple]:
        out: list[tuple] = []
        for i in range(0, len(ids), 900):
            chunk = ids[i:i + 900]
            out += self._db().execute(sql.format(",".join("?" * len(chunk))), [*head, *chunk]).fetchall()
        return out

    # -- FleetHub ------------------------------------------------------------------------------------
    def desired(self, target: RingTarget) -> DesiredModel | None:
        row = self._db().execute("SELECT desired FROM ring_desired WHERE rollout=? AND ring=?", (target.rollout, target.ring)).fetchone()
        return DesiredModel.from_json(row[0]) if row else None

    def set_desired(self, target: RingTarget, desired: DesiredModel | None) -> None:
        """None clears the ring's model (a first rollout rolled back to nothing); the ring keeps its model name."""
        devices = list(target.selector)
        model = desired.model if desired else self._ring_model(target)
        if model is None:
            return                                    # clearing a ring that never had a model: nothing to do
        text = desired.to_json() if desired else None
        now = self.now()
        with self._tx() as db:
            db.execute("INSERT INTO ring_desired (rollout, ring, idx, model, desired, devices, set_at) VALUES (?,?,?,?,?,?,?) "
                       "ON CONFLICT(rollout, ring) DO UPDATE SET idx=excluded.idx, model=excluded.model, desired=excluded.desired, "
                       "devices=excluded.devices, set_at=excluded.set_at",
                       (target.rollout, target.ring, target.index, model, text, json.dumps(devices), now))
            db.executemany("INSERT INTO desired (device_id, model, desired, set_at) VALUES (?,?,?,?) "
                           "ON CONFLICT(device_id, model) DO UPDATE SET desired=excluded.desired, set_at=excluded.set_at",
                           [(d, model, text, now) for d in devices])

    def _ring_model(self, target: RingTarget) -> str | None:
        row = self._db().execute("SELECT model FROM ring_desired WHERE rollout=? AND ring=?", (target.rollout, target.ring)).fetchone()
        return row[0] if row else None

    def observe(self, target: RingTarget, desired: DesiredModel | None, since: float) -> RingObservation:
        devices = list(target.selector)
        model = desired.model if desired else self._ring_model(target)
        reports = self.reports(model, devices) if model else {}
        return observe_reports(devices, reports, desired, since)

    def load_progress(self, rollout_id: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT progress FROM progress WHERE rollout_id=?", (rollout_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def save_progress(self, rollout_id: str, progress: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO progress (rollout_id, rollout, status, progress, updated_at) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(rollout_id) DO UPDATE SET status=excluded.status, progress=excluded.progress, updated_at=excluded.updated_at",
                       (rollout_id, progress["rollout"], progress["status"], json.dumps(progress), self.now()))

    def rollouts(self, rollout: str | None = None) -> list[dict[str, Any]]:
        """Progress records, oldest first."""
        sql = "SELECT progress FROM progress" + (" WHERE rollout=?" if rollout else "") + " ORDER BY json_extract(progress, '$.started_at')"
        return [json.loads(p) for (p,) in self._db().execute(sql, (rollout,) if rollout else ()).fetchall()]

    def ring_states(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT rollout, ring, model, desired, devices, set_at FROM ring_desired ORDER BY rollout, idx").fetchall()
        return [{"rollout": ro, "ring": ri, "model": m, "desired": DesiredModel.from_json(d), "devices": json.loads(devs), "set_at": t}
                for ro, ri, m, d, devs, t in rows]

    # -- resource state (what `edgefleet up` last applied, like a Pulumi state file) --------------------
    def resource_outputs(self, urn: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT outputs FROM resources WHERE urn=?", (urn,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_resource(self, urn: str, type_: str, outputs: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO resources (urn, type, outputs, updated_at) VALUES (?,?,?,?) "
                       "ON CONFLICT(urn) DO UPDATE SET outputs=excluded.outputs, updated_at=excluded.updated_at",
                       (urn, type_, json.dumps(outputs, sort_keys=True), self.now()))


def _stamp(report: DeviceReport, now: float) -> str:
    data = json.loads(report.to_json())
    data["reported_at"] = now
    return json.dumps(data, sort_keys=True)


def is_on(report: DeviceReport, desired: DesiredModel | None) -> bool:
    if desired is None:
        return report.version is None
    return report.version == desired.version and report.sha256 == desired.sha256 and report.status == "ok"


def observe_reports(devices: list[str], reports: dict[str, DeviceReport], desired: DesiredModel | None, since: float) -> RingObservation:
    """Classifies each device of a ring against `desired`. Shared by every platform that sees per-device reports."""
    adopted = failed = reporting = inferences = errors = invalid = 0
    p99s: list[float] = []
    failures: list[tuple[str, str]] = []
    pending: list[str] = []
    for dev in devices:
        r = reports.get(dev)
        fresh = r is not None and r.reported_at >= since
        if fresh:
            reporting += 1
        if r is not None and fresh and is_on(r, desired):
            adopted += 1
            inferences += r.inferences
            errors += r.errors
            invalid += r.invalid_outputs
            if r.p99_latency_ms is not None:
                p99s.append(r.p99_latency_ms)
        elif r is not None and fresh and desired is not None and r.status == "failed" and r.failed_version == desired.version:
            failed += 1
            failures.append((dev, r.error or "failed"))
        else:
            pending.append(dev)
    p99s.sort()
    return RingObservation(
        devices=len(devices), adopted=adopted, failed=failed, reporting=reporting,
        inferences=inferences, errors=errors, invalid_outputs=invalid,
        p99_latency_ms=p99s[min(len(p99s) - 1, int(len(p99s) * 0.99))] if p99s else None,
        failures=tuple(failures[:50]), pending=tuple(pending[:50]),
    )
