"""The rules (policies/) over a synthesized graph: the stack's settings with its ring counts and the base's
models, and the report, with a bad enforcement entry named in the stack file.

Imports policies/ (standard library only) and membership.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgefleet.plan.membership import membership
from edgefleet_agent.contract.errors import EdgefleetError
from policies.engine import Report
from policies.graph import base_model_facts
from policies.rules import evaluate
from policies.settings import Settings


def policy_settings(graph: Mapping[str, Any], base: Mapping[str, Any] | None = None, project_dir: Path | None = None) -> Settings:
    """The rules' settings for a synthesized graph: its stack's policy config, ring counts, and the base's models."""
    members = membership(graph)
    return Settings.from_config(
        graph.get("config") or {},
        stack=str(graph.get("stack", "")),
        base_models=base_model_facts(base["resources"]) if base is not None else None,
        # Declared cloud sizes reach the rules through the stack config, where they are reported as declared.
        ring_devices={ro: dict(rs) for ro, rs in members.rings.items() if ro not in members.declared},
        rollout_devices={ro: n for ro, n in members.rollout_devices.items() if ro not in members.declared},
        project_dir=str(project_dir) if project_dir is not None else None,
    )


def run_policy(
    graph: Mapping[str, Any], base: Mapping[str, Any] | None = None, project_dir: Path | None = None, settings: Settings | None = None
) -> Report:
    settings = settings or policy_settings(graph, base, project_dir)
    try:
        return evaluate(graph["resources"], settings)
    except ValueError as exc:
        raise EdgefleetError(
            str(graph.get("stack_file") or "stack file"),
            str(exc),
            "name rules as listed, each with advisory, mandatory or disabled (docs/plan-and-policy.md)",
        ) from None
