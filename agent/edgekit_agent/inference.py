"""``infer/request`` → ``infer/response``: tensors as {shape, dtype, b64} (raw little-endian bytes) or {data}.

Every request gets an answer with its ``id``: the outputs, or an ``error`` naming what was wrong.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from edgekit_agent.protocol import ProtocolError, loads

DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
MAX_REQUEST = 16 << 20


def encode(array: Any) -> dict[str, Any]:
    import numpy as np

    array = np.ascontiguousarray(array)
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.name,
        "b64": base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode(),
    }


def decode(spec: Any, name: str) -> Any:
    import numpy as np

    if not isinstance(spec, dict):
        raise ProtocolError(f"input {name!r} must be an object with shape, dtype and b64 (or data)")
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ProtocolError(f"input {name!r} has unsupported dtype {dtype!r}")
    if "data" in spec:
        try:
            array = np.asarray(spec["data"], dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"input {name!r}: {exc}") from None
        return array
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r} needs a shape: a list of non-negative integers")
    try:
        raw = base64.b64decode(spec.get("b64", ""), validate=True)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {name!r}: b64 is not valid base64") from None
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes do not fill shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def handle(payload: bytes, model: Any, record: Any, *, loading: bool = False) -> tuple[str | None, dict[str, Any]]:
    """(request id, response) for one request; ``record(latency_ms | None)`` feeds telemetry.

    ``loading``: the agent has an installed model but has not finished loading it (just after a start);
    the caller is told to ask again instead of being told that nothing is installed.
    """
    try:
        request = loads(payload, max_bytes=MAX_REQUEST)
    except ProtocolError as exc:
        return None, {"id": None, "error": f"bad request: {exc}"}
    rid = request.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        return None, {"id": None, "error": "bad request: 'id' must be a string of 1-128 characters"}
    if model is None:
        record(None)
        if loading:
            return rid, {"id": rid, "error": "busy: loading the installed model; ask again in a moment"}
        return rid, {"id": rid, "error": "no model is installed yet"}
    inputs = request.get("inputs")
    if not isinstance(inputs, dict):
        return rid, {"id": rid, "error": "bad request: 'inputs' must be an object {name: tensor}"}
    try:
        feed = {name: decode(spec, name) for name, spec in inputs.items()}
        missing = set(model.input_names) - set(feed)
        if missing:
            raise ProtocolError(f"missing input(s) {sorted(missing)}; the model takes {model.input_names}")
        t0 = time.perf_counter()
        outputs = model.predict(feed)
        latency = (time.perf_counter() - t0) * 1e3
    except ProtocolError as exc:
        record(None)
        return rid, {"id": rid, "error": f"bad request: {exc}"}
    except Exception as exc:  # the runtime rejected the input (shape, dtype): answer, do not drop
        record(None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return rid, {"id": rid, "error": f"inference failed: {first}"}
    record(latency)
    m = model.manifest
    return rid, {
        "id": rid,
        "outputs": {name: encode(out) for name, out in zip(model.output_names, outputs, strict=False)},
        "latency_ms": round(latency, 4),
        "model": {"name": m.name, "version": m.version, "runtime": f"{model.engine}:{model.device}"},
    }
