"""The runtime registry the agent and the host share: one description per runtime, everything else derived."""

import pytest
from edgekit_agent import manifest, runtimes
from imports import heavy_modules_loaded_by


def test_each_runtime_is_described_once_and_the_manifest_schema_follows_the_registry():
    regs = list(runtimes.ALL.values())
    for field in ("name", "model_format", "kind", "entry"):
        values = [getattr(r, field) for r in regs]
        assert len(set(values)) == len(values), field  # lookups by format and kind are unambiguous
    assert tuple(runtimes.ALL) == manifest.ENGINES
    assert not set(runtimes.REGISTRY) & set(runtimes.GENERATIVE)
    assert all(r.generative for r in runtimes.GENERATIVE.values()) and not any(
        r.generative for r in runtimes.REGISTRY.values()
    )
    assert {r.model_format: r.name for r in regs} == manifest.MODEL_FORMATS
    assert set(runtimes.installed()) == {r.name for r in regs}  # the host venv installs every extra
    with pytest.raises(
        LookupError, match="unknown runtime 'tensorrt' \\(known: onnxruntime, openvino, openvino-genai\\)"
    ):
        runtimes.get("tensorrt")


def test_describing_the_runtimes_imports_none_of_them():
    assert heavy_modules_loaded_by("import edgekit_agent.runtimes", ("onnxruntime", "openvino", "openvino_genai")) == []


@pytest.mark.parametrize("name", list(runtimes.REGISTRY))
def test_every_runtime_opens_a_cpu_session_and_reads_io_specs(name, tmp_path):
    """The same session code serves the agent and the host's evaluation (edgekit.hostrt)."""
    import numpy as np
    import pkgs

    source = pkgs.source_dir(tmp_path / "src")  # a tiny ONNX model (16 -> 16 MatMul + 1)
    rt = runtimes.get(name)
    path = source / "model.onnx"
    if rt.model_format != "onnx":
        import openvino as ov

        ov.save_model(ov.convert_model(str(path)), str(tmp_path / rt.entry), compress_to_fp16=False)
        path = tmp_path / rt.entry
    assert all(p.exists() for p in rt.files(path))
    session = rt.open(path, rt.cpu, threads=1)
    x = np.linspace(0, 1, 16, dtype=np.float32)[None]
    (y,) = session.run({session.inputs[0]: x})
    assert y.shape == (1, 16) and np.isfinite(y).all()
    inputs, outputs = rt.io_spec(path)
    assert [i["name"] for i in inputs] == session.inputs and outputs[0]["dtype"] == "float32"
    assert rt.cpu in rt.devices()
    with pytest.raises(LookupError):
        rt.open(path, "NoSuchDevice", threads=1)
