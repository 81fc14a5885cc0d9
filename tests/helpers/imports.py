"""Check, in a fresh interpreter, which heavy modules an import drags in."""

import subprocess
import sys


def heavy_modules_loaded_by(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in proc.stdout.strip().split(",") if m]
