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


def side_venv(venv: Path, installs: list[list[str]], what: str, env: dict[str, str] | None = None) -> Path:
    """The Python of a bench-only virtualenv (a peer tool whose dependencies must not move ours), created on
    first use: each of ``installs`` is one ``pip install`` argument list, run in order."""
    import subprocess

    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    log(f"installing {what} into {venv} (once)")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for cmd in ([sys.executable, "-m", "venv", "--clear", str(venv)], *([*pip, *args] for args in installs)):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False,
                              env=os.environ | (env or {}))  # fmt: skip
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"installing {what} failed ({tail})")
    stamp.touch()
    return python


def log(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


def header(res: dict[str, Any]) -> str:
    if "cpu_flags" not in res:
        flags = "CPU flags not recorded by this run"
    else:
        flags = "CPU flags " + ("/".join(res["cpu_flags"]) or "none of avx2/avx512_vnni/avx_vnni/amx_int8")
    return f"Measured {res['date']} on {res['machine']} ({flags}) with `{res['command']}`."
