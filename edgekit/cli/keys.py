"""``edgekit keys init|show``: the ed25519 key that signs packages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import _options as opt
from edgekit.console import out, print_json

app = typer.Typer(help="Create and show package signing keys.", no_args_is_help=True)

KeyDir = Annotated[
    Path | None, typer.Option("--dir", help="key directory (default: $EDGEKIT_HOME/keys or ~/.edgekit/keys)")
]
KeyName = Annotated[str, typer.Option("--name", help="key file stem: NAME.key / NAME.pub")]


def _print(info, fmt: str) -> None:  # info: edgekit.keys.KeyInfo
    if fmt == "json":
        print_json(info.to_json())
        return
    out.print(f"key id       {info.key_id}", highlight=False)
    out.print(f"private key  {info.private_path}{' (encrypted)' if info.encrypted else ''}", highlight=False)
    out.print(f"public key   {info.public_path}  <- give this to devices (--trust)", highlight=False)


@app.command("init")
def init(
    directory: KeyDir = None,
    name: KeyName = "edgekit",
    passphrase: Annotated[
        bool, typer.Option("--passphrase", help="encrypt the private key (prompted, or $EDGEKIT_KEY_PASSPHRASE)")
    ] = False,
    fmt: opt.Format = "table",
) -> None:
    """Create an ed25519 signing key (private file mode 0600) and its public key; never overwrites."""
    from edgekit.keys import PASSPHRASE_ENV, init_keys

    secret = None
    if passphrase:
        secret = os.environ.get(PASSPHRASE_ENV) or typer.prompt(
            "passphrase", hide_input=True, confirmation_prompt=True, err=True
        )
    _print(init_keys(directory, name=name, passphrase=secret), fmt)


@app.command("show")
def show(directory: KeyDir = None, name: KeyName = "edgekit", fmt: opt.Format = "table") -> None:
    """Print the key id and file paths of a signing key."""
    from edgekit.keys import show_key

    _print(show_key(directory, name=name), fmt)
