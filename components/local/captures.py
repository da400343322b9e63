"""The local platform's capture store: a directory, separate from the model store, declared by `edgefleet:capture.store`
(relative to the project). Devices write under `<store>/<model>/<device>/` only (edgefleet_agent.capture.LocalCaptureSink
enforces it); `edgefleet samples pull` reads it."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from components.stack import Problem
from edgefleet_agent.contract.capture import CaptureRecord
from edgefleet_agent.contract.errors import FormatError


def store_problems(cfg: Any) -> list[Problem]:
    """The declared capture store, when the stack runs local devices: a relative directory, never the model store."""
    dest = getattr(cfg, "capture", None)
    local = cfg.section("local")
    if dest is None or local is None:
        return []
    store = PurePosixPath(dest.store)
    fix = "declare a directory of its own relative to the project, e.g. edgefleet:capture.store: .edgefleet/local/captures"
    if "://" in dest.store or store.is_absolute() or ".." in store.parts:
        return [("capture.store", f"{dest.store!r} is not a directory relative to the project (the local platform's capture store)", fix)]
    model_store = PurePosixPath(local.store)
    if store == model_store or model_store in store.parents or store in model_store.parents:
        return [
            (
                "capture.store",
                f"{dest.store!r} overlaps the model store {local.store!r}: the model store is the devices' read-only update "
                "repository, and captured data must stay out of it",
                fix,
            )
        ]
    return []


def store_root(cfg: Any, project_dir: Path) -> Path | None:
    """Where the local fleet's devices write captures; None when the stack declares no capture destination."""
    dest = getattr(cfg, "capture", None)
    return project_dir / dest.store if dest is not None else None


# -- edgefleet samples pull -------------------------------------------------------------------------------------------
INDEX_JSONL = "index.jsonl"
INDEX_CSV = "index.csv"
CSV_COLUMNS = (
    "id",
    "device",
    "model",
    "version",
    "time",
    "reason",
    "top1",
    "confidence",
    "candidate_version",
    "candidate_top1",
    "rollout",
    "npz",
    "label",
)


@dataclass
class PullResult:
    copied: int = 0
    already: int = 0  # in the output directory from an earlier pull
    skipped: list[str] = field(default_factory=list)  # incomplete or not what they claim to be, and why
    indexed: int = 0


def _samples(model_dir: Path) -> Iterator[tuple[str, Path, Path]]:
    """(device, record, npz) for every complete sample under `<store>/<model>/<device>/<day>/`; symlinks never followed."""
    for device_dir in sorted(model_dir.iterdir()):
        if device_dir.is_symlink() or not device_dir.is_dir():
            continue
        for day_dir in sorted(device_dir.iterdir()):
            if day_dir.is_symlink() or not day_dir.is_dir():
                continue
            for rec in sorted(day_dir.glob("*.json")):
                if rec.name.startswith(".") or rec.is_symlink():
                    continue
                yield device_dir.name, rec, rec.with_suffix(".npz")


def pull_samples(store: Path, model: str, out: Path, since: float | None = None) -> PullResult:
    """Copies the model's complete samples (record and npz) from the capture store into `out/<device>/<day>/` and
    writes `out/index.jsonl` and `out/index.csv` (one row per sample in `out`, an empty `label` column to fill in).

    A sample whose record names another device or model than the prefix it sits under is skipped and said: a device
    writes only under its own prefix, so such a record was not written by a well-behaved agent. Raises OSError when
    the store cannot be read (the CLI exits 5)."""
    result = PullResult()
    model_dir = store / model
    if model_dir.is_dir():
        for device, rec_path, npz in _samples(model_dir):
            try:
                record = CaptureRecord.from_json(rec_path.read_text())
            except (ValueError, TypeError, FormatError) as exc:
                result.skipped.append(f"{rec_path}: not a capture record ({exc})")
                continue
            if (record.device, record.model, record.id) != (device, model, rec_path.stem):
                result.skipped.append(
                    f"{rec_path}: the record says {record.model}/{record.device} {record.id}, but it sits under {model}/{device}; not pulled"
                )
                continue
            if since is not None and record.time < since:
                continue
            if not npz.is_file() or npz.is_symlink():
                result.skipped.append(f"{rec_path}: its tensors ({npz.name}) are missing")
                continue
            dest = out / device / rec_path.parent.name
            if (dest / rec_path.name).is_file() and (dest / npz.name).is_file():
                result.already += 1
                continue
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(npz, dest / npz.name)
            shutil.copyfile(rec_path, dest / rec_path.name)  # the record last: a sample is complete once it exists
            result.copied += 1
    result.indexed = write_index(out, model) if out.is_dir() else 0
    return result


def write_index(out: Path, model: str) -> int:
    """index.jsonl and index.csv over every sample of `model` in `out` (earlier pulls' too), oldest first."""
    rows = []
    for rec_path in out.glob("*/*/*.json"):
        try:
            record = CaptureRecord.from_json(rec_path.read_text())
        except (ValueError, TypeError, FormatError):
            continue
        if record.model != model:
            continue
        rows.append((record, rec_path.with_suffix(".npz").relative_to(out).as_posix()))
    rows.sort(key=lambda r: (r[0].time, r[0].device, r[0].id))
    with open(out / INDEX_JSONL, "w", encoding="utf-8") as f:
        for record, npz in rows:
            f.write(json.dumps({**json.loads(record.to_json()), "npz": npz}, sort_keys=True) + "\n")
    with open(out / INDEX_CSV, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r, npz in rows:
            joined = [" ".join(map(str, v)) if v is not None else "" for v in (r.top1, r.confidence, r.candidate_top1)]
            writer.writerow(
                [
                    r.id,
                    r.device,
                    r.model,
                    r.version,
                    f"{r.time:.3f}",
                    r.reason,
                    joined[0],
                    joined[1],
                    r.candidate_version or "",
                    joined[2],
                    r.rollout,
                    npz,
                    "",
                ]
            )
    return len(rows)
