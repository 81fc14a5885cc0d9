"""ONNX -> OpenVINO IR, keeping fp32 weights (``save_model`` would compress to fp16 by default)."""

from __future__ import annotations

from typing import Literal

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, first_line
from edgekit.passes.base import Pass, PassConfig, PassContext


class ConvertOpenVinoConfig(PassConfig):
    type: Literal["convert_openvino"] = "convert_openvino"
    static_shape: bool | None = None  # None: static when the profile says so (NPU)


class ConvertOpenVino(Pass):
    Config = ConvertOpenVinoConfig
    accepts = ("onnx",)
    keeps_weights = True
    produces = "openvino"
    runtime = "openvino"

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import openvino as ov

        cfg: ConvertOpenVinoConfig = self.config  # type: ignore[assignment]
        static = ctx.static_shapes if cfg.static_shape is None else cfg.static_shape
        key = ("convert_openvino", str(artifact.path), static)
        if key in ctx.cache:
            return ctx.cache[key]
        path = ctx.step_dir(self.name) / "model.xml"
        try:
            model = ov.convert_model(str(artifact.path))
            if static:
                model.reshape({name: list(arr.shape) for name, arr in bundle.example.items()})
            ov.save_model(model, str(path), compress_to_fp16=False)
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"OpenVINO could not convert the ONNX model: {first}; try runtime: onnxruntime") from None
        result = artifact.evolve(
            kind="openvino",
            path=path,
            runtime_config={"INFERENCE_PRECISION_HINT": "f32"},
            notes={"static_shape": static, "precision_hint": "f32"},
        )
        ctx.cache[key] = result
        return result
