"""``edgekit pack | verify | inspect``: seal an output directory, check a package as a device would, show one.

Verification is ``edgekit_agent.verify`` — the code devices run — so a package that passes here passes there
(given the same trusted keys, profile and counter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.cli import _options as opt
from edgekit.console import err, out, print_json

PackageArg = Annotated[Path, typer.Argument(help="the .edgepkg file")]


def pack(
    source: Annotated[Path, typer.Argument(help="a directory written by edgekit package")],
    key: Annotated[Path, typer.Option(help="ed25519 private key (edgekit keys init)")],
    out_path: Annotated[Path | None, typer.Option("--out", help="package file or directory (default: SOURCE)")] = None,
    name: opt.Name = None,
    version: opt.Version = None,
    counter: opt.Counter = None,
    issued_at: opt.IssuedAt = None,
    expires_in: opt.ExpiresIn = 365,
    fmt: opt.Format = "table",
) -> None:
    """Sign an already packaged directory into a .edgepkg (re-sign, bump the counter, rotate keys)."""
    from edgekit.edgepkg import write_edgepkg

    sign = opt.signing(key, name=name, version=version, counter=counter, issued_at=issued_at, expires_in=expires_in)
    result = write_edgepkg(source, out_path or source, sign)
    if fmt == "json":
        print_json(result.to_json())
        return
    m = result.to_json()
    out.print(
        f"signed {m['path']}: {m['name']} {m['version']} counter {m['counter']} for {m['profile']}, "
        f"{m['size']:,} bytes, key {m['key_id']}, valid until {m['expires_at']}",
        highlight=False,
    )


def _verify(
    package: Path, *, trust: list[Path], revoked: list[str], profile: str | None, min_counter: int | None
) -> Any:
    from edgekit_agent.trust import TrustError, TrustStore
    from edgekit_agent.verify import verify_package

    store = None
    if trust:
        try:
            store = TrustStore.load(trust, revoked=revoked)
        except TrustError as exc:
            raise opt.OptionInvalid(str(exc)) from None
    return verify_package(package, trust=store, profile=profile, min_counter=min_counter)


def _refused(exc: Any, fmt: str, extra: dict[str, Any] | None = None) -> None:
    from rich.markup import escape

    if fmt == "json":
        print_json({**(extra or {}), "verification": {"ok": False, "reason": exc.reason, "error": exc.one_line()}})
    err.print(f"[bold red]refused[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


def verify(
    package: PackageArg,
    trust: opt.Trust,
    revoked: opt.Revoked = [],  # noqa: B006 (typer needs a list default)
    profile: Annotated[str | None, typer.Option(help="refuse packages built for another profile")] = None,
    min_counter: Annotated[int | None, typer.Option(help="refuse a counter below this (the installed one + 1)")] = None,
    fmt: opt.Format = "table",
) -> None:
    """Verify a package exactly as a device does; exit 0 when it would be accepted, 4 when refused."""
    from edgekit_agent.errors import PackageError

    try:
        result = _verify(package, trust=trust, revoked=revoked, profile=profile, min_counter=min_counter)
    except PackageError as exc:
        _refused(exc, fmt)
        return
    if fmt == "json":
        print_json({"verification": result.to_json()})
        return
    m = result.manifest.summary()
    out.print(
        f"OK {package}: {m['name']} {m['version']} (counter {m['counter']}) for {m['profile']} on {m['runtime']}, "
        f"signed by {m['key_id']}, valid until {m['expires_at']}, sha256 {result.sha256}",
        highlight=False,
    )


def inspect(
    package: PackageArg,
    trust: opt.Trust = [],  # noqa: B006
    revoked: opt.Revoked = [],  # noqa: B006
    fmt: opt.Format = "table",
) -> None:
    """Show a package's manifest, compression report and verification result (signature checked with --trust)."""
    from edgekit_agent.errors import PackageError
    from edgekit_agent.verify import read_manifest

    try:
        result = _verify(package, trust=trust, revoked=revoked, profile=None, min_counter=None)
    except PackageError as exc:
        try:
            claimed = {"manifest_unverified": read_manifest(package)}
        except PackageError:
            claimed = {}
        _refused(exc, fmt, claimed)
        return
    raw = json.loads(result.manifest_bytes)
    if fmt == "json":
        print_json({"manifest": raw, "verification": result.to_json()})
        return
    _render(raw, result)


def _render(raw: dict[str, Any], result: Any) -> None:
    from rich.table import Table

    m = result.manifest.summary()
    out.print(f"[bold]{m['name']}[/] {m['version']}  counter {m['counter']}  profile {m['profile']}", highlight=False)
    out.print(f"runtime {m['runtime']} ({m['precision']})  model {raw['model']['entry']}", highlight=False)
    out.print(f"issued {m['issued_at']}  expires {m['expires_at']}  key {m['key_id']}", highlight=False)
    out.print(f"signature: {result.to_json()['signature']}; all file hashes match; sha256 {result.sha256}")
    io = Table(title="inputs / outputs")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in raw[kind]:
            io.add_row(kind[:-1], t["name"], t["dtype"], str(["?" if d is None else d for d in t["shape"]]))
    out.print(io)
    files = Table(title="files")
    for col in ("path", "bytes", "sha256"):
        files.add_column(col, justify="right" if col == "bytes" else "left")
    for f in raw["files"]:
        files.add_row(f["path"], f"{f['size']:,}", f["sha256"][:16] + "…")
    out.print(files)
    steps = raw.get("report", {}).get("steps", [])
    if steps:
        table = Table(title="compression report")
        for col in ("step", "params", "size", "p50 ms", "metric", "drop"):
            table.add_column(col)
        for s in steps:
            table.add_row(
                s["name"], f"{s['params']:,}", f"{s['size_bytes']:,}", f"{s['latency_ms']:.3f}",
                f"{s['metric_name']} {s['metric']:.4f}", f"{s['performance_drop']:.2%}",
            )  # fmt: skip
        out.print(table)
