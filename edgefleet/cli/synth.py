"""`edgefleet synth`: the declared graph of a stack, offline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgefleet.cli import app, console


@app.command("synth")
def synth_cmd(
    stack: str = typer.Option(..., "--stack", "-s", help="Stack name: reads stacks/Pulumi.<stack>.yaml."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the graph JSON here (default: stdout)."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", help="The Pulumi project (holds Pulumi.yaml)."),
) -> None:
    """Evaluate the Pulumi program under Pulumi's mock runtime (no CLI, no credentials) and write the declared graph."""
    from edgefleet.synth import dumps, synth
    from edgefleet_agent.fsutil import atomic_write_bytes

    graph = synth(project_dir, stack)
    text = dumps(graph)
    if out is None:
        print(text, end="")
    else:
        atomic_write_bytes(out, text.encode())
        console.print(escape(f"wrote {out}: {len(graph['resources'])} resources in stack {stack}"), highlight=False, soft_wrap=True)
