"""Shared fixtures: real models trained once per machine (cached), a short latency budget, a CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Trained weights are cached between runs; the cache key includes the model source, so edits retrain.
os.environ.setdefault("EDGEKIT_CACHE", str(ROOT / ".pytest_cache" / "edgekit"))
# Tests check correctness, not timings: a short latency loop keeps the suite fast.
os.environ.setdefault("EDGEKIT_LATENCY_SECONDS", "0.05")
# ... and fewer, shorter held-out windows and generation runs for language models (edgekit.llm.build.Measures)
os.environ.setdefault("EDGEKIT_LLM_QUICK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


# The test modules that keep both cores busy for seconds at a time (train, compress, time candidates). make test
# runs two pytest-xdist workers: a serial run left the two cores idle ~60 % of its time, waiting on brokers,
# clusters and timers. These modules are one unit of work that one worker runs in turn, so two of them never
# split the cores, while the other worker runs the waiting tests (measured without this: the suite's CPU time
# doubled and two workers took longer than one, 865 s against 837 s). A new module that trains or compresses
# belongs here; one left out still passes, it only slows the suite. Every user of the tiny_llm session fixture
# is here too, so it is packaged once, not once per worker.
COMPUTE = (
    "tests/agent/test_faults.py",
    "tests/agent/test_generate.py",
    "tests/edgekit/fleet/test_demo.py",
    "tests/edgekit/llm/",
    "tests/edgekit/passes/",
    "tests/edgekit/test_measure_on.py",
    "tests/edgekit/test_package_cli.py",
    "tests/models/",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """--dist load (what -n gives) with the COMPUTE modules as one unit; any other --dist is left to xdist.
    (xdist 3.8's own --dist loadgroup does nothing under pytest 9: it renames ``item._nodeid``, which pytest 9
    no longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ComputeInTurn(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "compute" if nodeid.startswith(COMPUTE) else nodeid

    return ComputeInTurn(config, log)


@pytest.fixture(scope="session")
def digits():
    from edgekit.modelsrc import load_model

    return load_model("digits_cnn")


@pytest.fixture(scope="session")
def recommender():
    from edgekit.modelsrc import load_model

    return load_model("recommender")


@pytest.fixture(scope="session")
def x86():
    from edgekit.profiles import load_profile

    return load_profile("x86-64-generic")


@pytest.fixture
def cli(capsys):
    """Run the real ``edgekit`` entry point in-process: returns (exit code, stdout, stderr)."""
    from edgekit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        old = sys.argv
        sys.argv = ["edgekit", *map(str, args)]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto (amqtt where Mosquitto is absent) on a free loopback port, stopped after the test."""
    from broker import Broker

    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """A tiny random Llama as GGUF (tests/helpers/tinyllm.py), packaged once per session through the real
    ``edgekit package FILE.gguf --recipe R --key K`` command: {gguf, out, package, keys, report}."""
    import json
    import subprocess

    import pkgs
    from tinyllm import write_tiny_llama

    root = tmp_path_factory.mktemp("tinyllm")
    gguf = write_tiny_llama(root / "tiny-llama.gguf")
    keys = pkgs.keys(root / "keys")
    recipe = root / "int8.yaml"
    recipe.write_text("name: int8\nweights: int8_asym\nperplexity_tolerance: 0.5\n")
    out = root / "pkg"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "package", str(gguf), "--profile", "x86-64-generic", "--recipe", str(recipe),
         "--out", str(out), "--key", str(keys[0]), "--counter", "7", "--version", "t1", "--format", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    return {"gguf": gguf, "out": out, "package": Path(result["package_path"]), "keys": keys, "result": result,
            "report": json.loads((out / "report.json").read_text())}  # fmt: skip
