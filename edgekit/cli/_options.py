"""Options shared by the commands that sign packages (package, pack) and those that verify (verify, inspect)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError


class OptionInvalid(EdgekitError):
    pass


Key = Annotated[
    Path | None, typer.Option(help="ed25519 private key (edgekit keys init); passphrase from $EDGEKIT_KEY_PASSPHRASE")
]
Name = Annotated[str | None, typer.Option(help="package name (default: the model's name)")]
Version = Annotated[str | None, typer.Option("--version", help="package version label (default: the counter)")]
Counter = Annotated[
    int | None, typer.Option(help="monotonic counter devices compare against (default: issued_at in Unix seconds)")
]
IssuedAt = Annotated[
    str | None, typer.Option(help="UTC time YYYY-MM-DDTHH:MM:SSZ (default: $SOURCE_DATE_EPOCH or now)")
]
ExpiresIn = Annotated[int, typer.Option(help="days the package stays valid")]
Trust = Annotated[list[Path], typer.Option(help="trusted public key (.pub) or a directory of them; repeatable")]
Revoked = Annotated[list[str], typer.Option(help="revoked key id (ed25519:...); repeatable")]
Format = Annotated[str, typer.Option("--format", help="table or json")]


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise OptionInvalid(f"--issued-at {text!r} is not a UTC time like 2026-11-23T12:00:00Z") from None


def signing(
    key: Path,
    *,
    name: str | None,
    version: str | None,
    counter: int | None,
    issued_at: str | None,
    expires_in: int,
):  # -> edgekit.edgepkg.Signing (imported lazily to keep --help instant)
    from edgekit.edgepkg import Signing

    if expires_in <= 0:
        raise OptionInvalid(f"--expires-in {expires_in} must be a positive number of days")
    if counter is not None and counter < 1:
        raise OptionInvalid(f"--counter {counter} must be 1 or more")
    return Signing(
        key=key,
        name=name,
        version=version,
        counter=counter,
        issued_at=parse_time(issued_at),
        expires_in=timedelta(days=expires_in),
    )
