"""The local platform's wire format: one SQLite file that the controller and every agent open.

The controller (components/local/hub.py) keeps the device registry, each ring's desired state and the rollout
records in it; an agent reads its desired state and writes its reports. WAL mode lets one writer and many
readers share the file across processes; every write is one short transaction, so a process killed mid-write
leaves the previous state intact. The schema is here, in the device contract, because both sides depend on it.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from edgefleet_agent.contract.errors import FaultError
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
CREATE INDEX IF NOT EXISTS reports_by_time ON reports (reported_at);
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


BUSY_SECONDS = 30.0  # how long SQLite's own backoff waits for a lock before giving up


class HubBusyError(FaultError):
    """Another process held the hub's write lock for longer than BUSY_SECONDS."""


class HubCorruptError(FaultError):
    """The hub file is not a readable SQLite database any more."""


def _holders(path: Path) -> list[str]:
    """Processes that have the hub (or its write-ahead log) open, read from /proc: who may be holding the lock."""
    targets = {str(path.resolve()), str(path.resolve()) + "-wal"}
    out: list[str] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for pid in proc.iterdir():
        if not pid.name.isdigit() or int(pid.name) == os.getpid():
            continue
        try:
            if not any(os.readlink(fd) in targets for fd in (pid / "fd").iterdir()):
                continue
            cmd = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append(f"pid {pid.name} ({cmd[:80]})")
    return out


def hub_fault(path: Path, exc: sqlite3.Error) -> FaultError | None:
    """The FaultError a SQLite error on the hub means (locked, damaged), or None for anything else."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        holders = _holders(path)
        return HubBusyError(
            str(path),
            f"the hub stayed locked for {BUSY_SECONDS:.0f}s (SQLite: {text})"
            + (f"; it is open in {', '.join(holders)}" if holders else ""),
            "wait for that process to finish or stop it, then run the command again; nothing was changed by this one",
        )
    if isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in text:
        return FaultError(
            str(path),
            f"the hub file could not be read or written (SQLite: {text})",
            "check the disk and the file's permissions, and that no other tool replaced it, then run the command again",
        )
    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in text:
        return FaultError(
            str(path),
            f"the disk holding the hub is full (SQLite: {text}); the write was not made",
            "free space on that disk and run the command again: the hub keeps its last consistent state",
        )
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text or "corrupt" in text):
        return HubCorruptError(
            str(path),
            f"the hub database is damaged (SQLite: {text})",
            f"`edgefleet hub recover --hub {path}` moves it aside and rebuilds it from what is readable (rollout records, ring "
            "states, the device registry); device reports start afresh as devices report again; then run the command again",
        )
    return None


class _Connection(sqlite3.Connection):
    """Turns a lock held too long or a damaged file into the FaultError that says so, wherever a statement runs."""

    hub_path: Path

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.Error as exc:
            raise (hub_fault(self.hub_path, exc) or exc) from exc

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.Error as exc:
            raise (hub_fault(self.hub_path, exc) or exc) from exc

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        try:
            return super().executescript(*args, **kwargs)
        except sqlite3.Error as exc:
            raise (hub_fault(self.hub_path, exc) or exc) from exc


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
            db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None, factory=_Connection)
            db.hub_path = self.path
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
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

    def check_integrity(self) -> None:
        """SQLite's quick check: a damaged hub is named before anything acts on it (at the start of `up`, not every open)."""
        rows = self._db().execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            fault = hub_fault(
                self.path, sqlite3.DatabaseError(f"database disk image is malformed: {'; '.join(str(r[0]) for r in rows[:3])}")
            )
            assert fault is not None
            raise fault

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
        """Stamps each report with the hub's clock (the time the hub received it) and stores it.

        The stamp is taken holding the write lock and is later than every stamp already stored, so stamps follow the
        order writes commit in: a reader that saw every row up to stamp t finds all later ones with `reported_at > t`
        (the controller reads only those), even across processes, a clock stepped back, or a frozen test clock."""
        with self._tx() as db:
            (last,) = db.execute("SELECT max(reported_at) FROM reports").fetchone()
            now = self.now() if last is None else max(self.now(), last + 1e-6)
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
    return dataclasses.replace(report, reported_at=now).to_json()
