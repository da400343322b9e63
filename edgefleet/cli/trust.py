"""`edgefleet trust`: the stack's TUF repository (docs/signing.md, "Update metadata")."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from edgefleet.cli import app, console

trust_app = typer.Typer(no_args_is_help=True, help="The stack's TUF update metadata: init, refresh, rotate the root, show.")
app.add_typer(trust_app, name="trust")

STORE = typer.Option(None, "--store", help="Cloud stacks: s3://<bucket> or https://<account>.blob.core.windows.net/<container>.")
SIGNING_KEY = typer.Option(
    None, "--signing-key", help="The online key: kms:<key>, a Key Vault key URL, or a key file (default: the stack's key file)."
)
PROJECT = typer.Option(Path("."), "--project-dir")


@trust_app.command("init")
def init_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    root_key: list[Path] = typer.Option(None, "--root-key", help="A root key file (repeat for several; default: the stack's)."),
    threshold: int | None = typer.Option(None, "--threshold", help="Root keys needed to sign a root (default: the stack's)."),
    store: str | None = STORE,
    signing_key: str | None = SIGNING_KEY,
    project_dir: Path = PROJECT,
) -> None:
    """Write root version 1 (signed by the root keys) and empty targets, snapshot and timestamp into the store.
    The local stack's `edgefleet up` does this on first use; cloud stacks run it once after their first `pulumi up`."""
    from components.local.signer import LocalKeySigner
    from components.local.trust import root_signers
    from edgefleet.trust import open_repository

    repo, cfg = open_repository(project_dir, stack, store, signing_key)
    signers = [LocalKeySigner(p) for p in root_key] if root_key else root_signers(project_dir, cfg, stack)
    repo.init(signers, threshold or cfg.trust.root_threshold)
    console.print(escape(f"initialised the TUF repository at {repo.storage.url} (root v1, {len(signers)} root key(s))"), soft_wrap=True)


@trust_app.command("refresh")
def refresh_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    store: str | None = STORE,
    signing_key: str | None = SIGNING_KEY,
    project_dir: Path = PROJECT,
) -> None:
    """Re-sign the timestamp (and snapshot/targets past half their life): what a scheduled job runs between rollouts,
    so devices never see metadata go stale while nothing is deployed."""
    from edgefleet.trust import open_repository

    repo, _ = open_repository(project_dir, stack, store, signing_key)
    roles = repo.refresh()
    ts = repo.state()["roles"]["timestamp"]
    console.print(escape(f"re-signed {', '.join(roles)}; timestamp v{ts['version']} expires {ts['expires']}"), soft_wrap=True)


@trust_app.command("rotate-root")
def rotate_root_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    old: list[Path] = typer.Option(..., "--old", help="Current root key files (enough to meet the current threshold)."),
    new: list[Path] = typer.Option(..., "--new", help="The next root's key files (may repeat the current ones)."),
    threshold: int = typer.Option(1, "--threshold", help="Root keys the next root needs to sign its successor."),
    online_key: str | None = typer.Option(
        None, "--online-key", help="Also replace the online key (targets, snapshot, timestamp): kms:…, a Key Vault URL or a key file."
    ),
    store: str | None = STORE,
    signing_key: str | None = SIGNING_KEY,
    project_dir: Path = PROJECT,
) -> None:
    """Write the next root.json, signed by the old root keys and the new ones. Devices follow it (each root must be
    signed by its predecessor's threshold) and keep serving their model. Run offline, where the root keys are."""
    from components.local.signer import LocalKeySigner
    from edgefleet.trust import open_repository, signer_for

    repo, cfg = open_repository(project_dir, stack, store, signing_key)
    new_online = signer_for(project_dir, cfg, online_key) if online_key else None
    md = repo.rotate_root([LocalKeySigner(p) for p in old], [LocalKeySigner(p) for p in new], threshold, new_online)
    console.print(
        escape(f"wrote root v{md.signed.version} ({len(new)} root key(s), threshold {threshold}) to {repo.storage.url}"), soft_wrap=True
    )


@trust_app.command("show")
def show_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    as_json: bool = typer.Option(False, "--json"),
    store: str | None = STORE,
    project_dir: Path = PROJECT,
) -> None:
    """Each role's version and expiry, the signed targets and the revoked versions."""
    from components.trust.repository import TrustRepository
    from edgefleet.config import load_stack
    from edgefleet.trust import storage_for

    cfg, _ = load_stack(Path(project_dir).resolve(), stack)
    state = TrustRepository(storage_for(project_dir, cfg, stack, store), None).state()
    if as_json:
        print(json.dumps(state, indent=2))
        return
    console.print(escape(f"TUF repository {state['url']}"), soft_wrap=True)
    for role, r in state["roles"].items():
        flag = " [red]EXPIRED[/]" if r["expired"] else ""
        console.print(f"  {role:9} v{r['version']:<4} expires {r['expires']}{flag}  threshold {r['threshold']}", highlight=False)
    for path, ident in state["targets"].items():
        console.print(escape(f"  target {path}: {ident.get('model')} {ident.get('version')}"), soft_wrap=True)
    for path, patch in state.get("patches", {}).items():
        console.print(
            escape(f"  patch {path}: {patch['model']} {patch['from_version']} -> {patch['to_version']}, {patch['size']} bytes"),
            soft_wrap=True,
        )
    for path, why in state["revoked"].items():
        console.print(escape(f"  revoked {why['model']} {why['version']} ({path}) at {why['at']}: {why['reason']}"), soft_wrap=True)
