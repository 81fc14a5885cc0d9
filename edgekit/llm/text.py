"""Text for a language model's calibration and held-out perplexity, from sources every CPython ships.

Held-out: prose paragraphs of the Python Language Reference (``pydoc_data.topics``), in a fixed order, cut
into windows of tokens. Calibration (NNCF's data-aware compression): standard-library docstrings. Two
sources, two registers, no shared sentence (``overlap`` checks it; a test asserts it is empty).
"""

from __future__ import annotations

import re
from collections.abc import Callable


def heldout_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if re.search(r"^\s{2,}|>>>|::=|\*\*\*", para, re.MULTILINE):
                continue  # grammar, code and indented blocks: not prose
            text = " ".join(para.split())
            if len(text.split()) >= 20 and text[0].isupper() and text[-1] in ".!?:":
                out.append(text)
    return out


def calibration_paragraphs() -> list[str]:
    from edgekit_models.minilm import calibration_sentences

    sentences = calibration_sentences(2000)
    return [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]


def overlap() -> set[str]:
    """Sentences found in both parts (must be none)."""

    def sentences(paragraphs: list[str]) -> set[str]:
        return {s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if len(s.split()) >= 6}

    return sentences(heldout_paragraphs()) & sentences(calibration_paragraphs())


def windows(
    paragraphs: list[str], encode: Callable[[str], list[int]], *, count: int, length: int, bos: int | None
) -> list[list[int]]:
    """``count`` windows of ``length`` tokens (BOS first where the model has one) from the running text."""
    out: list[list[int]] = []
    body = length - (bos is not None)
    buf: list[int] = []
    for para in paragraphs:
        buf += encode(para + "\n\n")
        while len(buf) >= body and len(out) < count:
            out.append(([bos] if bos is not None else []) + buf[:body])
            buf = buf[body:]
        if len(out) >= count:
            break
    return out
