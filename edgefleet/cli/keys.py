"""`edgefleet keys`: local signing keys (cloud stacks create theirs in KMS / Key Vault)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from components.local.signer import create_key_file, public_key_path
from edgefleet.cli import app, console

keys_app = typer.Typer(no_args_is_help=True, help="Create local ECDSA P-256 keys: the stack's signing key and its TUF root key(s).")
app.add_typer(keys_app, name="keys")


ROLES = {
    "signing": ".edgefleet/keys/signing.pem",  # online: manifests, rollback orders, TUF targets/snapshot/timestamp
    "root": ".edgefleet/keys/root.pem",  # offline: TUF root metadata only
}


@keys_app.command("create")
def create(
    path: Path | None = typer.Argument(None, help="Where to write the private key (PEM, mode 0600); default: the role's path."),
    role: str = typer.Option("signing", "--role", help="signing (the stack's online key) or root (a TUF root key, kept offline)."),
) -> None:
    """Create a P-256 key pair: PATH (private) and PATH.pub.pem. The only command that makes keys: `edgefleet up` and
    the providers never do. --role root makes a key for the stack's TUF root (edgefleet:trust.root_keys)."""
    if role not in ROLES:
        raise typer.BadParameter(f"--role is one of {', '.join(ROLES)}, not {role!r}")
    path = path or Path(ROLES[role])
    create_key_file(path)
    console.print(escape(f"wrote {path} (private, 0600) and {public_key_path(path)} (public)"), soft_wrap=True)
    if role == "root":
        console.print(
            escape(
                "this key signs only the stack's TUF root: list it under edgefleet:trust.root_keys, and once the repository is "
                "initialised keep it offline (it is needed again only for `edgefleet trust rotate-root`)"
            ),
            soft_wrap=True,
        )
