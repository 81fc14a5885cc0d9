"""Shared by every benchmark section: the machine line (CPU, cores, ISA flags), the section header, logging.

``python -m edgekit.bench`` (``__main__``) runs the sections; this package is not part of the wheel.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    from edgekit.profiles import cpu_name

    system = f"{platform.system()} {platform.release()}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def isa() -> list[str]:
    """Recorded with every section: INT8 can win on one ISA and lose on another, so a figure names its flags."""
    from edgekit.profiles import int8_speed_flags

    return int8_speed_flags()


def log(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


def header(res: dict[str, Any]) -> str:
    if "cpu_flags" not in res:
        flags = "CPU flags not recorded by this run"
    else:
        flags = "CPU flags " + ("/".join(res["cpu_flags"]) or "none of avx2/avx512_vnni/avx_vnni/amx_int8")
    return f"Measured {res['date']} on {res['machine']} ({flags}) with `{res['command']}`."
