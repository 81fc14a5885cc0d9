"""How close a compressed model's outputs stay to the original's, for models without labels (a user's own).

Every output is judged, each by what it is, and the step's metric is the worst of them (1.0: identical):

- ``vector`` (float, several values per sample: embeddings, feature maps, logits): the lower of the mean
  per-sample cosine (direction) and ``1 − ‖Δ‖²/‖y‖²`` over the whole batch (so a change of scale counts
  too; for equal norms it is about ``2·(1 − cosine)``, the same order as the cosine's own drop);
- ``score`` (float, one value per sample: a probability, a CTR, a regression): R², the share of the
  original's variance across samples that the new outputs keep, ``1 − Σ(o−y)²/Σ(y−ȳ)²``; correlation,
  rank correlation and relative error are reported alongside. Cosine would be blind here: any
  sign-preserving output of one value scores 1.0;
- ``logits`` (declared by the model's author): the vector figure, and no lower than top-1 agreement;
- ``exact`` (integer or boolean outputs: class ids, masks): the share of samples that agree exactly.

Nothing is clipped to an absolute epsilon: a model whose outputs are ~1e-8 (random init) compares with
itself at 1.0. An output whose shape or dtype changed is not scored at all: :class:`OutputsChanged`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgekit.errors import PassFailed

OutputKind = Literal["vector", "score", "logits", "exact"]
KINDS: tuple[str, ...] = ("vector", "score", "logits", "exact")


class OutputsChanged(PassFailed):
    """A step changed the model's interface (an output's count, shape or dtype)."""


def kind_of(reference: np.ndarray) -> OutputKind:
    """The default kind of an output, from the original's values (sample axis first)."""
    if not np.issubdtype(reference.dtype, np.floating):
        return "exact"
    per_sample = int(np.prod(reference.shape[1:])) if reference.ndim > 1 else 1
    return "score" if per_sample == 1 else "vector"


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def _cosine(o: np.ndarray, r: np.ndarray) -> float:
    num = (o * r).sum(1)
    no, nr = np.linalg.norm(o, axis=1), np.linalg.norm(r, axis=1)
    both_zero = (no == 0) & (nr == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(both_zero, 1.0, np.where((no == 0) | (nr == 0), 0.0, num / (no * nr)))
    return float(np.mean(cos))


def _relative_error(o: np.ndarray, r: np.ndarray) -> float:
    ref = float(np.linalg.norm(r))
    diff = float(np.linalg.norm(o - r))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else 1e300  # finite, so the report stays JSON
    return diff / ref


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a))
    return ranks


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(a.std()), float(b.std())
    if sa == 0.0 or sb == 0.0:
        return 1.0 if sa == sb and np.allclose(a, b, rtol=0, atol=0) else 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def compare(output: np.ndarray, reference: np.ndarray, kind: OutputKind) -> tuple[float, dict[str, float]]:
    """(fidelity in [0, 1], the figures behind it) of one output against the original's."""
    if kind == "exact":
        o, r = np.asarray(output).reshape(len(output), -1), np.asarray(reference).reshape(len(reference), -1)
        agree = float(np.mean(np.all(o == r, axis=1)))
        return agree, {"agreement": agree}
    o, r = _rows(output), _rows(reference)
    if not np.isfinite(o).all():
        return 0.0, {"non_finite": float(np.mean(~np.isfinite(o)))}
    rel = _relative_error(o, r)
    if kind == "score":
        o1, r1 = o.ravel(), r.ravel()
        spread = float(((r1 - r1.mean()) ** 2).sum())
        residual = float(((o1 - r1) ** 2).sum())
        # a constant original (every sample the same value): only closeness to it counts
        r2 = 1.0 - residual / spread if spread > 0.0 else 1.0 - min(rel, 1.0)
        details = {"r2": r2, "correlation": _correlation(o1, r1),
                   "rank_correlation": _correlation(_ranks(o1), _ranks(r1)), "relative_error": rel}  # fmt: skip
        return max(0.0, min(1.0, r2)), details
    cos = _cosine(o, r)
    value = min(cos, 1.0 - rel * rel)
    details = {"cosine": cos, "relative_error": rel}
    if kind == "logits":
        top1 = float(np.mean(o.argmax(1) == r.argmax(1)))
        details["top1_agreement"] = top1
        value = min(value, top1)
    return max(0.0, min(1.0, value)), details


def check_interface(outputs: list[np.ndarray], references: list[np.ndarray], names: list[str]) -> None:
    """Raise :class:`OutputsChanged` (one line) when an output's count, shape or dtype differs."""
    if len(outputs) != len(references):
        raise OutputsChanged(
            f"the model now has {len(outputs)} output(s) where the original has {len(references)}; "
            "a pass must keep the model's interface (leave out the pass that changed it)"
        )
    for name, out, ref in zip(names, outputs, references, strict=True):
        if out.shape != ref.shape or out.dtype != ref.dtype:
            raise OutputsChanged(
                f"output {name!r} is now {list(out.shape)} {out.dtype} where the original's is {list(ref.shape)} "
                f"{ref.dtype}; a pass changed the model's interface (leave out the pass that changed it)"
            )


def score_outputs(
    outputs: list[np.ndarray], references: list[np.ndarray], names: list[str], kinds: list[OutputKind]
) -> tuple[float, dict[str, float]]:
    """The worst output's fidelity, and every output's figures as ``NAME.FIGURE``."""
    check_interface(outputs, references, names)
    worst, details = 1.0, {}
    for name, out, ref, kind in zip(names, outputs, references, kinds, strict=True):
        value, figures = compare(out, ref, kind)
        worst = min(worst, value)
        details[f"{name}.fidelity"] = value
        details |= {f"{name}.{k}": v for k, v in figures.items()}
    return worst, details
