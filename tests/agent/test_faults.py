"""Issue 8: kill -9 of a real agent process at seeded random points of a download + install.

Each round desires a new version (a different model: the output scale changes), starts the agent, and
kills it with SIGKILL a random delay (``random.Random(SEED)``) after its first chunk request, drawn over
the measured length of a whole download + verify + install + smoke test + switch. It then restarts the
agent and checks what the device serves: a verified model (every file matches its manifest's sha256), the
old or the new one, never none and never a mix (its answer is exactly one version's output); no
half-unpacked directory left; an interrupted download resumes from the chunks it held.

``make test`` runs ``KILLS`` rounds (10); ``make soak`` sets ``EDGEKIT_SOAK_KILLS=50``. The seed is
``EDGEKIT_FAULT_SEED`` (default 8), so a failure is reproduced by running again with the same values.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pkgs
import pytest
from edgekit_agent.inference import encode
from edgekit_agent.protocol import Desired
from fleet import Host

from edgekit.fleet.serve import PackageServer

pytestmark = pytest.mark.integration
KILLS = int(os.environ.get("EDGEKIT_SOAK_KILLS", "10"))
SEED = int(os.environ.get("EDGEKIT_FAULT_SEED", "8"))
X = np.linspace(0, 1, 16, dtype=np.float32)[None]
PAD = 200_000  # bytes added to each package: ~200 chunks of 1 KiB to be killed in


def output(scale: float) -> np.ndarray:
    return X @ (np.arange(256, dtype=np.float32).reshape(16, 16) / 256 * np.float32(scale)) + 1


def served_scale(host: Host, scales: dict[str, float]) -> str:
    """Which version answered: its output must equal exactly one version's (never a mix, never none)."""
    import base64

    response = host.infer({"x": encode(X)}, timeout=30)
    assert "error" not in response, response
    out = response["outputs"]["y"]
    got = np.frombuffer(base64.b64decode(out["b64"]), dtype=out["dtype"]).reshape(out["shape"])
    matches = [v for v, s in scales.items() if np.allclose(got, output(s), rtol=1e-5)]
    assert len(matches) == 1, f"the answer matches {matches} (model {response['model']})"
    assert response["model"]["version"] == matches[0]
    return matches[0]


def verified_on_disk(data: Path) -> str:
    """The version ``current`` points at, after checking every file against the manifest's sha256."""
    current = data / "current"
    manifest = json.loads((current / "manifest.json").read_text())
    for entry in manifest["files"]:
        digest = hashlib.sha256((current / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{entry['path']} of {manifest['version']} does not match its manifest"
    return str(manifest["version"])


def leftovers(data: Path) -> list[str]:
    """Half-unpacked versions and temporary files: what a restart must have cleaned."""
    found = [p.name for p in (data / "versions").iterdir() if p.name.startswith(".")]
    found += [p.name for p in data.iterdir() if ".tmp-" in p.name]
    return found


def test_kill_9_at_random_points_of_an_update_always_leaves_a_verified_model_serving(tmp_path, broker):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    server = PackageServer(repo, broker.url)
    server.start()
    host = Host(broker.url)
    data = tmp_path / "data"
    scales: dict[str, float] = {}

    def package(version: str, counter: int) -> Desired:
        scales[version] = 1.0 + counter / 10
        return pkgs.desired(tmp_path, repo, keys[0], version, counter, scale=scales[version],
                            extra={"pad.bin": os.urandom(PAD)})  # fmt: skip

    cmd = [sys.executable, "-m", "edgekit_agent.cli", "run", "--broker", broker.url, "--fleet", "lab",
           "--device-id", "dev-1", "--profile", pkgs.PROFILE, "--data-dir", str(data), "--trust", str(keys[1]),
           "--chunk-size", "1024", "--telemetry-interval", "60"]  # fmt: skip

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def online(version: str | None = None) -> dict:
        """The next online state after a (re)start; with ``version``, the one that names it."""
        seen = len(host.messages["state"])

        def found() -> dict | None:
            for s in host.messages["state"][seen:]:
                named = (s.get("package") or {}).get("version") if isinstance(s, dict) else None
                if isinstance(s, dict) and s["status"] == "online" and version in (None, named):
                    return s
            return None

        return host.wait_for(found, f"online state{' with ' + version if version else ''}", timeout=60)

    def first_request() -> float:
        """When the started agent asks for its first chunk (the host sees every request)."""
        seen = len(host.messages["chunk/request"])
        host.wait_for(lambda: len(host.messages["chunk/request"]) > seen, "a chunk request", timeout=60)
        return time.monotonic()

    rng = random.Random(SEED)
    agent = start()
    try:
        host.desire(package("v0", 1))
        online("v0")
        # one uninterrupted update measures the kill window: first chunk request until online with it
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
        host.desire(package("v1", 2))
        agent = start()
        t0 = first_request()
        online("v1")
        window = time.monotonic() - t0
        states: Counter[str] = Counter()
        resumed = 0
        previous = "v1"
        for k in range(KILLS):
            version = f"v{k + 2}"
            desired = package(version, k + 3)
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
            host.desire(desired)
            agent = start()
            first_request()
            time.sleep(rng.uniform(0.0, window))
            agent.kill()
            agent.wait(10)
            state = json.loads((data / "state.json").read_text())
            states[state["state"]] += 1
            have = data / "downloads" / f"{desired.sha256}.have"
            held = len(have.read_text().splitlines()) if have.exists() else 0
            on_disk = verified_on_disk(data)
            assert on_disk in (previous, version), f"round {k}: current is {on_disk}"

            downloads_before = len(host.events("download"))
            agent = start()
            first = online()  # what the restarted device says it runs, before it finishes anything
            first_version = (first.get("package") or {}).get("version")
            assert first_version in (previous, version), f"round {k}: {first}"
            assert served_scale(host, scales) in (previous, version)
            if first_version != version:
                online(version)
            assert served_scale(host, scales) == version
            assert verified_on_disk(data) == version
            assert leftovers(data) == [], f"round {k}: {leftovers(data)}"
            left = sorted(p.name for p in (data / "downloads").iterdir())
            assert not left, f"round {k} (killed while {state['state']}): {left} left after the install"
            if state["state"] == "downloading" and held > 1:
                # a torn last record costs that chunk only: the rest must not be fetched again
                after = downloads_before
                event = host.wait_for(lambda after=after: host.events("download")[after:], "download event", 10)[-1]
                assert held - 1 <= event["resumed_chunks"] <= held, f"round {k}: held {held}, {event}"
                resumed += 1
            previous = version
        print(f"\nkill -9 rounds: {KILLS} (seed {SEED}, window {window:.2f} s); state at the kill: "
              f"{dict(states)}; downloads resumed from held chunks: {resumed}")  # fmt: skip
        assert sum(states.values()) == KILLS
    finally:
        agent.kill()
        agent.wait(10)
        server.stop()
        host.close()
