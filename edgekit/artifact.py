"""The thing that flows between passes: a torch module, an ONNX file or an OpenVINO IR, plus its precision."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

Kind = str  # "torch", or the kind a runtime runs (edgekit.runtimes: "onnx", "openvino")


@dataclass(frozen=True)
class Artifact:
    kind: Kind
    precision: str = "fp32"
    # the relative tolerance of the device's smoke test (the strictest passes' declarations; fp32 by default:
    # fp32 runs agree to float rounding across CPUs)
    smoke_rtol: float = 0.01
    module: Any = None
    path: Path | None = None
    # Runtime settings the artifact must be run with (e.g. OpenVINO's inference precision hint).
    runtime_config: dict[str, str] = field(default_factory=dict)
    # Facts a pass records about its own output (sparsity, ranks, quantized ops...).
    notes: dict[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> Artifact:
        return replace(self, **changes)

    def files(self) -> list[Path]:
        """Every file the artifact consists of on disk (ONNX external data and IR .bin included)."""
        if self.path is None:
            return []
        from edgekit.runtimes import for_kind

        data = [p for p in self.path.parent.glob(self.path.name + ".data")]  # ONNX external data
        return [*for_kind(self.kind).runtime.files(self.path), *data]
