"""``make test-arm64``: Debian bookworm arm64 (the base of Raspberry Pi OS) under user-mode emulation.

``python tests/helpers/arm64.py`` prepares it; ``tests/agent/test_arm64.py`` uses it. Everything lands in
``.arm64/`` (git-ignored) and nothing is installed system-wide, no chroot, no binfmt:

1. ``debootstrap`` (bookworm's .deb) and ``qemu-user`` (trixie's: its static ``qemu-aarch64`` 10.0 runs
   onnxruntime 1.32; bookworm's 7.2 segfaults importing it) are fetched with apt into a private state directory
   and unpacked with ``dpkg-deb -x``.
2. ``debootstrap --foreign --arch=arm64 --variant=minbase`` fetches a bookworm arm64 userland with python3 and
   python3-venv; every .deb is unpacked into the root (the second stage would need a chroot).
3. The agent's pinned aarch64 wheels (``constraints.txt``) and the agent's own wheel go into a wheelhouse; then,
   emulated, the README's install: ``python3 -m venv`` and ``pip install --no-index --find-links WHEELHOUSE
   'edgekit-agent[onnxruntime,openvino]'`` into ``.arm64/venv``. Programs run on qemu's Cortex-A72 (``CPU``).

A stamp records what was prepared (the pins and the steps' ``LAYOUT``): a second run with nothing changed
returns at once; when only the agent's sources changed, only its wheel is rebuilt and reinstalled (~10 s).
Needs network to deb.debian.org and pypi.org, about 600 MB of disk, and root for debootstrap.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/arm64.py
CACHE = ROOT / ".arm64"
ROOTFS, QEMU_DIR, VENV, WHEELS = CACHE / "rootfs", CACHE / "qemu", CACHE / "venv", CACHE / "wheelhouse"
QEMU = QEMU_DIR / "usr" / "bin" / "qemu-aarch64"
PYTHON = ROOTFS / "usr" / "bin" / "python3.11"
STAMP, AGENT_STAMP = CACHE / "ready", CACHE / "agent-installed"
MIRROR = "http://deb.debian.org/debian"
LAYOUT = 2
AGENT_PINS = ("cryptography", "paho-mqtt", "onnxruntime", "numpy", "openvino", "openvino-telemetry")
# bookworm's glibc is 2.36: every manylinux tag up to it (OpenVINO's aarch64 wheels are manylinux_2_31)
PLATFORMS = (*(f"manylinux_2_{v}_aarch64" for v in range(36, 16, -1)), "manylinux2014_aarch64")
# the Raspberry Pi 4's core (ARMv8.0-A: NEON, no dot product, no SVE). qemu's default "max" CPU offers SVE2 and
# SME, and OpenVINO's kernels for those computed wrong outputs under qemu 10.0 (digits: off by 82 against the
# sample, so the agent's smoke test refused it); on the A72 model both runtimes match x86.
CPU = "cortex-a72"


class PrepareFailed(Exception):
    """A step that did not work; the message names it and what it needs."""


def _run(cmd: list[str], what: str, **kw) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PrepareFailed(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")


def emulated(*args: str | Path) -> list[str]:
    """The command line that runs an aarch64 program of the root under qemu (its libraries from the root)."""
    return [str(QEMU), "-cpu", CPU, "-L", str(ROOTFS), *map(str, args)]


def _wanted() -> str:
    pins = {line.split("==")[0].lower(): line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line}  # fmt: skip
    # what the cache is made of (bump LAYOUT when the steps change) and the agent's dependency pins
    made_of = repr((LAYOUT, MIRROR, PLATFORMS, AGENT_PINS)).encode()
    digest = hashlib.sha256(made_of + (ROOT / "agent" / "pyproject.toml").read_bytes())
    return "\n".join([*sorted(pins.values()), digest.hexdigest()]) + "\n"


def _agent_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "agent").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".toml", ".typed"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ready() -> bool:
    """The emulated userland, its pinned wheels and this checkout's agent installed in it."""
    base = STAMP.exists() and STAMP.read_text() == _wanted() and QEMU.exists() and (VENV / "bin" / "python").exists()
    return base and AGENT_STAMP.exists() and AGENT_STAMP.read_text() == _agent_digest()


def _apt_fetch(work: Path) -> None:
    """debootstrap from bookworm and qemu-user from trixie, through a private apt state (nothing installed)."""
    state = work / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(f"deb {MIRROR} bookworm main\ndeb {MIRROR} trixie main\n")
    opts = [f"-oDir::Etc::SourceList={state / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={state / 'lists'}", f"-oDir::Cache={state / 'cache'}"]  # fmt: skip
    _run(["apt-get", *opts, "update"], f"apt-get update against {MIRROR}")
    _run(["apt-get", *opts, "download", "debootstrap/bookworm", "qemu-user/trixie"], "apt-get download", cwd=work)
    for deb, dest in (("debootstrap_*.deb", work / "debootstrap"), ("qemu-user_*.deb", QEMU_DIR)):
        _run(["dpkg-deb", "-x", next(work.glob(deb)), dest], f"unpacking {deb}")


def _rootfs(work: Path) -> None:
    tool = work / "debootstrap"
    env = os.environ | {"DEBOOTSTRAP_DIR": str(tool / "usr" / "share" / "debootstrap")}
    _run([tool / "usr" / "sbin" / "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
          "--include=python3,python3-venv,ca-certificates", "bookworm", ROOTFS, MIRROR],
         "debootstrap --foreign (needs root and network)", env=env)  # fmt: skip
    for deb in sorted((ROOTFS / "var" / "cache" / "apt" / "archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", deb, ROOTFS], f"unpacking {deb.name}")


def _wheelhouse() -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--index-url",
          "https://pypi.org/simple", *platforms, "--python-version", "3.11", "--implementation", "cp",
          "--only-binary=:all:", "-c", ROOT / "constraints.txt", "-d", WHEELS,
          "pip", *AGENT_PINS], "pip download of the agent's aarch64 wheels (needs pypi.org)")  # fmt: skip


def _install() -> None:
    """The README's Raspberry Pi install, run emulated: a venv, then pip from the wheelhouse. One departure:
    without binfmt a program started by the emulated python cannot be another aarch64 program, so the venv is
    made ``--without-pip`` (ensurepip runs pip in a child process) and pip runs from its own wheel."""
    shutil.rmtree(VENV, ignore_errors=True)
    _run(emulated(PYTHON, "-m", "venv", "--without-pip", VENV), "python3 -m venv (emulated)")
    pip = next(WHEELS.glob("pip-*.whl")) / "pip"
    _agent(pip, first=True)


def _agent(pip: Path, *, first: bool = False) -> None:
    """This checkout's agent as a wheel, installed as the README says (the first time, with its pinned
    dependencies; when only the agent changed, the agent alone)."""
    for old in WHEELS.glob("edgekit_agent-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:  # built from a copy: setuptools leaves build/ next to the sources
        source = Path(tmp) / "agent"
        shutil.copytree(ROOT / "agent", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", WHEELS,
              source], "building the agent's wheel")  # fmt: skip
    again = [] if first else ["--force-reinstall", "--no-deps"]
    _run(emulated(VENV / "bin" / "python", pip, "install", "-q", "--disable-pip-version-check", "--no-index",
                  *again, "--find-links", WHEELS, "edgekit-agent[onnxruntime,openvino]"),
         "pip install 'edgekit-agent[onnxruntime,openvino]' (emulated)")  # fmt: skip
    AGENT_STAMP.write_text(_agent_digest())


def prepare() -> float:
    """Prepare what is missing; returns the seconds it took (about 0 when cached)."""
    t0 = time.monotonic()
    if ready():
        return 0.0
    if STAMP.exists() and STAMP.read_text() == _wanted() and QEMU.exists():  # only the agent changed
        _agent(next(WHEELS.glob("pip-*.whl")) / "pip")
        return time.monotonic() - t0
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PrepareFailed(f"{tool} is not on PATH: make test-arm64 needs a Debian-based machine")
    shutil.rmtree(CACHE, ignore_errors=True)
    work = CACHE / "work"
    work.mkdir(parents=True)
    _apt_fetch(work)
    _rootfs(work)
    _wheelhouse()
    _install()
    shutil.rmtree(work, ignore_errors=True)
    STAMP.write_text(_wanted())
    return time.monotonic() - t0


def reachable(timeout: float = 5.0) -> str | None:
    """None when the archive and the package index answer; else which one does not (a machine offline)."""
    import socket

    for host, port in (("deb.debian.org", 80), ("pypi.org", 443)):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            return f"{host}:{port} ({exc})"
    return None


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:  # .ci/run: can this machine prepare it at all?
        missing = None if ready() else reachable()
        if missing:
            print(f"arm64 emulation cannot be prepared here: {missing} is unreachable", file=sys.stderr)
        sys.exit(4 if missing else 0)
    try:
        seconds = prepare()
    except PrepareFailed as exc:
        print(f"make test-arm64: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"arm64 emulation ready in {CACHE} ({'cached' if seconds == 0 else f'prepared in {seconds:.0f} s'})")
