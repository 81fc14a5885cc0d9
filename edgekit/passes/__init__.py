"""Pass registry: adding a pass is one file plus one line here. The pipeline knows nothing else."""

from __future__ import annotations

from edgekit.passes.base import Pass, PassConfig, PassContext
from edgekit.passes.convert_openvino import ConvertOpenVino
from edgekit.passes.distill import Distill
from edgekit.passes.export_onnx import ExportOnnx
from edgekit.passes.fp16 import Fp16
from edgekit.passes.lowrank import LowRank
from edgekit.passes.prune_structured import PruneStructured
from edgekit.passes.prune_transformer import PruneTransformer
from edgekit.passes.prune_unstructured import PruneUnstructured
from edgekit.passes.quantize_openvino import QuantizeOpenVino
from edgekit.passes.quantize_ort import QuantizeOrt

REGISTRY: dict[str, type[Pass]] = {
    p.name: p
    for p in (
        PruneUnstructured,
        PruneStructured,
        PruneTransformer,
        LowRank,
        Distill,
        ExportOnnx,
        QuantizeOrt,
        Fp16,
        ConvertOpenVino,
        QuantizeOpenVino,
    )
}

#: Every precision a package can hold: fp32 (what every model starts as) and what the passes declare.
PRECISIONS: tuple[str, ...] = ("fp32", *sorted({p.precision for p in REGISTRY.values() if p.precision}))


def precisions_of(passes: list[PassConfig]) -> set[str]:
    """The precisions a recipe's passes write (what a profile must list for ``--auto`` to offer it)."""
    return {p for c in passes if (p := REGISTRY[c.type].precision)}


__all__ = ["PRECISIONS", "REGISTRY", "Pass", "PassConfig", "PassContext", "precisions_of"]
