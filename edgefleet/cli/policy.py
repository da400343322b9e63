"""`edgefleet policy`: the rules (policies/rules.py) over the stack's declared graph, offline.

Exits with EXIT_POLICY when a mandatory rule fails, so CI can gate on it. The same rules run under
`pulumi preview --policy-pack policies`; `--pack-config` writes that pack's config from the stack file.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli import EXIT_POLICY, app, console, err_console

STYLE = {"passed": "green", "failed": "red", "not-applicable": "dim", "disabled": "dim"}


@app.command("policy")
def policy_cmd(
    stack: str = typer.Option(..., "--stack", "-s", help="Stack name: reads stacks/Pulumi.<stack>.yaml."),
    base: str | None = typer.Option(
        None, "--base", "-b", help="Git ref of the versions being replaced (enables the regression and I/O rules)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    pack_config: Path | None = typer.Option(
        None, "--pack-config", help="Write a --policy-pack-config file for `pulumi preview --policy-pack policies`."
    ),
    project_dir: Path = typer.Option(Path("."), "--project-dir", help="The Pulumi project (holds Pulumi.yaml)."),
) -> None:
    """Check the stack against edgefleet's rules (signing, digests, canaries, metrics, agent, hardware, hardening). With
    --base, the base's rules and policy settings judge the stack, as `edgefleet plan` does: a change cannot loosen the
    rules that judge it."""
    from edgefleet.plan import policy_settings, run_policy
    from edgefleet.plan.base_policy import base_settings, judge_with_base
    from edgefleet.synth import synth
    from edgefleet_agent.fsutil import atomic_write_bytes
    from policies.crossguard import crossguard_config

    project_dir = project_dir.resolve()
    graph = synth(project_dir, stack)
    weakens: list[str] = []
    if base:
        judged = judge_with_base(project_dir, stack, base, graph)
        report, weakens, settings = judged.report, judged.weakens, base_settings(graph, judged.graph, project_dir)
        if judged.note:
            err_console.print(judged.note, highlight=False)
    else:
        report, settings = run_policy(graph, None, project_dir).to_dict(), policy_settings(graph, None)
    if pack_config is not None:  # the CrossGuard pack gets the same settings: the base's, with --base
        config = crossguard_config(settings)
        atomic_write_bytes(pack_config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        err_console.print(
            f"wrote {pack_config}: pass it to `pulumi preview --policy-pack policies --policy-pack-config {pack_config}`", highlight=False
        )
    if as_json:
        print(json.dumps({**report, "weakens_policy": weakens}, indent=2, sort_keys=True))
    else:
        table = Table(
            title=f"policy · stack {stack}" + (f" · judged by base {base}" if base else " · no base (regression rules not run)"),
            show_lines=True,
        )
        for col in ("rule", "level", "result"):
            table.add_column(col, no_wrap=True)
        table.add_column("details", overflow="fold")
        for r in report["rules"]:
            result = r["status"] if not (r["status"] == "failed" and r["level"] == "advisory") else "advisory"
            details = "\n".join(("(unverified) " if f["unverified"] else "") + f["message"] for f in r["findings"]) or r["note"]
            table.add_row(r["name"], r["level"], f"[{STYLE.get(r['status'], '')}]{result}[/]", escape(details))
        console.print(table)
        for w in weakens:
            console.print(f"[yellow]weakens policy:[/] {escape(w)}", highlight=False)
        advisories = sum(1 for r in report["rules"] if r["status"] == "failed" and r["level"] == "advisory")
        if report["blocking"]:
            console.print(
                f"[bold red]blocked[/] by {len(report['blocking'])} mandatory rule(s): {', '.join(report['blocking'])}", highlight=False
            )
        else:
            console.print(f"[green]passed[/]: no mandatory rule fails ({advisories} advisory finding(s))", highlight=False)
    if report["blocking"]:
        # Not typer.Exit: under main()'s standalone_mode=False typer *returns* that code and main() drops it.
        raise SystemExit(EXIT_POLICY)
