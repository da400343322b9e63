"""`edgefleet plan`: what a change does to which devices, computed from two declared graphs, offline.

The base graph is synthesized from a temporary git worktree of the base ref (worktree.py). Everything after that
is pure: `compute_plan(base, head)` diffs the graphs into models, rollouts and resources (diff.py, replace.py),
counts ring membership (membership.py) and runs the rules (policy.py); `render_markdown` (markdown.py) turns
that into a PR comment. What the CLI and other tools use is importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgefleet.plan.diff import ACTIONS, diff_models, diff_resources, diff_rollouts
from edgefleet.plan.markdown import COMMENT_MARKER, render_markdown
from edgefleet.plan.membership import membership
from edgefleet.plan.policy import policy_settings, run_policy
from edgefleet.plan.transfer import add_transfer
from edgefleet.plan.worktree import base_graph
from policies.graph import Graph

__all__ = ["COMMENT_MARKER", "PLAN_FORMAT", "base_graph", "compute_plan", "policy_settings", "render_markdown", "run_policy"]

PLAN_FORMAT = "edgefleet-plan/v1"


def compute_plan(
    base: Mapping[str, Any],
    head: Mapping[str, Any],
    base_ref: str = "",
    project_dir: Path | None = None,
    policy: dict[str, Any] | None = None,
    weakens: list[str] | None = None,
) -> dict[str, Any]:
    """Everything a reviewer needs, as JSON-friendly data. Pure over the two graphs (and, for the digest rule, the files).
    `policy`: the report of the base's rules and settings on the head (base_policy.py); without it, this checkout's."""
    base_g, head_g = Graph(base["resources"]), Graph(head["resources"])
    base_m, head_m = membership(base), membership(head)
    resources = diff_resources(base["resources"], head["resources"])
    report = policy if policy is not None else run_policy(head, base, project_dir).to_dict()
    counts = {a: sum(1 for e in resources if e["action"] == a) for a in ACTIONS}
    models = diff_models(base_g.models(), head_g.models())
    rollouts = diff_rollouts(base_g, head_g, base_m, head_m)
    if project_dir is not None:
        add_transfer(base, head, rollouts, Path(project_dir), base_ref)  # bytes per ring, full and with deltas
    return {
        "format": PLAN_FORMAT,
        "project": head.get("project"),
        "stack": head.get("stack"),
        "base_ref": base_ref,
        "base_note": base.get("note"),
        "changed": any(counts.values()) or bool(models) or bool(rollouts),
        "models": models,
        "rollouts": rollouts,
        "resources": {"counts": counts, "changes": resources},
        "policy": report,
        "weakens_policy": list(weakens or []),
    }
