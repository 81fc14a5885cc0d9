"""``edgekit profiles list|show|probe``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.console import err, out, print_json

app = typer.Typer(help="Device profiles: list, show, or probe this machine.", no_args_is_help=True)
Format = Annotated[str, typer.Option("--format", help="table or json")]


@app.command("list")
def list_cmd(fmt: Format = "table") -> None:
    """List the known device profiles."""
    from edgekit.profiles import list_profiles

    profiles = list_profiles()
    if fmt == "json":
        print_json([p.model_dump(mode="json") for p in profiles])
        return
    from rich.table import Table

    table = Table("name", "arch", "cores", "memory", "runtimes (preferred first)", "precisions", "tolerance")
    for p in profiles:
        table.add_row(
            p.name,
            p.arch,
            str(p.cores),
            f"{p.memory_mb} MB",
            ", ".join(p.runtimes),
            ", ".join(p.precisions),
            f"{p.accuracy_tolerance:.1%}",
        )
    out.print(table)


@app.command("show")
def show(name: str, fmt: Format = "yaml") -> None:
    """Show one profile (by name or YAML path)."""
    from edgekit.profiles import load_profile, profile_to_yaml

    profile = load_profile(name)
    if fmt == "json":
        print_json(profile.model_dump(mode="json"))
    else:
        out.print(profile_to_yaml(profile), end="", highlight=False)


@app.command("probe")
def probe(
    out_file: Annotated[Path | None, typer.Option("--out", help="write the profile YAML here")] = None,
    name: Annotated[str | None, typer.Option(help="profile name (default: host name)")] = None,
) -> None:
    """Measure this machine (cores, memory, ISA flags, OpenVINO devices, ORT providers) and write a profile."""
    from edgekit.errors import OutputNotWritable
    from edgekit.profiles import probe as run_probe
    from edgekit.profiles import profile_to_yaml

    text = profile_to_yaml(run_probe(name=name))
    if out_file is None:
        out.print(text, end="", highlight=False)
        return
    try:
        out_file.write_text(text)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write {out_file} ({exc.strerror}); choose a writable --out") from None
    err.print(f"wrote {out_file}; review power and tolerance before use")
