"""The real, unmodified agent on Debian bookworm arm64 (Raspberry Pi OS's base) under qemu-user, installed as the
README says (``tests/helpers/arm64.py``), against the real Mosquitto and ``edgekit serve`` on loopback: it
connects and says it is aarch64 and emulated, installs a package signed on this x86 host, answers as an x86
run of the same model does, sends telemetry, resumes a download after kill -9 and rolls back a package whose
smoke test fails. ``make test-arm64`` prepares the emulator and runs these; ``make test`` skips them (one line)
where it is not prepared."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import arm64
import numpy as np
import pkgs
import pytest
from edgekit_agent.inference import decode, encode
from edgekit_agent.protocol import Desired
from fleet import Host, served_repo

from edgekit.fleet.serve import sha256_file

pytestmark = pytest.mark.integration
X = np.linspace(0, 1, 16, dtype=np.float32)[None]

if not arm64.ready():
    if os.environ.get("EDGEKIT_ARM64") == "1":  # make test-arm64 prepared it: not ready is a failure there
        raise RuntimeError("make test-arm64: the arm64 emulation is not ready after preparing it")
    pytest.skip("arm64 emulation is not prepared here: run make test-arm64 (needs network the first time)",
                allow_module_level=True)  # fmt: skip


class EmulatedAgent:
    """``edgekit-agent run`` in the emulated venv, as a process of its own (kill -9 is a real kill)."""

    def __init__(self, url: str, data: Path, trust: Path) -> None:
        # the README's config file for a Pi (agent/deploy/agent.toml), with flags for what differs here
        config = Path(__file__).resolve().parents[2] / "agent" / "deploy" / "agent.toml"
        self.args = ["-m", "edgekit_agent", "run", "--config", str(config), "--broker", url, "--fleet", "lab",
                     "--device-id", "pi-1", "--data-dir", str(data), "--trust", str(trust), "--emulated",
                     "--telemetry-interval", "1", "--chunk-size", "16384", "--chunk-timeout", "20"]  # fmt: skip
        self.log = data.parent / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(arm64.emulated(arm64.VENV / "bin" / "python", *self.args), stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def pi(tmp_path, broker):
    with served_repo(tmp_path, broker.url, device="pi-1") as (keys, repo, host, _server):
        agent = EmulatedAgent(broker.url, tmp_path / "data", keys[1])
        agent.start()

        def package(version: str, counter: int, **src) -> Desired:
            source = pkgs.source_dir(tmp_path / f"src-{version}", profile="rpi4", **src)
            path = pkgs.build(source, repo / f"{version}.edgepkg", keys[0], counter=counter, version=version)
            return Desired("tiny", version, sha256_file(path), counter, path.stat().st_size)

        try:
            yield {"host": host, "agent": agent, "package": package, "data": tmp_path / "data", "repo": repo,
                   "keys": keys, "trust": keys[1]}  # fmt: skip
        finally:
            agent.stop()


def online(host: Host, version: str | None, timeout: float = 120.0) -> dict:
    return host.wait_for(
        lambda: next((s for s in reversed(host.messages["state"]) if isinstance(s, dict) and s["status"] == "online"
                      and (s.get("package") or {}).get("version") == version), None),
        f"state online with {version}", timeout)  # fmt: skip


def test_the_emulated_agent_installs_a_host_signed_package_answers_as_x86_does_and_labels_itself(pi):
    host = pi["host"]
    first = online(host, None)
    assert first["capabilities"]["arch"] == "aarch64" and first["capabilities"]["emulated"] is True
    assert first["capabilities"]["runtimes"] == ["onnxruntime", "openvino"]  # the extras the README installs
    host.desire(pi["package"]("v1", 1))
    state = online(host, "v1")
    assert state["runtime"] == "onnxruntime:CPUExecutionProvider"
    response = host.infer({"x": encode(X)}, timeout=60)
    assert "error" not in response, response
    emulated_y = decode(response["outputs"]["y"], "y")
    import onnxruntime as ort  # the same model on this x86 host

    model = pkgs.tiny_onnx()[0]
    native_y = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(emulated_y, native_y, rtol=0.01, atol=1e-5)  # the package's sample tolerance
    telemetry = host.wait_for(
        lambda: next((t for t in host.messages["telemetry"] if isinstance(t, dict) and t.get("inferences")), None),
        "telemetry with the inference", 60)  # fmt: skip
    assert telemetry["emulated"] is True and telemetry["latency_ms"]["p50"] > 0


def test_the_emulated_agent_resumes_a_download_after_kill_9_and_rolls_back_a_failing_smoke_test(pi):
    host, agent, data = pi["host"], pi["agent"], pi["data"]
    online(host, None)
    host.desire(pi["package"]("v1", 1))
    online(host, "v1")
    big = pi["package"]("v2", 2, extra={"pad.bin": os.urandom(3 << 20)})  # ~190 chunks of 16 KiB

    def held() -> int:
        return sum(len(p.read_text().splitlines()) for p in (data / "downloads").glob("*.have"))

    host.desire(big)
    deadline = time.monotonic() + 120
    while held() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held() >= 20, "the download never started"
    agent.kill()
    at_kill = held()
    agent.start()
    resumed = host.event_matching("update", "resuming after a restart", 120)
    assert resumed["state"] in ("downloading", "verifying")
    online(host, "v2", 240)
    download = [e for e in host.events("download")][-1]
    assert download["resumed_chunks"] >= min(at_kill, 20), (download, at_kill)
    # a package whose output does not match its own sample never serves; v2 keeps serving
    host.desire(pi["package"]("v3", 3, expected_offset=1.0))
    rollback = host.wait_for(lambda: next((e for e in host.events("rollback") if e.get("version") == "v3"), None),
                             "the rollback of v3", 120)  # fmt: skip
    assert "smoke test failed" in rollback["reason"] and rollback["serving"]["version"] == "v2"
    assert json.loads((data / "state.json").read_text())["installed"]["version"] == "v2"


def test_openvino_and_int8_digits_packages_built_here_pass_their_smoke_test_emulated_and_answer_as_on_x86(
    pi, cli, tmp_path
):
    """Real models packaged on this host for rpi4: ONNX Runtime INT8 and an OpenVINO IR. Installing runs the
    package's sample against the x86 output (the smoke test); the answers to a request match x86's too."""
    from edgekit_agent import runtime
    from edgekit_agent.trust import TrustStore
    from edgekit_agent.verify import verify_package

    host, repo = pi["host"], pi["repo"]
    recipe = tmp_path / "ov.yaml"
    recipe.write_text("runtime: openvino\npasses: []\n")
    recipes = Path(__file__).resolve().parents[2] / "models" / "recipes"
    online(host, None)
    for counter, (name, how) in enumerate([("int8", recipes / "digits_int8_static.yaml"), ("ov", recipe)], 1):
        out = repo / f"digits-{name}.edgepkg"
        code, _, err = cli("package", "digits_cnn", "--profile", "rpi4", "--recipe", how, "--out", out, "--key",
                           pi["keys"][0], "--version", name, "--counter", str(counter))  # fmt: skip
        assert code == 0, err
        host.desire(Desired("digits_cnn", name, sha256_file(out), counter, out.stat().st_size))
        state = online(host, name, 180)
        native = verify_package(out, trust=TrustStore.load([pi["trust"]]), profile="rpi4",
                                dest=tmp_path / f"native-{name}")  # fmt: skip
        loaded = runtime.load(native.directory, native.manifest)
        feed = runtime.sample_inputs(loaded)
        expected = loaded.predict(feed)[0]
        response = host.infer({k: encode(v) for k, v in feed.items()}, timeout=120)
        assert "error" not in response, response
        got = decode(response["outputs"][loaded.output_names[0]], "out")
        np.testing.assert_allclose(got, expected, rtol=native.manifest.sample.rtol, atol=native.manifest.sample.atol)
        assert state["runtime"] == f"{loaded.engine}:{loaded.device}"
