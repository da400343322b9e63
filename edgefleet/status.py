"""`edgefleet status`: for each of the stack's platforms, what each ring should run, what its devices last said
they run, and the drift, from that platform's status reader (components/registry.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components import registry
from edgefleet.config import load_stack
from edgefleet.synth import synth


def fleet_status(project_dir: Path, stack: str) -> dict[str, Any]:
    cfg, source = load_stack(Path(project_dir).resolve(), stack)
    graph = synth(project_dir, stack)
    out: dict[str, Any] = {"rings": [], "rollouts": [], "declared": []}
    for name in cfg.platforms:
        part = registry.platform(name).load("status")(project_dir, cfg, source, stack, graph)
        for key in out:
            out[key] += part.get(key, [])
    return out
