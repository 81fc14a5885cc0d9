"""``edgekit-agent`` command line: bench on a real package, and one-line errors for bad settings."""

from __future__ import annotations

import json

import pkgs
import pytest
from edgekit_agent.cli import main

pytestmark = pytest.mark.integration


def test_bench_reports_model_and_request_latency(tmp_path, capsys):
    key, pub = pkgs.keys(tmp_path / "keys")
    package = pkgs.build(pkgs.source_dir(tmp_path / "src"), tmp_path / "p.edgepkg", key, issued_at=None)
    assert main(["bench", "--package", str(package), "--trust", str(pub), "-n", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "onnxruntime:CPUExecutionProvider" and result["runs"] == 50
    assert 0 < result["model_p50_ms"] <= result["request_p50_ms"]


def test_bench_refuses_a_package_from_an_untrusted_key(tmp_path, capsys):
    key, _ = pkgs.keys(tmp_path / "keys")
    _, other = pkgs.keys(tmp_path / "keys", name="other")
    package = pkgs.build(pkgs.source_dir(tmp_path / "src"), tmp_path / "p.edgepkg", key, issued_at=None)
    assert main(["bench", "--package", str(package), "--trust", str(other)]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "untrusted-key" in err


def run_args(broker: str) -> list[str]:
    """A complete ``run`` command line whose only possible faults are the broker URL and the trust file."""
    return ["run", "--broker", broker, "--fleet", "f", "--device-id", "d", "--profile", "p", "--data-dir", "D",
            "--trust", "K.pub"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["run", "--broker", "mqtt://127.0.0.1:1"], "missing --fleet"),
        (run_args("http://x"), "must look like mqtt://HOST:PORT"),
        (["run", "--config", "nope.yaml"], "cannot read --config"),
        (run_args("mqtt://127.0.0.1:1"), "cannot read trusted key"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and text in err


def test_config_file_with_an_unknown_setting(tmp_path, capsys):
    (tmp_path / "agent.json").write_text(json.dumps({"broker": "mqtt://h:1", "brokr": "typo"}))
    assert main(["run", "--config", str(tmp_path / "agent.json")]) == 2
    assert "brokr" in capsys.readouterr().err


def test_serve_without_a_packages_folder_is_one_line(cli, tmp_path):
    code, _, err = cli("serve", "--packages", tmp_path / "missing")
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1
