"""Export, quantization and conversion passes on real models and runtimes."""

import platform
from pathlib import Path

import onnx
import pytest

from edgekit.artifact import Artifact
from edgekit.errors import ExportFailed
from edgekit.evaluate import onnx_macs, onnx_params, size_bytes, torch_macs
from edgekit.hostrt import predictor
from edgekit.passes import REGISTRY, PassContext


def chain(bundle, profile, tmp_path, *cfgs, static=False):
    ctx = PassContext(profile=profile, workdir=tmp_path, threads=2, static_shapes=static)
    art = Artifact(kind="torch", module=bundle.module)
    for cfg in cfgs:
        p = REGISTRY[cfg["type"]](REGISTRY[cfg["type"]].Config(**cfg))
        art = p.run(bundle, art, ctx)
    return art


def test_export_keeps_outputs_and_counts_the_same_macs(digits, x86, tmp_path):
    art = chain(digits, x86, tmp_path, {"type": "export_onnx"})
    model = onnx.load(str(art.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert onnx_macs(art.path, digits.example) == torch_macs(digits.module, digits.example)
    ref = predictor(Artifact(kind="torch", module=digits.module), threads=2)(digits.example)[0]
    got = predictor(art, threads=2)(digits.example)[0]
    assert abs(ref - got).max() < 1e-4


def test_static_shape_export_has_no_symbolic_dims(digits, x86, tmp_path):
    art = chain(digits, x86, tmp_path, {"type": "export_onnx"}, static=True)
    dim = onnx.load(str(art.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1 and not dim.dim_param


def test_export_failure_is_a_one_line_error(x86, tmp_path):
    from usermodels import not_exportable

    from edgekit.modelsrc import fidelity_bundle

    module, inputs = not_exportable()
    bundle = fidelity_bundle("bad", module=module, inputs=inputs)
    with pytest.raises(ExportFailed, match="does not export to ONNX") as info:
        chain(bundle, x86, tmp_path, {"type": "export_onnx"})
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_ort_int8_shrinks_the_model_and_keeps_accuracy(digits, x86, tmp_path, mode):
    fp32 = chain(digits, x86, tmp_path / "fp32", {"type": "export_onnx"})
    int8 = chain(digits, x86, tmp_path / mode, {"type": "export_onnx"}, {"type": "quantize_ort", "mode": mode})
    assert int8.precision == "int8"
    assert size_bytes(fp32) / size_bytes(int8) >= 3.5
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert ("QuantizeLinear" in ops) if mode == "static" else ("DynamicQuantizeLinear" in ops or "MatMulInteger" in ops)
    assert onnx_params(int8.path) <= onnx_params(fp32.path)
    base = digits.evaluate(predictor(fp32, threads=2))[0]
    assert base - digits.evaluate(predictor(int8, threads=2))[0] <= 0.01


def test_openvino_conversion_pins_fp32_and_nncf_int8_keeps_accuracy(digits, x86, tmp_path):
    ov32 = chain(digits, x86, tmp_path / "a", {"type": "export_onnx"}, {"type": "convert_openvino"})
    assert ov32.runtime_config["INFERENCE_PRECISION_HINT"] == "f32"
    int8 = chain(
        digits,
        x86,
        tmp_path / "b",
        {"type": "export_onnx"},
        {"type": "convert_openvino"},
        {"type": "quantize_openvino"},
    )
    assert int8.precision == "int8"
    assert size_bytes(ov32) / size_bytes(int8) >= 3.0
    base = digits.evaluate(predictor(ov32, threads=2))[0]
    assert base - digits.evaluate(predictor(int8, threads=2))[0] <= 0.01


def test_fp16_halves_weights_on_both_runtimes(digits, x86, tmp_path):
    onnx32 = chain(digits, x86, tmp_path / "a", {"type": "export_onnx"})
    onnx16 = chain(digits, x86, tmp_path / "b", {"type": "export_onnx"}, {"type": "fp16"})
    assert size_bytes(onnx16) < 0.55 * size_bytes(onnx32)
    ov16 = chain(digits, x86, tmp_path / "c", {"type": "export_onnx"}, {"type": "convert_openvino"}, {"type": "fp16"})
    assert ov16.runtime_config["INFERENCE_PRECISION_HINT"] == "f16"
    # what this host's CPU plugin really computes in, from OpenVINO itself: fp16 only where the CPU has it
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "FP16" not in caps and "BF16" not in caps:
        assert ov16.notes["host_execution_precision"] == "fp32"  # AVX2-only x86: the package says fp16, runs fp32
    elif "FP16" not in caps:  # avx512_bf16 (EPYC Zen 4, Xeon with AMX): OpenVINO computes the f16 hint in bf16
        assert ov16.notes["host_execution_precision"] in {"bf16", "fp32"}
    else:
        assert ov16.notes["host_execution_precision"] in {"fp16", "bf16", "fp32"}
    # ONNX Runtime's CPU provider, read from the graph it builds: an x86 CPU without avx512_fp16 has no fp16
    # Conv/Gemm kernels, so it casts them up
    assert onnx16.notes["host_execution_precision"] in {"fp16", "fp32", "mixed"}
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() in {"x86_64", "AMD64"} and "avx512_fp16" not in flags:
        assert onnx16.notes["host_execution_precision"] == "fp32"
    for art in (onnx16, ov16):
        assert digits.evaluate(predictor(art, threads=2))[0] >= 0.97
