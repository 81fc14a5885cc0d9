"""Half-precision weights: ORT float16 conversion (fp32 I/O kept) or OpenVINO fp16 IR with an f16 hint.

Worth it on GPUs, NPUs and CPUs with native fp16 arithmetic; on x86 CPUs without it the runtime
upcasts and it is usually slower — the report's latency says which, and ``--auto`` decides by it.
"""

from __future__ import annotations

from typing import Any, Literal

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, first_line
from edgekit.passes.base import Pass, PassConfig, PassContext


class Fp16Config(PassConfig):
    type: Literal["fp16"] = "fp16"
    keep_io_types: bool = True


class Fp16(Pass):
    Config = Fp16Config
    accepts = ("onnx", "openvino")
    precision = "fp16"
    smoke_rtol = 0.05
    keeps_weights = True

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        cfg: Fp16Config = self.config  # type: ignore[assignment]
        step = ctx.step_dir(self.name)
        try:
            if artifact.kind == "onnx":
                import onnx
                from onnxruntime.transformers.float16 import convert_float_to_float16

                model = convert_float_to_float16(onnx.load(str(artifact.path)), keep_io_types=cfg.keep_io_types)
                path = step / "model.onnx"
                onnx.save(model, str(path))
                return artifact.evolve(path=path)
            import openvino as ov

            path = step / "model.xml"
            ov.save_model(ov.Core().read_model(str(artifact.path)), str(path), compress_to_fp16=True)
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"fp16 conversion failed: {first}") from None
        return artifact.evolve(
            path=path,
            runtime_config={"INFERENCE_PRECISION_HINT": "f16"},
            notes={"precision_hint": "f16", "host_execution_precision": _host_precision(path)},
        )


def _host_precision(path: Any) -> str:
    """The precision OpenVINO's CPU plugin will really compute in on this host for an f16 hint: f32 on CPUs
    without native fp16 (AVX2-only x86), where the fp16 IR only halves the weights on disk. A device with
    fp16 (rpi5, NPUs) may differ; the report says which host this is."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "f16", "bf16"
    return {"f32": "fp32", "f16": "fp16"}.get(hint, hint)
