"""Turn the MODEL argument into a ModelBundle: an example name, ``module:function`` or an ``.onnx`` file."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit import fidelity
from edgekit.bundle import Feed, ModelBundle, concat_outputs, split_batches
from edgekit.errors import EdgekitError, ModelInvalid, ModelNotFound, describe_validation, first_line


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
    except Exception as exc:  # the user's module raised while importing: theirs to fix, shown as theirs
        raise ModelInvalid(f"importing {module_name!r} raised {type(exc).__name__}: {first_line(exc, 200)}") from None
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    required = [p.name for p in params.values() if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "cache_dir"]  # fmt: skip
    if required:
        raise ModelInvalid(
            f"{ref} needs argument(s) {', '.join(required)}; MODEL must name a function edgekit can call without "
            "arguments (wrap it: def my_model(): return build(...))"
        )
    try:
        return factory(cache_dir=cache_dir()) if "cache_dir" in params else factory()
    except EdgekitError:
        raise
    except Exception as exc:
        raise ModelInvalid(f"{ref} raised {type(exc).__name__}: {first_line(exc, 200)}") from None


def _input_shape(inp: Any, given: dict[str, list[int]]) -> list[int]:
    """The shape of one sample of ONNX input ``inp``: fixed dimensions as declared, a dynamic axis 0 as 1
    (the sample axis), any other dynamic dimension from ``--input-shape`` or a one-line error naming it."""
    dims = list(inp.shape)
    if not dims:
        raise ModelInvalid(
            f"ONNX input {inp.name!r} is a scalar; axis 0 of every input must be the sample axis, so edgekit "
            "cannot feed this model (export it with a batch axis)"
        )
    if inp.name in given:
        shape = given[inp.name]
        fixed = [(i, d) for i, d in enumerate(dims) if isinstance(d, int) and d > 0]
        if len(shape) != len(dims) or any(shape[i] != d for i, d in fixed if i > 0):
            raise ModelInvalid(
                f"--input-shape {inp.name}={'x'.join(map(str, shape))} does not fit the model's input {dims}"
            )
        return [1, *shape[1:]]
    for i, d in enumerate(dims[1:], start=1):
        if not (isinstance(d, int) and d > 0):
            example = "x".join(["1", *(str(x) if isinstance(x, int) and x > 0 else "N" for x in dims[1:])])
            raise ModelInvalid(
                f"ONNX input {inp.name!r} has a dynamic dimension {i} ({d!r}); give its size with --input-shape "
                f"{inp.name}={example} (N: the size to calibrate, evaluate and time with) or real inputs with --data"
            )
    return [1, *dims[1:]]


def _random_feed(session: Any, samples: int, rng: np.random.Generator, given: dict[str, list[int]]) -> Feed:
    feed: Feed = {}
    for inp in session.get_inputs():
        shape = [samples, *_input_shape(inp, given)[1:]]
        if "int" in inp.type:
            feed[inp.name] = rng.integers(0, 100, shape).astype(np.int64 if "int64" in inp.type else np.int32)
        else:
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


class OwnModelOptions(BaseModel):
    """The optional third element a ``module:function`` factory may return (docs/own-models.md)."""

    model_config = ConfigDict(extra="forbid")
    model_type: Literal["transformer"] | None = None
    output_names: list[str] | None = None
    output_kinds: dict[str, Literal["vector", "score", "logits", "exact"]] = Field(default_factory=dict)
    dynamic_axes: dict[str, dict[int, str]] = Field(default_factory=dict)


def _check_inputs(name: str, inputs: Any, *, torch_model: bool) -> Feed:
    if not isinstance(inputs, dict) or not inputs:
        raise ModelInvalid(f"model {name!r}: the inputs must be a non-empty dict {{input_name: numpy array}}")
    lengths = set()
    inputs = {k: np.asarray(v) if isinstance(v, np.generic) else v for k, v in inputs.items()}
    for key, value in inputs.items():
        if not isinstance(value, np.ndarray):
            raise ModelInvalid(f"model {name!r}: input {key!r} is a {type(value).__name__}; give a numpy array")
        if value.ndim == 0:
            raise ModelInvalid(
                f"model {name!r}: input {key!r} is a scalar; axis 0 of every input must be the sample axis "
                "(give it shape [N, ...])"
            )
        if value.dtype == np.float64 and torch_model:
            raise ModelInvalid(
                f"model {name!r}: input {key!r} is float64; devices run float32 models, give value.astype(np.float32)"
            )
        lengths.add(len(value))
    if len(lengths) > 1:
        raise ModelInvalid(f"model {name!r}: the inputs have different sample counts {sorted(lengths)} on axis 0")
    return inputs


def _reference(name: str, predict: Any, feeds: list[Feed]) -> list[np.ndarray]:
    """The original model's outputs over ``feeds``; a model that cannot run on its own inputs stops here."""
    try:
        runs = [predict(f) for f in feeds]
        return concat_outputs(runs)
    except EdgekitError:
        raise
    except Exception as exc:
        raise ModelInvalid(
            f"model {name!r} fails on its own inputs: {first_line(exc, 200)}; check the shapes and dtypes "
            "of the arrays the factory returns"
        ) from None


def _check_sample_axis(name: str, predict: Any, inputs: Feed, names: list[str]) -> None:
    """Axis 0 of every output must follow the batch: two samples in, two rows out."""
    n = len(next(iter(inputs.values())))
    if n < 2:
        return
    try:
        outs = predict({k: v[:2] for k, v in inputs.items()})
    except Exception as exc:
        raise ModelInvalid(
            f"model {name!r} does not run on a batch of 2 samples ({first_line(exc, 160)}); axis 0 of every "
            "input must be the sample axis"
        ) from None
    for out_name, out in zip(names, outs, strict=False):
        if np.ndim(out) == 0 or np.shape(out)[0] != 2:
            raise ModelInvalid(
                f"model {name!r}: output {out_name!r} has shape {list(np.shape(out))} for 2 samples; axis 0 of "
                "every output must be the sample axis"
            )


def fidelity_bundle(
    name: str, *, module: Any = None, onnx_path: Path | None = None, inputs: Feed, options: dict[str, Any] | None = None
) -> ModelBundle:
    """A bundle for a model without labels: every output is compared with the original model's
    (``edgekit.fidelity``: by output kind, the worst output is the metric)."""
    from edgekit.artifact import Artifact
    from edgekit.hostrt import predictor

    try:
        opts = OwnModelOptions.model_validate(options or {})
    except ValidationError as exc:
        raise ModelInvalid(f"model {name!r}: options {describe_validation(exc)}") from None
    inputs = _check_inputs(name, inputs, torch_model=module is not None)
    n = len(next(iter(inputs.values())))
    half = max(1, n // 2)
    calib = split_batches({k: v[:half] for k, v in inputs.items()}, 1)
    evals = split_batches({k: v[half:] if n > 1 else v for k, v in inputs.items()}, 1)
    original = Artifact(kind="torch", module=module) if module is not None else Artifact(kind="onnx", path=onnx_path)
    predict = predictor(original, threads=os.cpu_count() or 1)
    reference = _reference(name, predict, evals)
    names = opts.output_names or (["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))])
    if len(names) != len(reference):
        raise ModelInvalid(f"model {name!r}: {len(names)} output_names for {len(reference)} outputs")
    if module is not None:  # an ONNX file's input shapes say themselves whether it takes a batch
        _check_sample_axis(name, predict, inputs, names)
    unknown = set(opts.output_kinds) - set(names)
    if unknown:
        raise ModelInvalid(f"model {name!r}: output_kinds names unknown outputs {sorted(unknown)} (outputs: {names})")
    kinds = [opts.output_kinds.get(o) or fidelity.kind_of(r) for o, r in zip(names, reference, strict=True)]
    again, _ = fidelity.score_outputs(_reference(name, predict, evals), reference, names, kinds)
    if again < 0.999:
        raise ModelInvalid(
            f"model {name!r} gives different outputs for the same inputs (fidelity {again:.4f} on a second run); "
            "put it in eval() mode and remove randomness (dropout, sampling) so a compressed copy can be judged"
        )
    dynamic = {k: {0: "batch"} for k in [*inputs, *names]}
    for key, axes in opts.dynamic_axes.items():
        if key not in dynamic:
            raise ModelInvalid(f"model {name!r}: dynamic_axes names {key!r}, which is no input or output")
        dynamic[key] = {**dynamic[key], **axes}
    return ModelBundle(
        name=name,
        task="custom",
        module=module,
        onnx_path=onnx_path,
        input_names=list(inputs),
        output_names=names,
        example=evals[0],
        calibration=calib,
        eval_feeds=evals,
        metric_name="output_fidelity",
        score=lambda first: fidelity.compare(first, reference[0], kinds[0])[0],
        score_outputs=lambda outs: fidelity.score_outputs(outs, reference, names, kinds),
        dynamic_axes=dynamic,
        model_type=opts.model_type,
        description="metric: the worst output's fidelity to the original model's (" + ", ".join(
            f"{o}: {k}" for o, k in zip(names, kinds, strict=True)) + ")",
    )  # fmt: skip


def load_onnx(path: Path, *, data: Path | None = None, input_shapes: dict[str, list[int]] | None = None) -> ModelBundle:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc, 200)
        raise ModelNotFound(f"{path} is not a loadable ONNX model: {first}") from None
    if data is not None:
        inputs = _load_data(data, session)
    else:
        given = dict(input_shapes or {})
        unknown = set(given) - {i.name for i in session.get_inputs()}
        if unknown:
            names = [i.name for i in session.get_inputs()]
            raise ModelInvalid(f"--input-shape names {sorted(unknown)}, which the model lacks (its inputs: {names})")
        inputs = _random_feed(session, 64, np.random.default_rng(0), given)
    bundle = fidelity_bundle(path.stem, onnx_path=path, inputs=inputs)
    bundle.output_names = [o.name for o in session.get_outputs()]
    if data is None:
        bundle.description += " on synthetic random inputs (pass --data inputs.npz for real ones)"
    return bundle


def _load_data(data: Path, session: Any) -> Feed:
    """``--data``: an .npz with one array per model input, each of the dtype the model declares."""
    names = [i.name for i in session.get_inputs()]
    try:
        with np.load(data, allow_pickle=False) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except FileNotFoundError:
        raise ModelInvalid(f"--data {data} does not exist; give an .npz with one array per input {names}") from None
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"--data {data} is not an .npz archive ({first_line(exc, 120)}); write it with "
                           f"np.savez(path, **{{name: array}}) for the inputs {names}") from None  # fmt: skip
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ModelInvalid(f"--data {data} lacks the input(s) {missing}; it holds {sorted(arrays)}")
    from edgekit_agent.runtimes.ort import ONNX_TYPES  # the device's own ONNX type -> numpy names

    for inp in session.get_inputs():
        want = ONNX_TYPES.get(inp.type)
        if want is not None and arrays[inp.name].dtype != want:
            raise ModelInvalid(
                f"--data {data}: input {inp.name!r} is {arrays[inp.name].dtype}, the model takes {np.dtype(want)}; "
                f"save it with .astype(np.{np.dtype(want).name})"
            )
    return {n: arrays[n] for n in names}


def load_model(spec: str, *, data: Path | None = None, input_shapes: dict[str, list[int]] | None = None) -> ModelBundle:
    """``input_shapes``: for an ONNX file without ``data``, the shape of each input with dynamic dimensions."""
    from edgekit_models import EXAMPLES

    if spec in EXAMPLES:
        return _call(EXAMPLES[spec])
    if spec.endswith(".onnx"):
        path = Path(spec)
        if not path.exists():
            raise ModelNotFound(f"ONNX file {spec} does not exist")
        return load_onnx(path, data=data, input_shapes=input_shapes)
    if input_shapes:
        raise ModelInvalid(f"--input-shape is for ONNX files; {spec} brings its own inputs")
    if ":" in spec:
        result = _call(spec)
        if isinstance(result, ModelBundle):
            return _no_data(spec, data, result)
        return _no_data(spec, data, own_model(spec, result))
    raise ModelNotFound(
        f"unknown model {spec!r}; use one of {', '.join(EXAMPLES)}, 'module:function' or a path ending in .onnx"
    )


def _no_data(spec: str, data: Path | None, bundle: ModelBundle) -> ModelBundle:
    if data is not None:
        raise ModelInvalid(
            f"--data is for ONNX files; {spec} brings its own inputs (return them from the function instead)"
        )
    return bundle


def own_model(spec: str, result: Any) -> ModelBundle:
    """``(nn.Module, {input_name: array})`` or ``(nn.Module, inputs, options)`` from a user's factory."""
    import torch

    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ModelInvalid(
            f"{spec} returned a {type(result).__name__}; it must return a ModelBundle, (nn.Module, "
            "{input_name: array}) or (nn.Module, inputs, options)"
        )
    module, inputs, *rest = result
    if not isinstance(module, torch.nn.Module):
        raise ModelInvalid(f"{spec} returned a {type(module).__name__} as its model; give a torch nn.Module")
    options = rest[0] if rest else None
    if options is not None and not isinstance(options, dict):
        raise ModelInvalid(f"{spec}: the third element (options) must be a dict, not {type(options).__name__}")
    return fidelity_bundle(spec.rpartition(":")[2], module=module.eval(), inputs=inputs, options=options)
