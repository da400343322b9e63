"""A plan is judged by the base's policy: its settings (thresholds, enforcement levels, `production`) and its rule
code, run from the base's own checkout, so a pull request cannot loosen the rules that judge it.

What a change does to the policy itself is reported, not applied: `weakening` lists each level lowered, threshold
loosened, rule removed, `production: true → false` and stack added, and the plan shows it under a banner. Such a
change is merged after review (CODEOWNERS) and judges the pull requests after it.

The rules are imported from the base checkout in a child process, so its modules never mix with the working
tree's; a base too old to have them falls back to this checkout's rules, and the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgefleet.plan.membership import membership
from edgefleet.plan.worktree import base_worktree, empty_graph, synth_subprocess
from policies.engine import LEVELS, MANDATORY
from policies.graph import base_model_facts
from policies.rules import RULES
from policies.settings import Settings

# Thresholds of `edgefleet:policy` and the direction that loosens each.
LOOSER_WHEN_HIGHER = ("canary_max_share", "max_metric_regression")
LOOSER_WHEN_LOWER = ("min_canary_soak_seconds",)
STRICTNESS = {"disabled": 0, "advisory": 1, "mandatory": 2}

EVALUATE_IN_BASE = """
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1])
data = json.load(sys.stdin)
from policies import rules
try:
    from policies.settings import Settings
except ImportError:
    Settings = rules.Settings
known = {f.name for f in dataclasses.fields(Settings)}
settings = Settings(**{k: v for k, v in data["settings"].items() if k in known})
report = rules.evaluate(data["resources"], settings)
print(json.dumps({"report": report.to_dict(), "rules": {r.name: r.default_level for r in rules.RULES}}))
"""


@dataclass
class BasePolicy:
    """The base graph, the report the base's rules give on the head graph, and what the change does to the policy."""

    graph: dict[str, Any]
    report: dict[str, Any]
    weakens: list[str] = field(default_factory=list)
    note: str = ""  # how the rules were run, when not the base's own


def base_settings(head: Mapping[str, Any], base: Mapping[str, Any], project_dir: Path | None = None) -> Settings:
    """The settings that judge `head`: the base's `edgefleet:policy` (defaults for a stack the base lacks), the head's
    facts (ring counts, declared sizes, agent versions), and the base's models."""
    members = membership(head)
    config = {**(head.get("config") or {}), "policy": (base.get("config") or {}).get("policy") or {}}
    return Settings.from_config(
        config,
        stack=str(head.get("stack", "")),
        base_models=base_model_facts(base["resources"]) if base.get("resources") is not None else None,
        ring_devices={ro: dict(rs) for ro, rs in members.rings.items() if ro not in members.declared},
        rollout_devices={ro: n for ro, n in members.rollout_devices.items() if ro not in members.declared},
        project_dir=str(project_dir) if project_dir is not None else None,
    )


def weakening(
    base_policy: Mapping[str, Any],
    head_policy: Mapping[str, Any],
    base_rules: Mapping[str, str],
    head_rules: Mapping[str, str],
    stack_added: bool,
) -> list[str]:
    """Each way `head_policy` (with `head_rules`) judges more leniently than `base_policy` (with `base_rules`)."""
    out = []
    if stack_added:
        out.append("stack added: no base policy judged it before; the defaults judge it now")
    if base_policy.get("production") and not head_policy.get("production"):
        out.append("production: true → false")
    for key in LOOSER_WHEN_HIGHER:
        old, new = base_policy.get(key), head_policy.get(key)
        if new is not None and (old is None or float(new) > float(old)) and old != new:
            out.append(f"{key}: {old if old is not None else 'default'} → {new} (looser)")
    for key in LOOSER_WHEN_LOWER:
        old, new = base_policy.get(key), head_policy.get(key)
        if new is not None and (old is None or float(new) < float(old)) and old != new:
            out.append(f"{key}: {old if old is not None else 'default'} → {new} (looser)")
    old_floors, new_floors = base_policy.get("metric_floors") or {}, head_policy.get("metric_floors") or {}
    for name, floor in sorted(old_floors.items()):
        if name not in new_floors:
            out.append(f"metric_floors.{name}: {floor} → removed")
        elif float(new_floors[name]) < float(floor):
            out.append(f"metric_floors.{name}: {floor} → {new_floors[name]} (looser)")
    old_levels, new_levels = base_policy.get("enforcement") or {}, head_policy.get("enforcement") or {}
    for rule in sorted(set(base_rules) | set(old_levels) | set(new_levels)):
        before = old_levels.get(rule, base_rules.get(rule, MANDATORY))
        after = new_levels.get(rule, head_rules.get(rule, before))
        if before in LEVELS and after in LEVELS and STRICTNESS[after] < STRICTNESS[before]:
            out.append(f"enforcement.{rule}: {before} → {after}")
    for rule in sorted(set(base_rules) - set(head_rules)):
        out.append(f"rule removed: {rule}")
    return out


def _evaluate(tree: Path, head: Mapping[str, Any], settings: Settings) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The base checkout's rules on the head graph, or None when that checkout has no usable rules."""
    if not (tree / "policies" / "rules.py").is_file():
        return None
    payload = json.dumps({"resources": head["resources"], "settings": dataclasses.asdict(settings)})
    proc = subprocess.run(
        [sys.executable, "-c", EVALUATE_IN_BASE, str(tree)],
        input=payload,
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        return None
    out = json.loads(proc.stdout)
    return out["report"], out["rules"]


def judge_with_base(project_dir: Path, stack: str, ref: str, head: Mapping[str, Any]) -> BasePolicy:
    """Synthesizes the base and runs its rules, with its settings, on `head`; in one temporary worktree of `ref`."""
    from edgefleet.plan.policy import run_policy
    from edgefleet.synth import project_name

    project = project_name(project_dir)
    with base_worktree(project_dir, ref) as tree:
        if not (tree / "Pulumi.yaml").is_file():
            base = empty_graph(project, stack, f"the project did not exist at {ref}")
        elif not (tree / "stacks" / f"Pulumi.{stack}.yaml").is_file():
            base = empty_graph(project, stack, f"stack {stack} did not exist at {ref}")
        else:
            base = synth_subprocess(tree, stack, where=ref)
        settings = base_settings(head, base, project_dir)
        judged = _evaluate(tree, head, settings)
    head_rules = {r.name: r.default_level for r in RULES}
    note = ""
    if judged is None:
        note = f"the base ({ref}) has no rules this checkout can run; this checkout's rules judged the change"
        report = run_policy(dict(head), base, project_dir, settings=settings).to_dict()
        base_rules = head_rules
    else:
        report, base_rules = judged
    added = not (base.get("config") or {})
    weakens = weakening(
        (base.get("config") or {}).get("policy") or {}, (head.get("config") or {}).get("policy") or {}, base_rules, head_rules, added
    )
    report["judged_by"] = "base" if judged is not None else "head"
    return BasePolicy(base, report, weakens, note)
