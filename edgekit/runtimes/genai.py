"""The host's side of OpenVINO GenAI (``edgekit_agent.runtimes.genai``): a GGUF file to the directory
LLMPipeline reads, NNCF's weight compression of it, and its held-out perplexity.

Why the GGUF goes through openvino-genai's own reader and not optimum-intel: optimum-intel 2.2 (the release
for OpenVINO 2026.4) requires transformers < 5.6 and torchvision, and edgekit pins transformers 5.23 with a
CPU-only torch. The reader builds the stateful graph optimum-intel exports (input_ids, attention_mask,
position_ids, beam_idx; the KV cache in state variables) and writes the tokenizer and detokenizer with
openvino-tokenizers, so what LLMPipeline runs on a device is what is measured here. Its graph keeps the
file's quantized weights (Q4_1, Q8_0) with their decompression; folding those constants gives the
dequantized weights in fp32: the fp32 reference, equal to transformers' own dequantization of the file
(tests/edgekit/llm). NNCF compresses from that reference.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekit_agent.runtimes import genai as agent_genai
from edgekit_agent.runtimes import get

from edgekit.errors import ModelInvalid, PassFailed, RecipeInvalid
from edgekit.llm.gguf import GENERATION_CONFIG, GGUFInfo, inspect, write_generation_config

RUNTIME = get(agent_genai.DESCRIPTION["name"])
NAME = RUNTIME.name
MODEL_XML = RUNTIME.entry
MODEL_BIN = Path(MODEL_XML).with_suffix(".bin").name
TOKENIZER_FILES = tuple(f for f in agent_genai.FILES if f not in (MODEL_XML, MODEL_BIN, GENERATION_CONFIG))
BASE_RUNTIME = "openvino"  # the tensor runtime under it: a profile must list it for a language model to be packaged
KIND_LABEL = "OpenVINO IR"
# the fp32 reference runs with an fp32 KV cache and no on-the-fly activation quantization (the CPU plugin's
# defaults for compressed weights), so it computes what transformers computes
REFERENCE_CONFIG = {"KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}

_READER = """
import sys, openvino_genai
openvino_genai.LLMPipeline(sys.argv[1], "CPU", enable_save_ov_model=True, INFERENCE_NUM_THREADS=1)
"""


def read(gguf_path: Path, work: Path) -> Path:
    """The reader's model directory (its IR with the file's quantized weights, tokenizer, detokenizer), in
    ``work``: read once, then ``reference`` and ``native_model`` write from it. The reader writes next to the
    file it reads, so it gets a link to it in ``work``.

    It runs in a child process: on some layouts (an F16 token embedding) the reader dies of SIGFPE, which
    would take edgekit down with it instead of giving the user a one-line error.
    """
    src = work / "gguf"
    src.mkdir(parents=True)
    local = src / gguf_path.name
    try:
        local.symlink_to(gguf_path.resolve())
    except OSError:
        shutil.copyfile(gguf_path, local)
    proc = subprocess.run([sys.executable, "-c", _READER, str(local)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (src / MODEL_XML).exists():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1][:200] if lines and proc.returncode > 0 else f"the reader died of signal {-proc.returncode}"
        raise ModelInvalid(
            f"OpenVINO GenAI cannot build {gguf_path.name} ({why}); its GGUF reader takes llama/qwen2 models "
            "whose matrices are Q8_0, Q4_0, Q4_1, Q4_K or Q6_K"
        ) from None
    return src


def dequantize(model: Any) -> Any:
    """Fold the GGUF's weight decompression (u4/u8 constants, scales, zero points) into fp32 constants."""
    from openvino.passes import ConstantFolding, Manager

    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    return model


def _row_orders(name: str, info: GGUFInfo, arrays: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``arrays`` (a tensor's rows first) as stored, and for attention Q and K also in llama.cpp's permute() order
    and its inverse: its converter reorders their rows for its rotary layout, and the reader's graph may hold
    any of the three."""
    n = info.heads if name.endswith("attn_q.weight") else info.kv_heads if name.endswith("attn_k.weight") else 0
    versions = [arrays]
    if n:
        half = arrays[0].shape[0] // n // 2
        for order in ((n, 2, half), (n, half, 2)):
            versions.append(tuple(a.reshape(*order, -1).swapaxes(1, 2).reshape(a.shape) for a in arrays))
    return versions


def _exact_weights(gguf_path: Path, info: GGUFInfo) -> dict[tuple[int, ...], list[Any]]:
    """Every matrix of the file dequantized exactly (gguf-py), by shape, in each row order (``_row_orders``)."""
    import gguf
    import numpy as np

    out: dict[tuple[int, ...], list[Any]] = {}
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        if len(t.shape) != 2:
            continue
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        for (v,) in _row_orders(t.name, info, (w,)):
            out.setdefault(v.shape, []).append(v)
            out.setdefault(v.T.shape, []).append(v.T)
    return out


def exact_reference(model: Any, gguf_path: Path, info: GGUFInfo) -> int:
    """Replace each folded weight matrix of the reader's graph with the file's exact dequantization.

    The reader approximates some formats: Q4_1's per-block minimum becomes a 4-bit zero point, which on
    SmolLM2-135M raised held-out perplexity from 20.8 (transformers' exact dequantization; llama.cpp 21.0) to
    25.4. Each matrix is matched to the closest exact tensor of its shape; one whose best match is not close
    (relative error above 0.25) is left as the reader built it. Returns how many were replaced.
    """
    import numpy as np
    import openvino as ov

    exact = _exact_weights(gguf_path, info)
    replaced = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or str(op.get_output_element_type(0)) not in ("f32", "<Type: 'float32'>"):
            continue
        shape = tuple(op.get_output_partial_shape(0).to_shape())
        if len(shape) != 2 or shape not in exact:
            continue
        value = op.get_data()
        norm = float(np.linalg.norm(value)) or 1.0
        errors = [float(np.linalg.norm(value - c)) / norm for c in exact[shape]]
        best = int(np.argmin(errors))
        if errors[best] > 0.25:
            continue
        new = ov.op.Constant(np.ascontiguousarray(exact[shape][best]))
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(new.output(0))
        replaced += 1
    return replaced


def _q4_1_blocks(gguf_path: Path, info: GGUFInfo) -> dict[tuple[int, ...], list[tuple[Any, Any]]]:
    """Each Q4_1 matrix's per-block scale d and minimum m (value = d * q + m), by shape (rows, blocks), in each
    row order (``_row_orders``)."""
    import gguf
    import numpy as np

    out: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.Q4_1:
            continue
        raw = np.asarray(t.data)
        b = raw.reshape(raw.shape[0], raw.shape[1] // 20, 20)  # a block: f16 d, f16 m, 16 bytes of nibbles
        d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = b[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        for dv, mv in _row_orders(t.name, info, (d, m)):
            out.setdefault(dv.shape, []).append((dv, mv))
    return out


def exact_zero_points(model: Any, gguf_path: Path, info: GGUFInfo) -> int:
    """Give the reader's Q4_1 matrices their exact minimum: the reader rounds -m/d to a 4-bit integer zero
    point; an f16 zero point keeps it (the CPU plugin still runs the u4 weights compressed). A matrix is
    matched by its scales, which the reader keeps exactly. Returns how many were fixed."""
    import numpy as np
    import openvino as ov

    blocks = _q4_1_blocks(gguf_path, info)
    fixed = 0
    for op in model.get_ops():
        zp = op.input_value(1).get_node() if op.get_type_name() == "Subtract" else None
        if zp is None or zp.get_type_name() != "Convert" or zp.input_value(0).get_node().get_type_name() != "Constant":
            continue
        multiply = next(iter(op.output(0).get_target_inputs())).get_node()
        scale = multiply.input_value(1).get_node() if multiply.get_type_name() == "Multiply" else None
        if scale is None or scale.get_type_name() != "Constant":
            continue
        d_ir = scale.get_data().astype(np.float32)[..., 0]
        match = next(((d, m) for d, m in blocks.get(d_ir.shape, []) if np.array_equal(d, d_ir)), None)
        if match is None:
            continue
        d, m = match
        exact = np.divide(-m, d, out=np.zeros_like(m), where=d != 0)[..., None].astype(np.float16)
        op.input(1).replace_source_output(ov.op.Constant(exact).output(0))
        fixed += 1
    return fixed


def _write(model: Any, src: Path, out: Path, info: GGUFInfo) -> None:
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / MODEL_XML), compress_to_fp16=False)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
    write_generation_config(info, out)


def reference(src: Path, gguf_path: Path, out: Path, info: GGUFInfo) -> None:
    """The fp32 reference into ``out``: the reader's graph with every matrix the file's exact dequantization."""
    import openvino as ov

    model = dequantize(ov.Core().read_model(str(src / MODEL_XML)))
    exact_reference(model, gguf_path, info)
    _write(model, src, out, info)


def native_model(src: Path, gguf_path: Path, out: Path, info: GGUFInfo) -> None:
    """The file's own quantized weights into ``out``, kept compressed (Q4_1 with exact zero points): what
    llama.cpp runs, in OpenVINO."""
    import openvino as ov

    model = ov.Core().read_model(str(src / MODEL_XML))
    exact_zero_points(model, gguf_path, info)
    _write(model, src, out, info)


def from_gguf(gguf_path: Path, out: Path, *, native: bool = False) -> GGUFInfo:
    """``reference`` (or with ``native`` ``native_model``) of ``gguf_path`` into ``out``, in one go."""
    info = inspect(gguf_path)
    with tempfile.TemporaryDirectory(prefix="edgekit-gguf-") as tmp:
        src = read(gguf_path, Path(tmp))
        (native_model if native else reference)(src, gguf_path, out, info)
    return info


def compress(reference: Path, out: Path, recipe: Any, calibration: list[list[int]]) -> None:
    """Write ``recipe``'s NNCF weight compression of the fp32 IR in ``reference`` (tokenizer too) into ``out``."""
    import nncf
    import numpy as np
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    model = ov.Core().read_model(str(reference / MODEL_XML))
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, recipe.weights.upper())}
    if recipe.weights.startswith("int4"):
        kwargs |= {"group_size": recipe.group_size, "ratio": recipe.ratio}
    if recipe.data_aware:

        def sample(ids: list[int]) -> dict[str, Any]:
            a = np.asarray([ids], dtype=np.int64)
            return {
                "input_ids": a,
                "attention_mask": np.ones_like(a),
                "beam_idx": np.zeros(1, dtype=np.int32),
                "position_ids": np.arange(a.shape[1], dtype=np.int64)[None],
            }

        kwargs |= {
            "dataset": nncf.Dataset(calibration[: recipe.calibration_samples], sample),
            "awq": recipe.awq,
            "scale_estimation": recipe.scale_estimation,
            "subset_size": max(1, min(recipe.calibration_samples, len(calibration))),
        }
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except nncf.InvalidGroupSizeError:
        raise RecipeInvalid(
            f"recipe {recipe.name}: group_size {recipe.group_size} does not divide every layer's input channels; "
            "use a divisor of them (32 or 64 for most small models) or -1"
        ) from None
    except (nncf.ValidationError, nncf.UnsupportedModelError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PassFailed(f"NNCF could not compress the weights for recipe {recipe.name} ({first})") from None
    ov.save_model(compressed, str(out / MODEL_XML), compress_to_fp16=False)
    for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
        shutil.copyfile(reference / name, out / name)


def plugin_settings(threads: int, config: dict[str, str]) -> dict[str, Any]:
    """What the agent's ``Generator`` compiles with, for the perplexity pass."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
    } | config


def logits(model_dir: Path, *, threads: int, config: dict[str, str]) -> Any:
    """``run(ids) -> logits[len(ids), vocab]``: one window from an empty KV cache, every position's logits."""
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(str(model_dir / MODEL_XML), "CPU", plugin_settings(threads, config))
    request = compiled.create_infer_request()

    def run(window: list[int]) -> Any:
        ids = np.asarray([window], dtype=np.int64)
        request.reset_state()
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
        return request.infer(feed)["logits"][0]

    return run


def open_generator(model_dir: Path, *, threads: int, config: dict[str, str]) -> Any:
    return RUNTIME.open_generator(model_dir / MODEL_XML, RUNTIME.cpu, threads=threads, config=config)
