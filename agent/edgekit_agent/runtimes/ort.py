"""ONNX Runtime: sessions on an execution provider (CPUExecutionProvider everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DESCRIPTION = {
    "name": "onnxruntime", "module": "onnxruntime", "extra": "onnxruntime", "model_format": "onnx", "kind": "onnx",
    "entry": "model.onnx", "sidecars": (), "cpu": "CPUExecutionProvider", "static_shape_devices": (),
    "preferred_on": ("aarch64", "armv7l"), "impl": __name__,
}  # fmt: skip

ONNX_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}  # fmt: skip


def _session(path: Path, provider: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[provider])


def open_session(path: Path, device: str, threads: int, config: dict[str, str]) -> tuple[Any, list[str], list[str]]:
    import onnxruntime as ort

    if device not in ort.get_available_providers():
        raise LookupError(f"execution provider {device} is not available (have {ort.get_available_providers()})")
    session = _session(path, device, threads)
    names = [i.name for i in session.get_inputs()]
    run_session = session.run

    def run(feed: dict[str, Any]) -> list[Any]:
        # Pass the caller's dict through when it holds exactly the inputs: rebuilding it costs µs per call,
        # which is measurable on 50 µs models (docs/benchmarks.md).
        return run_session(None, feed if len(feed) == len(names) else {n: feed[n] for n in names})

    return run, names, [o.name for o in session.get_outputs()]


def io_spec(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    session = _session(path, "CPUExecutionProvider", 1)

    def spec(args: list) -> list[dict[str, Any]]:
        return [{"name": a.name, "dtype": ONNX_TYPES.get(a.type, a.type),
                 "shape": [d if isinstance(d, int) else None for d in a.shape]} for a in args]  # fmt: skip

    return spec(session.get_inputs()), spec(session.get_outputs())


def devices() -> list[str]:
    import onnxruntime as ort

    return [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]  # a cloud endpoint, not a device
