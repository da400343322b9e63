"""`edgefleet samples pull`: the samples a stack's devices captured (opt-in, docs/capture.md), for labelling."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer

from edgefleet.cli import app, console

samples_app = typer.Typer(no_args_is_help=True, help="Samples captured on devices (opt-in): pull them for labelling and retraining.")
app.add_typer(samples_app, name="samples")


def _since(text: str | None) -> float | None:
    from edgefleet_agent.contract.errors import EdgefleetError

    if text is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise EdgefleetError(
            "--since", f"{text!r} is not a date or time", "give an ISO date (2025-01-31) or time (2025-01-31T12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


@samples_app.command("pull")
def pull_cmd(
    stack: str = typer.Option(..., "--stack", "-s", help="The stack whose capture store to read."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose samples to pull."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to copy them (default: samples/<stack>/<model>)."),
    since: str = typer.Option(None, "--since", help="Only samples captured at or after this UTC date or time (ISO 8601)."),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
) -> None:
    """Copy the model's captured samples (inputs as .npz, the served model's outputs, a JSON record each) from the
    stack's capture store into OUT/<device>/<day>/, with OUT/index.csv (a `label` column to fill in) and
    OUT/index.jsonl. Exits 0 with a message when nothing was captured; 1 for an unknown stack or model, a stack that
    declares no capture destination, or a cloud store (not read from here); 5 when the store cannot be read."""
    from components.local.captures import pull_samples
    from edgefleet.config import load_stack
    from edgefleet_agent.contract.errors import EdgefleetError, FaultError

    project = Path(project_dir).resolve()
    cfg, source = load_stack(project, stack)
    models = sorted({r.model for r in cfg.rollouts})
    if model not in models:
        raise EdgefleetError(
            f"--model {model}", f"stack {stack!r} rolls out no model named {model!r}", f"use one of: {', '.join(models) or 'none'}"
        )
    dest = cfg.capture
    if dest is None:
        raise EdgefleetError(
            source,
            "this stack declares no capture destination (edgefleet:capture), so its devices capture nothing",
            "declare edgefleet:capture: {store, retention_days, purpose} and a ring's capture (docs/capture.md)",
        )
    if "://" in dest.store:
        raise EdgefleetError(
            "edgefleet:capture.store",
            f"{dest.store} is a cloud store, which `samples pull` does not read from here: it would list "
            f"{dest.store.rstrip('/')}/{model}/<device>/<day>/<id>.json and copy each with its <id>.npz, with read-only "
            "credentials for that prefix",
            "copy them with the cloud's own tools (aws s3 sync, azcopy) into a directory and label from there; see docs/capture.md",
        )
    if cfg.local is None:
        raise EdgefleetError(source, "this stack has no local platform, whose store `samples pull` reads", "see docs/capture.md")
    store = project / dest.store
    target = Path(out) if out is not None else project / "samples" / stack / model
    when = _since(since)
    try:
        result = pull_samples(store, model, target, when)
    except OSError as exc:
        raise FaultError(
            str(exc.filename or store), f"cannot read the capture store: {exc.strerror or exc}", "check the store's permissions and disk"
        ) from None
    for problem in result.skipped:
        console.print(f"skipped {problem}", highlight=False, soft_wrap=True)
    if result.copied == 0 and result.already == 0:
        console.print(
            f"nothing captured for {model} in {store}{' since ' + since if since else ''}: no ring captures, or no request has "
            "met a ring's capture criteria yet",
            highlight=False,
        )
        return
    console.print(
        f"pulled {result.copied} new sample(s) of {model} ({result.already} already there) into {target}; "
        f"index of {result.indexed}: {target / 'index.csv'}, {target / 'index.jsonl'}",
        highlight=False,
        soft_wrap=True,
    )
