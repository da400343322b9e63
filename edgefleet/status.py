"""`edgefleet status`: for each of the stack's platforms, what each ring should run, what its devices last said
they run, and the drift, from that platform's status reader (components/registry.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components import registry
from edgefleet.config import load_stack
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import EdgefleetError


def fleet_status(project_dir: Path, stack: str) -> dict[str, Any]:
    cfg, source = load_stack(Path(project_dir).resolve(), stack)
    graph = synth(project_dir, stack)
    out: dict[str, Any] = {"rings": [], "rollouts": [], "declared": []}
    for name in cfg.platforms:
        part = registry.platform(name).load("status")(project_dir, cfg, source, stack, graph)
        for key in out:
            out[key] += part.get(key, [])
    return out


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
