"""The local platform's capture store: a directory, separate from the model store, declared by `edgefleet:capture.store`
(relative to the project). Devices write under `<store>/<model>/<device>/` only (edgefleet_agent.capture.LocalCaptureSink
enforces it); `edgefleet samples pull` reads it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from components.stack import Problem


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
