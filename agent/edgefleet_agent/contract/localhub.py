"""The local platform's wire format: one SQLite file that the controller and every agent open.

The controller (components/local/hub.py) keeps the device registry, each ring's desired state and the rollout
records in it; an agent reads its desired state and writes its reports. WAL mode lets one writer and many
readers share the file across processes; every write is one short transaction, so a process killed mid-write
leaves the previous state intact. The schema is here, in the device contract, because both sides depend on it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from edgefleet_agent.contract.state import DesiredModel, DeviceReport

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
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, token TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL, expires_at REAL NOT NULL);
"""


class HubFile:
    """One connection per thread to the hub file, and short IMMEDIATE transactions."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # idempotent; executescript manages its own transaction

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


class AgentHub(HubFile):
    """What an agent does with the hub: read its desired state, write its reports."""

    def device_desired(self, device_id: str, model: str) -> DesiredModel | None:
        row = self._db().execute("SELECT desired FROM desired WHERE device_id=? AND model=?", (device_id, model)).fetchone()
        return DesiredModel.from_json(row[0]) if row else None

    def put_reports(self, reports: list[DeviceReport]) -> None:
        """Stamps each report with the hub's clock (the time the hub received it) and stores it."""
        now = self.now()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO reports (device_id, model, report, reported_at) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id, model) DO UPDATE SET report=excluded.report, reported_at=excluded.reported_at",
                [(r.device_id, r.model, _stamp(r, now), now) for r in reports],
            )
            db.executemany(
                "INSERT OR IGNORE INTO served (device_id, model, version, sha256, first_seen) VALUES (?,?,?,?,?)",
                [(r.device_id, r.model, r.version, r.sha256, now) for r in reports if r.version and r.sha256],
            )

    def put_report(self, report: DeviceReport) -> None:
        self.put_reports([report])


def _stamp(report: DeviceReport, now: float) -> str:
    data = json.loads(report.to_json())
    data["reported_at"] = now
    return json.dumps(data, sort_keys=True)
