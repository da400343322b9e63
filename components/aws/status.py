"""What `edgefleet status` shows for a stack on this platform. Not built yet: the gates read the fleet while they run
(components/aws/hub.py), but nothing reads it on demand for a user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet_agent.contract.errors import EdgefleetError


def read_status(project_dir: Path, cfg: Any, source: str, stack: str, graph: dict[str, Any]) -> dict[str, Any]:
    raise EdgefleetError(
        source,
        "status reads the local hub; this stack has no local platform",
        "for cloud stacks, see the Greengrass console or `pulumi stack output`",
    )


def read_history(project_dir: Path, cfg: Any, source: str, stack: str) -> list[dict[str, Any]]:
    raise EdgefleetError(
        source,
        "history reads the local hub; this stack's rollout records live in its cloud store",
        "for cloud stacks, see the Greengrass console or the rollout records in the stack's model store",
    )
