"""NNCF post-training INT8 for OpenVINO, optionally with accuracy control (a bound on the metric drop)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, first_line
from edgekit.passes.base import Pass, PassConfig, PassContext


class QuantizeOpenVinoConfig(PassConfig):
    type: Literal["quantize_openvino"] = "quantize_openvino"
    preset: Literal["performance", "mixed"] | None = None  # None: NNCF's default for the model type
    model_type: Literal["transformer", "auto", "none"] = "auto"  # auto: what the model declares
    subset_size: int = Field(default=300, gt=0)
    fast_bias_correction: bool = True
    ignored_names: list[str] = Field(default_factory=list)
    ignored_types: list[str] = Field(default_factory=list)
    smooth_quant_alpha: float | None = Field(default=None, ge=-1, le=1)
    max_drop: float | None = Field(default=None, gt=0, lt=1, description="accuracy control: max relative drop")


class QuantizeOpenVino(Pass):
    Config = QuantizeOpenVinoConfig
    accepts = ("openvino",)
    runtime = "openvino"
    precision = "int8"
    smoke_rtol = 0.05
    keeps_weights = True

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import logging

        import nncf
        import openvino as ov

        nncf.set_log_level(logging.ERROR)
        cfg: QuantizeOpenVinoConfig = self.config  # type: ignore[assignment]
        model = ov.Core().read_model(str(artifact.path))
        calibration = nncf.Dataset(bundle.calibration)
        transformer = cfg.model_type == "transformer" or (
            cfg.model_type == "auto" and bundle.model_type == "transformer"
        )
        kwargs = {
            "subset_size": min(cfg.subset_size, len(bundle.calibration)),
            "fast_bias_correction": cfg.fast_bias_correction,
            "model_type": nncf.ModelType.TRANSFORMER if transformer else None,
            "preset": {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}.get(
                cfg.preset or ""
            ),
        }
        if cfg.ignored_names or cfg.ignored_types:
            kwargs["ignored_scope"] = nncf.IgnoredScope(
                names=cfg.ignored_names, types=cfg.ignored_types, validate=False
            )
        if cfg.smooth_quant_alpha is not None:
            kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant_alpha)
            )
        try:
            if cfg.max_drop is None:
                quantized = nncf.quantize(model, calibration, **kwargs)
            else:

                def validate(compiled, data) -> float:
                    outs = [np.array(compiled(feed)[0]) for feed in data]
                    return float(bundle.score(np.concatenate(outs, axis=0)))

                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    calibration,
                    nncf.Dataset(bundle.eval_feeds),
                    validation_fn=validate,
                    max_drop=cfg.max_drop,
                    drop_type=nncf.DropType.RELATIVE,
                    **kwargs,
                )
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"NNCF quantization failed: {first}") from None
        path = ctx.step_dir(self.name) / "model.xml"
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        return artifact.evolve(
            path=path,
            runtime_config={"INFERENCE_PRECISION_HINT": "f32"},
            notes={"transformer_preset": transformer, "accuracy_control": cfg.max_drop, "precision_hint": "f32"},
        )
