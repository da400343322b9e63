"""The local hub: one SQLite file holding the device registry, desired and reported state, and rollout records.

It plays IoT Hub / Greengrass for the local platform: the engine drives it through the FleetHub methods,
agents (threads of the simulator or separate processes) read their desired state and write reports.
WAL mode lets one writer and many readers share the file across processes; every write is one short
transaction, so a process killed mid-write leaves the previous state intact. One process at a time drives a
rollout: `lease` hands out that right, and writes to a rollout's progress or rings from anyone else are refused
while it is held. The file's schema and the agents' reads and writes are the device contract's
(edgefleet_agent/contract/localhub.py); this module adds what only the controller does.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from components.rollout.membership import Device
from components.rollout.observe import ObserveMemo, SoakWindows
from components.rollout.quality import Summary
from components.rollout.types import RingObservation, RingTarget
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.localhub import AgentHub
from edgefleet_agent.contract.state import DesiredModel, DeviceReport


@dataclass
class Lease:
    """The right to drive one rollout. `took_over` names a previous holder whose lease had expired (or whose
    process is gone); `lost` says why the lease was lost while held (the holder was suspended past its ttl)."""

    name: str
    owner: str
    token: str
    ttl: float
    took_over: str | None = None
    lost: str | None = None


CHANGE_LOG = 64  # reads whose changed devices are kept for memos to catch up from; a memo further behind reads all


def _identity(desired: DesiredModel | None) -> tuple[str, ...]:
    """What a memo of a ring is kept per: a rollback observes a ring against two desired states each poll."""
    if desired is None:
        return ("none",)
    return (desired.version, desired.sha256, desired.shadow.sha256 if desired.shadow else "")


def _parsed(
    rows: dict[str, tuple[float, str]], parsed: dict[str, tuple[float, DeviceReport]], devices: Iterable[str]
) -> dict[str, DeviceReport]:
    """The latest report of each of `devices` that has one, parsed only where its row changed since it was last parsed."""
    out: dict[str, DeviceReport] = {}
    for dev in devices:
        row = rows.get(dev)
        if row is None:
            continue
        held = parsed.get(dev)
        if held is None or held[0] != row[0]:
            held = (row[0], _report(row[1]))
            parsed[dev] = held
        out[dev] = held[1]
    return out


def _report(text: str) -> DeviceReport:
    """One report row, decoded by orjson (a fifth of the standard library's time: the controller decodes every report
    of a 10,000-device fleet that changed since its last poll); text orjson refuses (a NaN the standard library
    wrote) goes through the standard library as the agent reads it."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return DeviceReport.from_json(text)
    return DeviceReport.from_body(body)


def default_owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class LocalHub(AgentHub):
    """The controller's side of the hub: registry, rings, rollout records, leases. Agents use AgentHub."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, clock)
        self._held: dict[str, Lease] = {}
        self._ring_windows, self._control_windows = SoakWindows(), SoakWindows()  # a device keeps only its latest window here
        self._report_cache: dict[str, tuple[float, dict[str, tuple[float, str]], dict[str, tuple[float, DeviceReport]]]] = {}
        self._reports_lock = threading.Lock()
        self._observed: dict[tuple[str, ...], dict[tuple[str, ...], ObserveMemo]] = {}  # per ring and desired state: _memo
        self._changes: dict[str, list[tuple[int, list[str]]]] = {}  # per model: the devices each read found a new report of

    # -- device registry ------------------------------------------------------------------------------
    def register_devices(self, devices: Iterable[tuple[str, dict[str, str], str, list[str], str]]) -> None:
        """(id, labels, arch, providers, kind) each; re-registering updates labels and hardware."""
        now = self.now()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO devices (id, labels, arch, providers, kind, registered_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET labels=excluded.labels, arch=excluded.arch, providers=excluded.providers, kind=excluded.kind",
                [(i, json.dumps(labels, sort_keys=True), arch, json.dumps(eps), kind, now) for i, labels, arch, eps, kind in devices],
            )

    def devices(self) -> list[Device]:
        rows = self._db().execute("SELECT id, labels FROM devices ORDER BY id").fetchall()
        return [Device(i, json.loads(labels)) for i, labels in rows]

    def device_rows(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT id, labels, arch, providers, kind FROM devices ORDER BY id").fetchall()
        return [{"id": i, "labels": json.loads(labels), "arch": a, "providers": json.loads(p), "kind": k} for i, labels, a, p, k in rows]

    # -- the simulator's batched reads ------------------------------------------------------------------
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
        rows = (
            self._db().execute("SELECT device_id, desired, set_at FROM desired WHERE model=? AND set_at > ?", (model, watermark)).fetchall()
        )
        cache: dict[str | None, DesiredModel | None] = {}
        out: dict[str, DesiredModel | None] = {}
        for dev, text, set_at in rows:
            if text not in cache:
                cache[text] = DesiredModel.from_json(text)
            out[dev] = cache[text]
            watermark = max(watermark, set_at)
        return out, watermark

    def ever_served(self, model: str, version: str) -> list[str]:
        """Every device that ever reported serving `version`: the evidence that a bad version stayed contained."""
        rows = (
            self._db()
            .execute("SELECT DISTINCT device_id FROM served WHERE model=? AND version=? ORDER BY device_id", (model, version))
            .fetchall()
        )
        return [d for (d,) in rows]

    def reports(self, model: str, device_ids: list[str] | None = None) -> dict[str, DeviceReport]:
        """Each device's latest report of `model` (only those of `device_ids`, when given). Parsed only when asked for
        and changed since: a gate polls one ring of a 10,000-device fleet, whose other devices report on meanwhile."""
        with self._reports_lock:
            rows, parsed = self._latest_rows(model)
            return _parsed(rows, parsed, rows if device_ids is None else device_ids)

    def _latest_rows(self, model: str) -> tuple[dict[str, tuple[float, str]], dict[str, tuple[float, DeviceReport]]]:
        """Every device's latest report row of `model` as (stamp, text), reading only the rows stamped after the newest
        one seen: writers stamp in commit order (AgentHub.put_reports), so none is missed, and the index on the stamp
        makes the read cost what was written since."""
        seen, rows, parsed = self._report_cache.get(model, (None, {}, {}))
        if seen is None:
            fresh = self._db().execute("SELECT device_id, report, reported_at FROM reports WHERE model=?", (model,)).fetchall()
        else:
            fresh = (
                self._db()
                .execute("SELECT device_id, report, reported_at FROM reports WHERE reported_at > ? AND model=?", (seen, model))
                .fetchall()
            )
        newest = seen if seen is not None else float("-inf")
        for dev, text, at in fresh:
            rows[dev] = (at, text)
            newest = max(newest, at)
        self._report_cache[model] = (newest, rows, parsed)
        if fresh:
            log = self._changes.setdefault(model, [])
            log.append(((log[-1][0] + 1) if log else 0, [dev for dev, _, _ in fresh]))
            del log[:-CHANGE_LOG]
        return rows, parsed

    def _select_in(self, sql: str, head: list[Any], ids: list[str]) -> list[tuple]:
        out: list[tuple] = []
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
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
            return  # clearing a ring that never had a model: nothing to do
        text = desired.to_json() if desired else None
        now = self.now()
        with self._tx() as db:
            self._fence(db, target.rollout)
            db.execute(
                "INSERT INTO ring_desired (rollout, ring, idx, model, desired, devices, set_at) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(rollout, ring) DO UPDATE SET idx=excluded.idx, model=excluded.model, desired=excluded.desired, "
                "devices=excluded.devices, set_at=excluded.set_at",
                (target.rollout, target.ring, target.index, model, text, json.dumps(devices), now),
            )
            db.executemany(
                "INSERT INTO desired (device_id, model, desired, set_at) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id, model) DO UPDATE SET desired=excluded.desired, set_at=excluded.set_at",
                [(d, model, text, now) for d in devices],
            )

    def _ring_model(self, target: RingTarget) -> str | None:
        row = self._db().execute("SELECT model FROM ring_desired WHERE rollout=? AND ring=?", (target.rollout, target.ring)).fetchone()
        return row[0] if row else None

    def observe(self, target: RingTarget, desired: DesiredModel | None, since: float) -> RingObservation:
        model = desired.model if desired else self._ring_model(target)
        memo = self._memo((target.rollout, target.ring), desired)
        return self._caught_up(memo, target.selector, model, desired, since, self._ring_windows).observation()

    def summarize(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> Summary:
        """The control group's telemetry: devices of `targets` still serving `desired`, from each one's latest report."""
        return self._control(targets, desired, since).control()

    def summarize_variants(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> dict[str, Summary]:
        """The control group per build its devices report serving (FleetHub's optional summarize_variants), from the
        memo `summarize` keeps: what changed since the last poll."""
        return self._control(targets, desired, since).control_variants()

    def _control(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> ObserveMemo:
        """The control group's memo, caught up: its devices, their reports summed over the phase."""
        memo = self._memo(("control", *(f"{t.rollout}/{t.ring}" for t in targets)), desired)
        return self._caught_up(memo, {d for t in targets for d in t.selector}, desired.model, desired, since, self._control_windows)

    def _memo(self, what: tuple[str, ...], desired: DesiredModel | None) -> ObserveMemo:
        """The memo of a ring (or control group) against one desired state; the two most recently used are kept (a
        rollback observes a ring against the restored version and the one it replaces, each poll)."""
        kept = self._observed.setdefault(what, {})
        key = _identity(desired)
        memo = kept.pop(key, None) or ObserveMemo()
        kept[key] = memo
        for old in list(kept)[:-2]:
            del kept[old]
        return memo

    def _caught_up(
        self,
        memo: ObserveMemo,
        members: Iterable[str],
        model: str | None,
        desired: DesiredModel | None,
        since: float,
        windows: SoakWindows,
    ) -> ObserveMemo:
        """`memo` brought up to the hub's latest reports: every member on its first poll (or another desired state or
        phase), afterwards only the members whose report row changed since its last poll, so that a poll of a
        10,000-device ring costs what changed, not the ring."""
        restart = memo.begin(desired, since)
        if model is None:
            if restart:
                for dev in sorted(members):
                    memo.device(dev, None, desired, since)
            return memo
        with self._reports_lock:
            rows, parsed = self._latest_rows(model)
            log = self._changes.get(model, [])
            if restart or not log or memo.read < log[0][0] - 1:
                devices = sorted(members)
                memo.members = frozenset(devices)
            else:
                devices = sorted({d for gen, devs in log if gen > memo.read for d in devs} & memo.members)
            memo.read = log[-1][0] if log else memo.read
            latest = _parsed(rows, parsed, devices)
        summed = windows.summed(latest, since)
        for dev in devices:
            got = summed.get(dev)
            memo.device(dev, got.report if got else None, desired, since, got.parts if got else None)
        return memo

    def load_progress(self, rollout_id: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT progress FROM progress WHERE rollout_id=?", (rollout_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def save_progress(self, rollout_id: str, progress: dict[str, Any]) -> None:
        with self._tx() as db:
            self._fence(db, progress["rollout"])
            db.execute(
                "INSERT INTO progress (rollout_id, rollout, status, progress, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(rollout_id) DO UPDATE SET status=excluded.status, progress=excluded.progress, updated_at=excluded.updated_at",
                (rollout_id, progress["rollout"], progress["status"], json.dumps(progress), self.now()),
            )

    def rollouts(self, rollout: str | None = None) -> list[dict[str, Any]]:
        """Progress records, oldest first."""
        sql = "SELECT progress FROM progress" + (" WHERE rollout=?" if rollout else "") + " ORDER BY json_extract(progress, '$.started_at')"
        return [json.loads(p) for (p,) in self._db().execute(sql, (rollout,) if rollout else ()).fetchall()]

    def ring_states(self) -> list[dict[str, Any]]:
        rows = (
            self._db().execute("SELECT rollout, ring, model, desired, devices, set_at FROM ring_desired ORDER BY rollout, idx").fetchall()
        )
        return [
            {"rollout": ro, "ring": ri, "model": m, "desired": DesiredModel.from_json(d), "devices": json.loads(devs), "set_at": t}
            for ro, ri, m, d, devs, t in rows
        ]

    # -- leases: one driver per rollout ------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str, owner: str | None = None, ttl: float = 30.0) -> Iterator[Lease]:
        """Holds the exclusive right to drive rollout `name` (a rollout's name, not one version's id: all its
        versions share the same rings) for the duration of the block, renewed every ttl/3 by a thread.

        Raises EdgefleetError when another live holder has it. A holder that stopped renewing for `ttl`
        seconds, or whose process on this host is gone, is taken over. Re-entrant within one LocalHub."""
        if name in self._held:
            yield self._held[name]
            return
        held = self._acquire(name, owner or default_owner(), ttl)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(held, stop), name=f"edgefleet-lease-{name}", daemon=True)
        renewer.start()
        try:
            yield held
        finally:
            stop.set()
            renewer.join()
            self._held.pop(name, None)
            with self._tx() as db:
                db.execute("DELETE FROM leases WHERE name=? AND token=?", (name, held.token))

    def lease_holder(self, name: str) -> dict[str, Any] | None:
        """Who drives rollout `name` (owner, host, pid, acquired_at, expires_at), live or expired; None: nobody."""
        return self._lease_row(self._db(), name)

    def _acquire(self, name: str, owner: str, ttl: float) -> Lease:
        held = Lease(name, owner, uuid.uuid4().hex, ttl)
        with self._tx() as db:
            now = self.now()
            row = self._lease_row(db, name)
            if row is not None and self._live(row, now):
                raise self._held_error(name, row, now)
            if row is not None:
                held.took_over = f"{row['owner']} (pid {row['pid']} on {row['host']})"
            db.execute(
                "INSERT INTO leases (name, owner, token, host, pid, acquired_at, expires_at) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, token=excluded.token, host=excluded.host, "
                "pid=excluded.pid, acquired_at=excluded.acquired_at, expires_at=excluded.expires_at",
                (name, owner, held.token, socket.gethostname(), os.getpid(), now, now + ttl),
            )
        self._held[name] = held
        return held

    def _renew_until(self, held: Lease, stop: threading.Event) -> None:
        try:
            while not stop.wait(held.ttl / 3):
                with self._tx() as db:
                    now = self.now()
                    if (
                        db.execute(
                            "UPDATE leases SET expires_at=? WHERE name=? AND token=?", (now + held.ttl, held.name, held.token)
                        ).rowcount
                        == 0
                    ):
                        row = self._lease_row(db, held.name)
                        held.lost = (
                            f"taken over by {row['owner']} (pid {row['pid']} on {row['host']})" if row else "released by someone else"
                        )
                        return
        finally:
            self.close()  # this thread's own connection

    def _fence(self, db: sqlite3.Connection, name: str) -> None:
        """Inside a write transaction: refuses the write unless this hub holds `name` or no live lease exists."""
        row = self._lease_row(db, name)
        mine = self._held.get(name)
        if mine is not None:
            if row is None or row["token"] != mine.token:
                raise EdgefleetError(
                    str(self.path),
                    f"this run lost its lease on rollout {name!r}"
                    + (f": {mine.lost}" if mine.lost else f" to {row['owner']}" if row else ""),
                    "another process drives this rollout now; check `edgefleet status` and run again once it is done",
                )
            return
        if row is not None and self._live(row, self.now()):
            raise self._held_error(name, row, self.now())

    @staticmethod
    def _lease_row(db: sqlite3.Connection, name: str) -> dict[str, Any] | None:
        row = db.execute("SELECT owner, token, host, pid, acquired_at, expires_at FROM leases WHERE name=?", (name,)).fetchone()
        return None if row is None else dict(zip(("owner", "token", "host", "pid", "acquired_at", "expires_at"), row, strict=True))

    @staticmethod
    def _live(row: dict[str, Any], now: float) -> bool:
        """Unexpired, and not left by a process of this host that no longer exists."""
        if row["expires_at"] <= now:
            return False
        if row["host"] == socket.gethostname() and row["pid"] != os.getpid():
            try:
                os.kill(row["pid"], 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
        return True

    def _held_error(self, name: str, row: dict[str, Any], now: float) -> EdgefleetError:
        return EdgefleetError(
            str(self.path),
            f"rollout {name!r} is being driven by {row['owner']} (pid {row['pid']} on {row['host']}), "
            f"holding its lease since {time.strftime('%H:%M:%S', time.localtime(row['acquired_at']))}, "
            f"valid {max(0.0, row['expires_at'] - now):.0f}s more unless renewed",
            "wait for that run to finish (`edgefleet status` shows its progress) or stop it, then run again; "
            "a lease left by a killed process is taken over at once on this host, elsewhere once it expires",
        )

    # -- resource state (what `edgefleet up` last applied, like a Pulumi state file) --------------------
    def resource_outputs(self, urn: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT outputs FROM resources WHERE urn=?", (urn,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_resource(self, urn: str, type_: str, outputs: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO resources (urn, type, outputs, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(urn) DO UPDATE SET outputs=excluded.outputs, updated_at=excluded.updated_at",
                (urn, type_, json.dumps(outputs, sort_keys=True), self.now()),
            )
