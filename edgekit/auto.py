"""``--auto``: try the recipes that make sense for a profile and model, keep the fastest within tolerance.

Rules a user can rely on: a candidate whose metric drop exceeds the tolerance is never chosen, and an
INT8 (or fp16) candidate that is slower on this host than the fp32 model of the same runtime is never
chosen either (ORT's INT8 is slower than fp32 on tiny models or CPUs without VNNI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit.bundle import ModelBundle
from edgekit.profiles import DeviceProfile
from edgekit.recipe import Recipe, parse_recipe


def candidates(bundle: ModelBundle, profile: DeviceProfile) -> list[Recipe]:
    """fp32 parents first (one per runtime), then the compressed variants the profile can run."""
    transformer = bundle.model_type == "transformer"
    trainable = bundle.module is not None and bundle.train_batches is not None and not transformer
    out: list[dict[str, Any]] = []
    for runtime in ("onnxruntime", "openvino"):
        if not profile.supports(runtime):
            continue
        ov = runtime == "openvino"
        static = [{"type": "convert_openvino", "static_shape": True}] if ov and transformer else []
        out.append({"name": f"{runtime}-fp32", "runtime": runtime, "passes": static})
        if "fp16" in profile.precisions:
            out.append({"name": f"{runtime}-fp16", "runtime": runtime, "passes": [*static, {"type": "fp16"}]})
        if "int8" not in profile.precisions:
            continue
        if ov:
            out.append(
                {"name": "openvino-int8-nncf", "runtime": runtime, "passes": [*static, {"type": "quantize_openvino"}]}
            )
            if trainable:
                out.append(
                    {
                        "name": "openvino-prune50-int8",
                        "runtime": runtime,
                        "passes": [{"type": "prune_structured", "ratio": 0.5}, {"type": "quantize_openvino"}],
                    }
                )
        else:
            out.append(
                {
                    "name": "onnxruntime-int8-dynamic",
                    "runtime": runtime,
                    "passes": [{"type": "quantize_ort", "mode": "dynamic"}],
                }
            )
            out.append(
                {
                    "name": "onnxruntime-int8-static",
                    "runtime": runtime,
                    "passes": [{"type": "quantize_ort", "mode": "static"}],
                }
            )
            if trainable and bundle.student:
                out.append(
                    {
                        "name": "onnxruntime-distilled",
                        "runtime": runtime,
                        "passes": [{"type": "distill", **bundle.student}],
                    }
                )
            if trainable:
                out.append(
                    {
                        "name": "onnxruntime-prune50-int8",
                        "runtime": runtime,
                        "passes": [
                            {"type": "prune_structured", "ratio": 0.5},
                            {"type": "quantize_ort", "mode": "static"},
                        ],
                    }
                )
    return [parse_recipe(c, source=f"auto candidate {c['name']}") for c in out]


@dataclass
class CandidateResult:
    name: str
    runtime: str
    precision: str
    metric: float | None
    performance_drop: float | None
    latency_ms: float | None
    size_bytes: int | None
    status: str  # ok | over-tolerance | slower-than-fp32 | not-applicable | error
    reason: str = ""
    seconds: float | None = None  # wall time to build and measure this candidate
    steps: list[Any] = field(default_factory=list)
    artifact: Any = None

    def row(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "name",
                "runtime",
                "precision",
                "metric",
                "performance_drop",
                "latency_ms",
                "size_bytes",
                "status",
                "reason",
                "seconds",
            )
        }


def choose(results: list[CandidateResult]) -> CandidateResult | None:
    """Mark INT8/fp16 candidates slower than their runtime's fp32 parent, then pick the fastest survivor."""
    fp32 = {r.runtime: r for r in results if r.name.endswith("-fp32") and r.status == "ok"}
    for r in results:
        parent = fp32.get(r.runtime)
        if r.status == "ok" and r.precision != "fp32" and parent and r.latency_ms > parent.latency_ms:
            r.status = "slower-than-fp32"
            r.reason = f"{r.latency_ms:.3f} ms vs fp32 parent {parent.latency_ms:.3f} ms"
    ok = [r for r in results if r.status == "ok"]
    return min(ok, key=lambda r: r.latency_ms) if ok else None
