"""Measurements every step of the report carries: parameters, MACs, size on disk.

MACs count multiply-accumulates of Conv/Gemm/MatMul (and their quantized forms); quantization does not
change that count, it changes the cost of each MAC, which is what latency shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import Artifact
from edgekit.bundle import Feed


def torch_params(module: Any, example: Feed | None = None) -> int:
    """Non-zero parameters: unstructured pruning reduces this while the dense tensor shapes stay the same.
    With ``example``, only those an output depends on (autograd from the outputs): a submodule the forward
    never uses (BERT's pooler under mean pooling) is not part of the model, and the export drops it too."""
    params = list(module.parameters())
    if example is not None:
        params = _used(module, params, example)
    return int(sum(int((p != 0).sum()) for p in params))


def _used(module: Any, params: list[Any], example: Feed) -> list[Any]:
    import torch

    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            outs = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in example.values()])
            leaves = list(outs.values()) if isinstance(outs, dict) else list(outs) if isinstance(outs, list | tuple) \
                else [outs]  # fmt: skip
            total = sum(t.float().sum() for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad)
            if not isinstance(total, torch.Tensor):  # integer outputs only (argmax): no gradient to follow
                return params
            grads = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def torch_macs(module: Any, example: Feed) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs = [torch.from_numpy(np.ascontiguousarray(v)) for v in example.values()]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops() // 2)


def onnx_params(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = 0
    tensors = list(model.graph.initializer)
    # the exporter folds some weights (biases) into Constant nodes instead of initializers
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for init in tensors:
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL):
            continue  # shape constants and indices, not weights
        arr = numpy_helper.to_array(init)
        if arr.size > 1:
            total += int(np.count_nonzero(arr))
    return total


def _infer_shapes(model: Any) -> Any:
    """ONNX Runtime's symbolic inference first: onnx's own loses the batch dimension inside transformer graphs
    (MiniLM's embeddings), which left every MatMul without a shape and counted 0 MACs."""
    from onnx import shape_inference

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return inferred
    except Exception:  # an op it does not know: the plainer inference below still covers convolutional graphs
        pass
    return shape_inference.infer_shapes(model, data_prop=True)


def onnx_macs(path: Path, example: Feed) -> int:
    """Static MAC count from shape inference, with the example's concrete input shapes."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name in example:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, example[inp.name].shape, strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    model = _infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0], [])
        if op in {"Conv", "ConvInteger", "QLinearConv"}:
            w = shapes.get(node.input[3 if op == "QLinearConv" else 1], [])
            if len(w) >= 3 and out and all(out):
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif op in {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"}:
            a = shapes.get(node.input[0], [])
            if a and out and all(out):
                trans_a = any(att.name == "transA" and att.i for att in node.attribute)
                k = a[-2] if trans_a and len(a) >= 2 else a[-1]
                total += int(np.prod(out)) * int(k)
    return total


def size_bytes(artifact: Artifact) -> int:
    if artifact.kind == "torch":
        import io

        import torch

        buf = io.BytesIO()
        torch.save(artifact.module.state_dict(), buf)
        return buf.tell()
    return sum(p.stat().st_size for p in artifact.files() if p.exists())


def compressed_size_bytes(module: Any) -> int:
    """zlib size of the weights: what sparsity buys on the wire and on flash, where dense runtimes gain nothing."""
    import zlib

    blob = b"".join(p.detach().cpu().numpy().tobytes() for p in module.parameters())
    return len(zlib.compress(blob, 6))
