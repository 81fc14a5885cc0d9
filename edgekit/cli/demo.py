"""``edgekit demo`` (what ``make demo`` runs): a fleet on this machine, end to end, offline."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from edgekit.console import err, out


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="where the demo writes its outputs")] = Path("demo-out"),
) -> None:
    """Train and package digits_cnn for two profiles, start a broker, edgekit serve and three device agents,
    deploy, send inference requests, refuse a tampered package, roll 2.0 out in waves, print the fleet and
    write the HTML report; then stop every child (also on Ctrl-C)."""
    from edgekit.cli.walkthrough import Demo, _prepare

    _prepare(out_dir)
    t0 = time.monotonic()
    walk = Demo(
        out_dir, say=lambda m: err.print(f"[bold cyan]demo[/] {m}", highlight=False, soft_wrap=True), show=out.print
    )

    def interrupted(*_: object) -> None:
        # Remembered as well as raised: a KeyboardInterrupt that lands inside a finalizer (__del__, a weakref
        # callback) is printed and dropped by Python, which would let the demo run on after a Ctrl-C; the walk
        # checks the flag at every step and wait, so a dropped one still stops it there.
        walk.interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # a `kill` stops the children too, like Ctrl-C
    signal.signal(signal.SIGINT, interrupted)  # also where a shell started the demo with SIGINT ignored
    try:
        walk.run()
    except KeyboardInterrupt:
        codes = walk.close()
        err.print(f"demo interrupted; stopped {', '.join(codes) or 'nothing'}; outputs so far in {out_dir}")
        raise typer.Exit(130) from None
    finally:
        codes = walk.close()
    err.print(f"demo finished in {time.monotonic() - t0:.0f} s; stopped {', '.join(codes)}; outputs in "
              f"{out_dir.resolve()} (logs/ holds every child's output)", highlight=False)  # fmt: skip
