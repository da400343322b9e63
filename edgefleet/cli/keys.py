"""`edgefleet keys`: local signing keys (cloud stacks create theirs in KMS / Key Vault)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from components.local.signer import create_key_file, public_key_path
from edgefleet.cli import app, console

keys_app = typer.Typer(no_args_is_help=True, help="Create local ECDSA P-256 signing keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(path: Path = typer.Argument(..., help="Where to write the private key (PEM, mode 0600).")) -> None:
    """Create a P-256 key pair: PATH (private) and PATH.pub.pem (give this one to devices)."""
    create_key_file(path)
    console.print(escape(f"wrote {path} (private, 0600) and {public_key_path(path)} (public)"), soft_wrap=True)
