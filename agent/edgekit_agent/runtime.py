"""Load a verified package into ONNX Runtime or OpenVINO and run it; fall back to CPU, never crash.

The manifest names an engine and a device; the profile's order (``runtimes`` in the device profile) may
add alternatives. A device that does not exist here (an NPU on a board without one, a CUDA provider on a
CPU build) or fails to compile the model falls back to the CPU with an event saying why. Runtimes are
imported only here, lazily, so the rest of the agent stays importable without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.manifest import Manifest

CPU = {"onnxruntime": "CPUExecutionProvider", "openvino": "CPU"}
Event = Callable[[str, dict[str, Any]], None]


class SmokeTestFailed(Exception):
    """The new model's output on the package's sample is not the expected one: it must not serve."""


class RuntimeUnavailable(RuntimeError):
    """The package's engine is not installed on this device (install edgekit-agent[onnxruntime|openvino])."""


@dataclass
class Loaded:
    """A model ready to serve; ``predict`` is serialised by a lock so any thread may call it."""

    manifest: Manifest
    directory: Path
    engine: str
    device: str
    fallback_reason: str | None
    _run: Callable[[dict[str, Any]], list[Any]]
    input_names: list[str]
    output_names: list[str]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, feed: dict[str, Any]) -> list[Any]:
        with self._lock:  # one inference at a time: runtimes' sessions are not all safe to share
            return self._run(feed)


def _ort(path: Path, device: str, threads: int, manifest: Manifest) -> tuple[Any, list[str], list[str]]:
    import onnxruntime as ort

    if device not in ort.get_available_providers():
        raise LookupError(f"execution provider {device} is not available (have {ort.get_available_providers()})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=[device])
    names = [i.name for i in session.get_inputs()]

    run_session = session.run

    def run(feed: dict[str, Any]) -> list[Any]:
        # Pass the caller's dict through when it holds exactly the inputs: rebuilding it costs µs per call,
        # which is measurable on 50 µs models (docs/benchmarks.md).
        return run_session(None, feed if len(feed) == len(names) else {n: feed[n] for n in names})

    return run, names, [o.name for o in session.get_outputs()]


def _openvino(path: Path, device: str, threads: int, manifest: Manifest) -> tuple[Any, list[str], list[str]]:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    if device not in core.available_devices:
        raise LookupError(f"OpenVINO device {device} is not present (have {core.available_devices})")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if device == "CPU":
        config |= {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}
    config |= manifest.runtime_config
    compiled = core.compile_model(str(path), device, config)
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]

    def run(feed: dict[str, Any]) -> list[Any]:
        result = request.infer({n: feed[n] for n in names})
        return [np.array(result[o]) for o in compiled.outputs]

    return run, names, [o.get_any_name() for o in compiled.outputs]


_LOADERS = {"onnxruntime": _ort, "openvino": _openvino}


def load(directory: Path, manifest: Manifest, *, threads: int = 1, event: Event = lambda _k, _d: None) -> Loaded:
    """Load ``manifest.entry`` from ``directory`` on the manifest's device, else on the CPU (with an event)."""
    engine = manifest.engine
    try:
        __import__(engine)
    except ImportError:
        raise RuntimeUnavailable(
            f"the package needs {engine}, which is not installed; pip install 'edgekit-agent[{engine}]'"
        ) from None
    path = directory / manifest.entry
    loader = _LOADERS[engine]
    devices = [manifest.device] + ([CPU[engine]] if manifest.device != CPU[engine] else [])
    reason = None
    for device in devices:
        try:
            run, inputs, outputs = loader(path, device, threads, manifest)
        except Exception as exc:  # a missing device or a compile failure: the next device, never a crash
            reason = f"{engine}:{device}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
            if device != CPU[engine]:
                event("fallback", {"from": f"{engine}:{device}", "to": f"{engine}:{CPU[engine]}", "reason": reason})
            continue
        return Loaded(manifest, directory, engine, device, reason if device != manifest.device else None,
                      run, inputs, outputs)  # fmt: skip
    raise RuntimeError(f"cannot load {manifest.entry} on any device: {reason}")


def smoke_test(model: Loaded, *, warmup: int = 3) -> None:
    """Run the package's sample and compare with its expected output; raises SmokeTestFailed with the reason.

    Also the warm-up: the first inferences (allocation, kernel selection) happen here, not on a user's request.
    """
    import numpy as np

    m = model.manifest
    feed = {name: np.load(model.directory / file, allow_pickle=False) for name, file in m.sample.inputs}
    for _ in range(warmup):
        outputs = model.predict(feed)
    for (name, file), actual in zip(m.sample.outputs, outputs, strict=False):
        expected = np.load(model.directory / file, allow_pickle=False)
        actual = np.asarray(actual)
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            raise SmokeTestFailed(
                f"output {name!r} is {actual.dtype}{list(actual.shape)}, "
                f"expected {expected.dtype}{list(expected.shape)}"
            )
        if not np.all(np.isfinite(actual)):
            raise SmokeTestFailed(f"output {name!r} has NaN or Inf")
        err = float(np.abs(actual.astype(np.float64) - expected).max()) if actual.size else 0.0
        bound = m.sample.atol + m.sample.rtol * (float(np.abs(expected).max()) if expected.size else 0.0)
        if err > bound:
            raise SmokeTestFailed(f"output {name!r} differs from the sample by {err:.4g} (allowed {bound:.4g})")
    if len(outputs) != len(m.sample.outputs):
        raise SmokeTestFailed(f"the model gave {len(outputs)} outputs, the sample has {len(m.sample.outputs)}")
