"""torch -> ONNX with the TorchScript exporter.

torch 2.13 defaults to the dynamo exporter, whose graphs break ORT's quantization pre-processing and
transformer fusion and can name an output like an initializer; ``dynamo=False`` avoids all three.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.console import output_to
from edgekit.errors import ExportFailed, first_line
from edgekit.modelsrc import cache_dir
from edgekit.passes.base import Pass, PassConfig, PassContext


class ExportOnnxConfig(PassConfig):
    type: Literal["export_onnx"] = "export_onnx"
    opset: int = 17
    dynamic: bool | None = None  # None: dynamic batch axes unless the profile needs static shapes


class ExportOnnx(Pass):
    Config = ExportOnnxConfig
    accepts = ("torch",)
    keeps_weights = True
    produces = "onnx"

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        import torch

        cfg: ExportOnnxConfig = self.config  # type: ignore[assignment]
        dynamic = (not ctx.static_shapes) if cfg.dynamic is None else cfg.dynamic
        key = ("export_onnx", id(artifact.module), dynamic, cfg.opset)
        if key in ctx.cache:
            cached = ctx.cache[key]
            if isinstance(cached, ExportFailed):  # the same module fails the same way: said once, not re-run
                raise cached
            return cached
        path = ctx.step_dir(self.name) / "model.onnx"
        inputs = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in bundle.example.values())
        log = cache_dir().parent / "logs" / f"export-{bundle.name}.log"
        try:
            with torch.no_grad(), output_to(log):
                torch.onnx.export(
                    artifact.module.eval(),
                    inputs,
                    str(path),
                    input_names=bundle.input_names,
                    output_names=bundle.output_names,
                    dynamic_axes=bundle.dynamic_axes if dynamic else None,
                    opset_version=cfg.opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            onnx.checker.check_model(str(path))
        except Exception as exc:
            first = first_line(exc, 300)
            said = log.stat().st_size > 0 if log.exists() else False
            failed = ExportFailed(
                f"model {bundle.name!r} does not export to ONNX (opset {cfg.opset}): {first}; "
                "make forward() traceable (tensor inputs/outputs, no data-dependent Python control flow) "
                "or pass an .onnx file instead" + (f" (the exporter's output: {log})" if said else "")
            )
            ctx.cache[key] = failed
            raise failed from None
        result = artifact.evolve(kind="onnx", path=path, module=None, notes={"opset": cfg.opset, "dynamic": dynamic})
        ctx.cache[key] = result
        return result
