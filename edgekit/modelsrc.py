"""Turn the MODEL argument into a ModelBundle: an example name, ``module:function`` or an ``.onnx`` file."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import Feed, ModelBundle, split_batches
from edgekit.errors import ModelNotFound, first_line


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "models"


def _call(ref: str) -> Any:
    module_name, _, func = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), func)
    except ImportError as exc:
        raise ModelNotFound(
            f"cannot import {module_name!r} for model {ref!r} ({exc}); check the module is on PYTHONPATH"
        ) from None
    except AttributeError:
        raise ModelNotFound(
            f"module {module_name!r} has no function {func!r}; MODEL must be 'module:function'"
        ) from None
    import inspect

    params = inspect.signature(factory).parameters
    return factory(cache_dir=cache_dir()) if "cache_dir" in params else factory()


def _random_feed(session: Any, batch: int, rng: np.random.Generator) -> Feed:
    feed: Feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
        if "int" in inp.type:
            feed[inp.name] = rng.integers(0, 100, shape).astype(np.int64 if "int64" in inp.type else np.int32)
        else:
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def fidelity_bundle(name: str, *, module: Any = None, onnx_path: Path | None = None, inputs: Feed) -> ModelBundle:
    """A bundle whose metric is how close outputs stay to the original model's (cosine), for models without labels."""
    from edgekit.artifact import Artifact
    from edgekit.hostrt import predictor

    n = len(next(iter(inputs.values())))
    half = max(1, n // 2)
    calib = split_batches({k: v[:half] for k, v in inputs.items()}, 1)
    evals = split_batches({k: v[half:] if n > 1 else v for k, v in inputs.items()}, 1)
    original = Artifact(kind="torch", module=module) if module is not None else Artifact(kind="onnx", path=onnx_path)
    predict = predictor(original, threads=os.cpu_count() or 1)
    reference = np.concatenate([predict(f)[0].reshape(len(next(iter(f.values()))), -1) for f in evals])

    def cosine(out: np.ndarray) -> float:
        out = out.reshape(len(reference), -1)
        num = (out * reference).sum(1)
        den = np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
        return float(np.mean(num / np.clip(den, 1e-12, None)))

    return ModelBundle(
        name=name,
        task="custom",
        module=module,
        onnx_path=onnx_path,
        input_names=list(inputs),
        output_names=["output"],
        example=evals[0],
        calibration=calib,
        eval_feeds=evals,
        metric_name="output_cosine",
        score=cosine,
        description="metric: cosine of outputs to the original model's",
    )


def load_onnx(path: Path, *, data: Path | None = None) -> ModelBundle:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc, 200)
        raise ModelNotFound(f"{path} is not a loadable ONNX model: {first}") from None
    if data is not None:
        loaded = np.load(data)
        inputs = {i.name: loaded[i.name] for i in session.get_inputs() if i.name in loaded}
        if len(inputs) != len(session.get_inputs()):
            names = [i.name for i in session.get_inputs()]
            raise ModelNotFound(f"{data} must hold one array per model input {names}")
    else:
        rng = np.random.default_rng(0)
        feeds = [_random_feed(session, 1, rng) for _ in range(64)]
        inputs = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    bundle = fidelity_bundle(path.stem, onnx_path=path, inputs=inputs)
    bundle.output_names = [o.name for o in session.get_outputs()]
    if data is None:
        bundle.description += " on synthetic random inputs (pass --data inputs.npz for real ones)"
    return bundle


def load_model(spec: str, *, data: Path | None = None) -> ModelBundle:
    from edgekit_models import EXAMPLES

    if spec in EXAMPLES:
        return _call(EXAMPLES[spec])
    if spec.endswith(".onnx"):
        path = Path(spec)
        if not path.exists():
            raise ModelNotFound(f"ONNX file {spec} does not exist")
        return load_onnx(path, data=data)
    if ":" in spec:
        result = _call(spec)
        if isinstance(result, ModelBundle):
            return result
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
            return fidelity_bundle(spec.rpartition(":")[2], module=result[0].eval(), inputs=result[1])
        raise ModelNotFound(f"{spec} must return a ModelBundle or (nn.Module, {{input_name: array}})")
    raise ModelNotFound(
        f"unknown model {spec!r}; use one of {', '.join(EXAMPLES)}, 'module:function' or a path ending in .onnx"
    )
