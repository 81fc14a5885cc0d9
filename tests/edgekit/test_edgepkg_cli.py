"""``edgekit package --key``, ``pack``, ``verify`` and ``inspect`` on a real packaged model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edgekit.build import run_package
from edgekit.edgepkg import Signing
from edgekit.keys import init_keys

RECIPES = Path(__file__).resolve().parents[2] / "models" / "recipes"
ISSUED = "2026-11-20T08:00:00Z"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("signed")
    info = init_keys(root / "keys")
    result = run_package(
        "digits_cnn",
        profile="x86-64-generic",
        recipe=RECIPES / "digits_int8_static.yaml",
        out=root / "out",
        sign=Signing(key=info.private_path, counter=5, issued_at=datetime(2026, 11, 20, 8, tzinfo=UTC)),
    )
    return {"root": root, "key": info.private_path, "pub": info.public_path, "package": Path(result.package_path)}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_package_with_key_writes_a_package_that_verifies(cli, signed):
    assert signed["package"] == signed["root"] / "out" / "digits_cnn-5.edgepkg"
    code, out, err = cli("verify", signed["package"], "--trust", signed["pub"], "--profile", "x86-64-generic")
    assert code == 0, err
    assert out.startswith("OK ") and "counter 5" in out
    code, out, _ = cli("verify", signed["package"], "--trust", signed["pub"], "--format", "json")
    assert json.loads(out)["verification"]["ok"] is True


def test_the_sample_is_the_packaged_models_real_output(signed, tmp_path):
    import onnxruntime as ort
    from edgekit_agent.trust import TrustStore
    from edgekit_agent.verify import verify_package

    result = verify_package(signed["package"], trust=TrustStore.load([signed["pub"]]), dest=tmp_path / "v")
    m, d = result.manifest, result.directory
    feed = {name: np.load(d / f) for name, f in m.sample.inputs}
    got = ort.InferenceSession(str(d / m.entry)).run(None, feed)
    for (_, f), actual in zip(m.sample.outputs, got, strict=True):
        expected = np.load(d / f)
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        assert np.abs(actual - expected).max() <= m.sample.atol + m.sample.rtol * np.abs(expected).max()
    assert [t.name for t in m.inputs] == ["image"] and m.inputs[0].shape == (None, 1, 8, 8)
    assert m.precision == "int8" and m.profile == "x86-64-generic" and m.counter == 5
    from edgekit.passes import REGISTRY

    assert m.sample.rtol == REGISTRY["quantize_ort"].smoke_rtol  # what the INT8 pass declares, not fp32's 0.01
    assert [s["name"] for s in m.report["steps"]] == ["baseline", "export_onnx", "quantize_ort"]
    assert "output_dir" not in m.report  # nothing about the build host leaks into the package
    assert m.preprocessing["image"].startswith("8x8 grayscale")


def test_pack_is_byte_identical_to_package_and_to_itself(cli, signed, tmp_path):
    args = ["--key", signed["key"], "--counter", "5", "--issued-at", ISSUED]
    outs = []
    for name in ("a", "b"):
        code, _, err = cli("pack", signed["root"] / "out", *args, "--out", tmp_path / f"{name}.edgepkg")
        assert code == 0, err
        outs.append((tmp_path / f"{name}.edgepkg").read_bytes())
    assert outs[0] == outs[1] == signed["package"].read_bytes()
    cli(
        "pack",
        signed["root"] / "out",
        "--key",
        signed["key"],
        "--counter",
        "6",
        "--issued-at",
        ISSUED,
        "--out",
        tmp_path / "c.edgepkg",
    )
    assert (tmp_path / "c.edgepkg").read_bytes() != outs[0]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [(["--profile", "rpi4"], "wrong-profile"), (["--min-counter", "6"], "replayed-counter")],
)
def test_verify_refusals_exit_4_with_one_line(cli, signed, extra, reason):
    code, out, err = cli("verify", signed["package"], "--trust", signed["pub"], *extra)
    assert code == 4 and f"[{reason}]" in one_line(err) and out == ""
    code, out, _ = cli("verify", signed["package"], "--trust", signed["pub"], *extra, "--format", "json")
    assert json.loads(out)["verification"] == {
        "ok": False,
        "reason": reason,
        "error": json.loads(out)["verification"]["error"],
    }


def test_verify_refuses_a_tampered_package_and_inspect_shows_its_claims(cli, signed, tmp_path):
    data = bytearray(signed["package"].read_bytes())
    data[-5000] ^= 0xFF  # inside the model or the sample
    bad = tmp_path / "bad.edgepkg"
    bad.write_bytes(bytes(data))
    code, _, err = cli("verify", bad, "--trust", signed["pub"])
    assert code == 4 and "[hash-mismatch]" in one_line(err)
    code, out, _ = cli("inspect", bad, "--trust", signed["pub"], "--format", "json")
    shown = json.loads(out)
    assert code == 4 and shown["verification"]["reason"] == "hash-mismatch"
    assert shown["manifest_unverified"]["name"] == "digits_cnn"


def test_verify_with_a_key_that_is_not_a_public_key(cli, signed, tmp_path):
    (tmp_path / "junk.pub").write_text("not a key")
    code, _, err = cli("verify", signed["package"], "--trust", tmp_path / "junk.pub")
    assert code == 2 and "not a PEM public key" in one_line(err)


def test_inspect_shows_manifest_report_and_verification(cli, signed):
    code, out, err = cli("inspect", signed["package"], "--trust", signed["pub"], "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["manifest"]["format"] == "edgepkg/1"
    assert shown["manifest"]["report"]["chosen"] == "digits-int8-static"
    assert shown["verification"]["signature"] == "verified"
    code, out, _ = cli("inspect", signed["package"])
    assert code == 0 and "signature: not checked" in out and "compression report" in out


def test_package_out_may_name_the_package_file(cli, signed, tmp_path):
    target = tmp_path / "dist" / "digits.edgepkg"
    code, out, err = cli(
        "package", "digits_cnn", "--profile", "x86-64-generic", "--recipe", RECIPES / "digits_int8_static.yaml",
        "--out", target, "--key", signed["key"], "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["package_path"] == str(target.resolve()) and report["output_dir"] is None
    assert sorted(p.name for p in target.parent.iterdir()) == ["digits.edgepkg"]
    assert cli("verify", target, "--trust", signed["pub"])[0] == 0


def test_package_file_without_a_key_is_refused_before_any_work(cli, tmp_path):
    code, _, err = cli(
        "package", "digits_cnn", "--profile", "x86-64-generic", "--auto", "--out", tmp_path / "x.edgepkg"
    )
    assert code == 2 and "--key" in one_line(err)
    assert not list(tmp_path.iterdir())


def test_a_missing_signing_key_is_refused_before_any_work(cli, tmp_path):
    code, _, err = cli(
        "package",
        "digits_cnn",
        "--profile",
        "x86-64-generic",
        "--auto",
        "--out",
        tmp_path / "o",
        "--key",
        tmp_path / "nope.key",
    )
    assert code == 2 and "keys init" in one_line(err)
    assert not list(tmp_path.iterdir())
