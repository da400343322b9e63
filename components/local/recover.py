"""Rebuilding a damaged local hub: `edgefleet hub recover`.

The damaged file is moved aside (never deleted: it is the evidence), a new hub is created, and every row SQLite can
still read is copied over, table by table: the rollout records (what each rollout did, its gates' verdicts, its
signed desired states), each ring's desired state, the device registry, what devices ever served, what `up` last
applied. Device reports are not kept: they are each device's latest window, and devices send a new one within
seconds. Leases are not kept: whoever held one is gone.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.local.hub import LocalHub

KEPT = ("progress", "ring_desired", "desired", "devices", "served", "resources")


@dataclass
class Recovered:
    moved_to: Path
    kept: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    lost: dict[str, str] = field(default_factory=dict)  # table -> why nothing (more) could be read


def recover(hub_path: Path) -> Recovered:
    hub_path = Path(hub_path)
    aside = hub_path.with_name(f"{hub_path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(hub_path, aside)
    for suffix in ("-wal", "-shm"):
        side = hub_path.with_name(hub_path.name + suffix)
        if side.exists():
            shutil.move(side, aside.with_name(aside.name + suffix))
    out = Recovered(aside)
    fresh = LocalHub(hub_path)
    old = sqlite3.connect(aside)
    try:
        for table in KEPT:
            cols: list[str] = []
            rows: list[tuple[object, ...]] = []
            try:
                cols = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
                for row in old.execute(f"SELECT {', '.join(cols)} FROM {table}"):
                    rows.append(row)
            except sqlite3.DatabaseError as exc:  # what was read before the damage is still copied
                out.lost[table] = str(exc)
            if rows and cols:
                with fresh._tx() as db:
                    db.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
            out.kept[table] = len(rows)
    finally:
        old.close()
        fresh.close()
    return out
