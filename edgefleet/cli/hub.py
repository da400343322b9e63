"""`edgefleet hub recover`: rebuild a damaged local hub from what is still readable."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli import app, console

hub_app = typer.Typer(no_args_is_help=True, help="The local stack's hub (a SQLite file): repair.")
app.add_typer(hub_app, name="hub")


@hub_app.command("recover")
def recover_cmd(
    hub: Path = typer.Option(None, "--hub", help="The hub file (default: the stack's edgefleet:local.hub)."),
    stack: str = typer.Option(None, "--stack", "-s", help="The stack whose hub to recover (when --hub is not given)."),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
) -> None:
    """Move a damaged hub aside (kept as <hub>.damaged-<time>) and build a new one from every row SQLite can still read:
    rollout records, ring states, the device registry, what devices ever served. Device reports start afresh."""
    from components.local.recover import KEPT, recover
    from edgefleet.config import load_stack
    from edgefleet_agent.contract.errors import EdgefleetError

    if hub is None:
        if stack is None:
            raise EdgefleetError("--hub", "name the hub to recover", "pass --hub PATH, or --stack STACK for the stack's own hub")
        cfg, source = load_stack(Path(project_dir).resolve(), stack)
        if cfg.local is None:
            raise EdgefleetError(source, "this stack has no local platform, so no hub", "pass --hub PATH")
        hub = Path(project_dir).resolve() / cfg.local.hub
    if not hub.is_file():
        raise EdgefleetError(str(hub), "no hub file here", "pass the hub named in the error that sent you here")
    done = recover(hub)
    console.print(f"moved the damaged hub to {done.moved_to}", highlight=False)
    for table in KEPT:
        lost = f"; unreadable after that: {done.lost[table]}" if table in done.lost else ""
        console.print(f"  {table}: {done.kept.get(table, 0)} rows kept{lost}", highlight=False)
    console.print(f"new hub at {hub}; device reports start afresh as devices report again", highlight=False)
