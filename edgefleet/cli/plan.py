"""`edgefleet plan`: what a change does to which devices, as Markdown for a PR comment (or JSON).

Exits with EXIT_POLICY, after every output is written, when a mandatory rule fails: the plan already ran
the rules against the base, so CI gates on it without synthesizing the base a second time.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgefleet.cli import EXIT_POLICY, app, err_console


@app.command("plan")
def plan_cmd(
    stack: str = typer.Option(..., "--stack", "-s", help="Stack name: reads stacks/Pulumi.<stack>.yaml."),
    base: str = typer.Option(
        ..., "--base", "-b", help="Git ref to compare against (e.g. origin/main): synthesized from a temporary worktree."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON instead of Markdown."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the output here (the PR comment body in CI)."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Also write the plan as JSON here, from the same run."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", help="The Pulumi project (holds Pulumi.yaml)."),
) -> None:
    """Diff the stack at --base against the working tree, offline: models, rings and devices, resources, policy."""
    from edgefleet.plan import compute_plan, render_markdown
    from edgefleet.plan.base_policy import judge_with_base
    from edgefleet.synth import synth
    from edgefleet_agent.fsutil import atomic_write_bytes

    project_dir = project_dir.resolve()
    err_console.print(f"synthesizing stack {stack} at {base} (temporary worktree) and in the working tree…", highlight=False)
    new = synth(project_dir, stack)
    judged = judge_with_base(project_dir, stack, base, new)  # the base's rules and settings judge the change
    if judged.note:
        err_console.print(judged.note, highlight=False)
    plan = compute_plan(judged.graph, new, base_ref=base, project_dir=project_dir, policy=judged.report, weakens=judged.weakens)
    as_data = json.dumps(plan, indent=2, sort_keys=True) + "\n"
    text = as_data if as_json else render_markdown(plan) + "\n"
    print(text, end="")
    if out is not None:
        atomic_write_bytes(out, text.encode())
    if json_out is not None:
        atomic_write_bytes(json_out, as_data.encode())
    if plan["weakens_policy"]:
        err_console.print(
            f"this change weakens the policy ({len(plan['weakens_policy'])} item(s)): review it; the base's policy judged it",
            highlight=False,
        )
    if plan["policy"]["blocking"]:
        err_console.print(f"blocked by mandatory rule(s): {', '.join(plan['policy']['blocking'])}", highlight=False)
        # Not typer.Exit: under main()'s standalone_mode=False typer *returns* that code and main() drops it.
        raise SystemExit(EXIT_POLICY)
