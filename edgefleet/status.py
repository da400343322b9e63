"""`edgefleet status`: for each of the stack's platforms, what each ring should run, what its devices last said
they run, and the drift, from that platform's status reader (components/registry.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from components import registry
from components.rollout.status import document
from edgefleet.config import load_stack
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import EdgefleetError


def status_reader(project_dir: Path, stack: str, overrides: dict[str, dict[str, Any]] | None = None) -> Callable[[], dict[str, Any]]:
    """A function that reads the stack's status now, for every platform of the stack (`--watch` calls it again and
    again: the stack file is read and the program synthesized once). `overrides[platform]`: keyword arguments for that
    platform's reader (tests pass their clients)."""
    project_dir = Path(project_dir)
    cfg, source = load_stack(project_dir.resolve(), stack)
    graph = synth(project_dir, stack)
    readers = [(name, registry.platform(name).load("status")) for name in cfg.platforms]

    def read() -> dict[str, Any]:
        parts = [reader(project_dir, cfg, source, stack, graph, **(overrides or {}).get(name, {})) for name, reader in readers]
        return document(stack, parts, time.time())

    return read


def fleet_status(project_dir: Path, stack: str) -> dict[str, Any]:
    """The stack's status once: `components/rollout/status.py` documents the keys."""
    return status_reader(project_dir, stack)()


def fleet_history(project_dir: Path, stack: str | None, model: str | None = None) -> list[dict[str, Any]]:
    """Past rollouts of `stack` (of one model with `model`), oldest first; without a stack, an error naming those
    whose history this machine can read."""
    project_dir = Path(project_dir).resolve()
    if stack is None:
        readable = []
        for path in sorted((project_dir / "stacks").glob("Pulumi.*.yaml")):
            name = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
            try:
                cfg, _ = load_stack(project_dir, name)
            except EdgefleetError:
                continue
            if cfg.local is not None and (project_dir / cfg.local.hub).is_file():
                readable.append(name)
        raise EdgefleetError(
            "--stack",
            "name the stack whose history to show",
            f"readable here: {', '.join(readable) or 'none yet (run `edgefleet up --stack local` first)'}",
        )
    cfg, source = load_stack(project_dir, stack)
    out: list[dict[str, Any]] = []
    for name in cfg.platforms:
        out += registry.platform(name).load("history")(project_dir, cfg, source, stack)
    if model is not None:
        out = [h for h in out if h["model"] == model]
    return sorted(out, key=lambda h: h["started_at"] or 0)
