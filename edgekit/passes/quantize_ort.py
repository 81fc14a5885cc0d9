"""ONNX Runtime INT8 quantization: dynamic, or static QDQ calibrated on the model's own calibration data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, first_line
from edgekit.passes.base import Pass, PassConfig, PassContext


class QuantizeOrtConfig(PassConfig):
    type: Literal["quantize_ort"] = "quantize_ort"
    mode: Literal["static", "dynamic"] = "static"
    per_channel: bool = True
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(default=128, gt=0)
    op_types: list[str] | None = None
    exclude_nodes: list[str] = Field(default_factory=list)
    reduce_range: bool = False
    preprocess: bool = True


class QuantizeOrt(Pass):
    Config = QuantizeOrtConfig
    accepts = ("onnx",)
    runtime = "onnxruntime"
    precision = "int8"
    smoke_rtol = 0.05
    keeps_weights = True

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        cfg: QuantizeOrtConfig = self.config  # type: ignore[assignment]
        step = ctx.step_dir(f"{self.name}-{cfg.mode}")
        src = artifact.path
        try:
            if cfg.preprocess:
                pre = step / "preprocessed.onnx"
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                src = pre
            out = step / "model.onnx"
            if cfg.mode == "dynamic":
                quantize_dynamic(
                    str(src),
                    str(out),
                    per_channel=cfg.per_channel,
                    reduce_range=cfg.reduce_range,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=cfg.op_types,
                    nodes_to_exclude=cfg.exclude_nodes,
                )
            else:
                feeds = iter(bundle.calibration[: cfg.calibration_samples])

                class Reader(CalibrationDataReader):
                    def get_next(self):
                        return next(feeds, None)

                method = {
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[cfg.calibration]
                quantize_static(
                    str(src),
                    str(out),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=cfg.per_channel,
                    reduce_range=cfg.reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=method,
                    op_types_to_quantize=cfg.op_types,
                    nodes_to_exclude=cfg.exclude_nodes,
                )
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"ONNX Runtime {cfg.mode} quantization failed: {first}") from None
        for tmp in step.glob("*.onnx"):
            if tmp.name != "model.onnx":
                tmp.unlink()
        return artifact.evolve(
            path=out,
            notes={"mode": cfg.mode, "per_channel": cfg.per_channel, "calibration": cfg.calibration},
        )
