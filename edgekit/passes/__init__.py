"""Pass registry: adding a pass is one file plus one line here. The pipeline knows nothing else."""

from __future__ import annotations

from edgekit.passes.base import Pass, PassConfig, PassContext
from edgekit.passes.convert_openvino import ConvertOpenVino
from edgekit.passes.distill import Distill
from edgekit.passes.export_onnx import ExportOnnx
from edgekit.passes.fp16 import Fp16
from edgekit.passes.lowrank import LowRank
from edgekit.passes.prune_structured import PruneStructured
from edgekit.passes.prune_unstructured import PruneUnstructured
from edgekit.passes.quantize_openvino import QuantizeOpenVino
from edgekit.passes.quantize_ort import QuantizeOrt

REGISTRY: dict[str, type[Pass]] = {
    "prune_unstructured": PruneUnstructured,
    "prune_structured": PruneStructured,
    "lowrank": LowRank,
    "distill": Distill,
    "export_onnx": ExportOnnx,
    "quantize_ort": QuantizeOrt,
    "fp16": Fp16,
    "convert_openvino": ConvertOpenVino,
    "quantize_openvino": QuantizeOpenVino,
}

__all__ = ["REGISTRY", "Pass", "PassConfig", "PassContext"]
