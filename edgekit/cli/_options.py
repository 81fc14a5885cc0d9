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


# -- fleet commands ---------------------------------------------------------------------------------------
Broker = Annotated[
    str,
    typer.Option(
        envvar="EDGEKIT_BROKER",
        help="mqtt://HOST:PORT of the fleet's broker; a cluster's nodes separated by commas (failover in order)",
    ),
]
Db = Annotated[
    str, typer.Option(envvar="EDGEKIT_DB", help="fleet store: sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
]
Fleet = Annotated[str, typer.Option(envvar="EDGEKIT_FLEET", help="fleet name (the topic segment after edgekit/v1)")]
Packages = Annotated[
    Path, typer.Option(envvar="EDGEKIT_PACKAGES", help="package repository folder that edgekit serve answers from")
]
Since = Annotated[str, typer.Option(help="how far back (90s, 30m, 1h, 2d)")]
Group = Annotated[str | None, typer.Option(help="'all', a profile, a 'group' label's value or key=value")]
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_DB = "sqlite:///fleet.db"
DEFAULT_FLEET = "default"
DEFAULT_PACKAGES = Path("packages")


def duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h``, ``2d`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    try:
        if raw and raw[-1] in units:
            return float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        raise OptionInvalid(f"{option} {text!r} is not a duration like 90s, 5m, 1h or 2d") from None


def millis(text: str, option: str) -> float:
    """``2ms``, ``0.5ms``, ``1s`` or a bare number of milliseconds, as milliseconds."""
    raw = text.strip().lower()
    scale = 1000.0 if raw.endswith("s") and not raw.endswith("ms") else 1.0
    try:
        value = float(raw.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise OptionInvalid(f"{option} {text!r} is not a time like 2ms or 0.5ms") from None
    if value < 0:
        raise OptionInvalid(f"{option} {text!r} must not be negative")
    return value


def percent(text: str, option: str) -> float:
    """``20%`` or ``0.2`` as a fraction."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise OptionInvalid(f"{option} {text!r} is not a percentage like 20%") from None
    if value < 0:
        raise OptionInvalid(f"{option} {text!r} must not be negative")
    return value


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise OptionInvalid(f"--format {fmt!r} must be table or json")
    return fmt
