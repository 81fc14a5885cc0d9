"""OpenVINO: compiled models on a device (CPU, GPU, NPU). The inference precision is always pinned: its CPU
plugin otherwise runs bf16 silently on CPUs with AMX or avx512_bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DESCRIPTION = {
    "name": "openvino", "module": "openvino", "extra": "openvino", "model_format": "openvino-ir", "kind": "openvino",
    "entry": "model.xml", "sidecars": (".bin",), "cpu": "CPU", "static_shape_devices": ("NPU",),
    "preferred_on": ("x86_64",), "impl": __name__,
}  # fmt: skip


def open_session(path: Path, device: str, threads: int, config: dict[str, str]) -> tuple[Any, list[str], list[str]]:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    if device not in core.available_devices:
        raise LookupError(f"OpenVINO device {device} is not present (have {core.available_devices})")
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if device == "CPU":
        settings |= {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}
    settings |= config
    compiled = core.compile_model(str(path), device, settings)
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]

    def run(feed: dict[str, Any]) -> list[Any]:
        result = request.infer({n: feed[n] for n in names})
        return [np.array(result[o]) for o in compiled.outputs]

    return run, names, [o.get_any_name() for o in compiled.outputs]


def io_spec(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def spec(ports: list) -> list[dict[str, Any]]:
        return [{"name": p.get_any_name(), "dtype": np.dtype(p.get_element_type().to_dtype()).name,
                 "shape": [d.get_length() if d.is_static else None for d in p.get_partial_shape()]}
                for p in ports]  # fmt: skip

    return spec(model.inputs), spec(model.outputs)


def devices() -> list[str]:
    import openvino as ov

    return sorted(ov.Core().available_devices, key=lambda d: d != "NPU")  # an NPU first where there is one
