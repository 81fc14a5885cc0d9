"""The ``edgekit`` command. Only typer is imported here so ``edgekit --help`` stays instant; every command
imports what it needs when it runs. User errors become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import sys

import typer

from edgekit.cli import broker, demo, fleet, keys, package, packages, profiles, sim

app = typer.Typer(
    name="edgekit",
    help="Compress, convert and ship ML models to edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(profiles.app, name="profiles")
app.add_typer(keys.app, name="keys")
app.command("package")(package.package)
app.command("pack")(packages.pack)
app.command("verify")(packages.verify)
app.command("inspect")(packages.inspect)
app.command("serve")(fleet.serve)
app.command("deploy")(fleet.deploy)
app.command("rollout")(fleet.rollout)
app.add_typer(fleet.app, name="fleet")
app.add_typer(broker.app, name="broker")
app.add_typer(sim.app, name="sim")
app.command("demo")(demo.demo)


def main() -> None:
    from edgekit_agent.errors import PackageError

    from edgekit.errors import EdgekitError

    try:
        app(prog_name="edgekit")
    except EdgekitError as exc:
        from rich.markup import escape

        from edgekit.console import err

        err.print(f"[bold red]error[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except PackageError as exc:
        from rich.markup import escape

        from edgekit.console import err

        err.print(f"[bold red]refused[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: one line, the traceback on request
        import os
        import traceback

        from rich.markup import escape

        from edgekit.console import err

        if os.environ.get("EDGEKIT_DEBUG"):
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0][:300]
        err.print(
            f"[bold red]internal error[/] {type(exc).__name__}: {escape(first)} (set EDGEKIT_DEBUG=1 for the traceback)"
        )
        sys.exit(1)
