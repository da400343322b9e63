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
    """Check the stack against edgefleet's rules (signing, digests, canaries, metrics, agent, hardware, hardening)."""
    from edgefleet.plan import base_graph, policy_settings, run_policy
    from edgefleet.synth import synth
    from edgefleet_agent.fsutil import atomic_write_bytes
    from policies.crossguard import crossguard_config

    project_dir = project_dir.resolve()
    graph = synth(project_dir, stack)
    old = base_graph(project_dir, stack, base) if base else None
    report = run_policy(graph, old, project_dir)
    if pack_config is not None:
        config = crossguard_config(policy_settings(graph, old))
        atomic_write_bytes(pack_config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        err_console.print(
            f"wrote {pack_config}: pass it to `pulumi preview --policy-pack policies --policy-pack-config {pack_config}`", highlight=False
        )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        table = Table(
            title=f"policy · stack {stack}" + (f" · base {base}" if base else " · no base (regression rules not run)"), show_lines=True
        )
        for col in ("rule", "level", "result"):
            table.add_column(col, no_wrap=True)
        table.add_column("details", overflow="fold")
        for r in report.results:
            result = r.status if not (r.status == "failed" and r.level == "advisory") else "advisory"
            details = "\n".join(("(unverified) " if f.unverified else "") + f.message for f in r.findings) or r.note
            table.add_row(r.name, r.level, f"[{STYLE.get(r.status, '')}]{result}[/]", escape(details))
        console.print(table)
        if report.blocking:
            console.print(
                f"[bold red]blocked[/] by {len(report.blocking)} mandatory rule(s): {', '.join(r.name for r in report.blocking)}",
                highlight=False,
            )
        else:
            console.print(f"[green]passed[/]: no mandatory rule fails ({len(report.advisories)} advisory finding(s))", highlight=False)
    if report.blocking:
        # Not typer.Exit: under main()'s standalone_mode=False typer *returns* that code and main() drops it.
        raise SystemExit(EXIT_POLICY)
