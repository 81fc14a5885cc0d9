"""``edgekit demo`` as a user runs it (a subprocess): the whole fleet walk-through, and Ctrl-C leaving nothing
running. Children are found by the demo's output directory in their command lines."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.integration


def leftovers(marker: str, demo_pid: int | None = None) -> list[str]:
    """Processes other than the demo itself whose command line names the demo's output directory."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd and p.pid != demo_pid:
            found.append(cmd[:200])
    return found


def test_demo_runs_the_fleet_end_to_end_and_stops_every_child(tmp_path):
    out = tmp_path / "demo-out"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "demo", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every device ends on 2.0, rolled out in waves; the tampered copy was refused on the way
    assert len(re.findall(r"digits@2\.0", proc.stdout)) == 3, proc.stdout
    assert "pi-1 refused it" in proc.stderr and "does not match the manifest" in proc.stderr
    assert proc.stderr.count("reached every device of the group") == 2
    # answers scored against the held-out labels: both versions answered on every device
    answers = re.findall(r"│ (cam-1|cam-2|pi-1)\s+│ (1\.0|2\.0)\s+│ (\d+)\s+│ ([\d.]+)%", proc.stdout)
    assert {(d, v) for d, v, _, _ in answers} == {(d, v) for d in ("cam-1", "cam-2", "pi-1") for v in ("1.0", "2.0")}
    assert all(int(n) > 0 and float(acc) >= 90 for _, _, n, acc in answers), answers
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "pi-1" in page
    assert {p.name for p in (out / "logs").iterdir()} == {"serve.log", "cam-1.log", "cam-2.log", "pi-1.log"}
    assert leftovers(str(out)) == []

    # a second run reuses the directory it made; a directory it did not make is refused
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "edgekit", "demo", "--out", str(stranger)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "was not made by edgekit demo" in proc.stderr
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_ctrl_c_in_the_middle_stops_broker_serve_and_agents(tmp_path):
    out = tmp_path / "demo-out"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "demo", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "logs" / "pi-1.log").exists():  # the last child started
            assert proc.poll() is None and time.monotonic() < deadline, "the demo never started its agents"
            time.sleep(0.2)
        time.sleep(1)
        running = leftovers(str(out), proc.pid)
        assert len(running) == 5, running  # broker, serve, three agents
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "demo interrupted" in err and "Traceback" not in err
    assert leftovers(str(out)) == []
